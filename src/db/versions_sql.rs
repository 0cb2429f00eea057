//! The SQL a versioned migration runs, as text, for `phased db upgrade --sql` (offline review):
//! its script wrapped the way the target runs it, plus the version bookkeeping. The targets
//! themselves bind the bookkeeping values as parameters; this text uses quoted literals.

use crate::db::Dialect;
use crate::db::{MigrationRun, Timeouts};
use crate::ops::name::literal;

fn millis(t: Timeouts) -> (u128, u128) {
    (t.lock_timeout.as_millis(), t.statement_timeout.as_millis())
}

/// The statements that record (or forget) the revision and replace the heads.
pub fn bookkeeping(dialect: Dialect, run: &MigrationRun<'_>) -> Vec<String> {
    let (migrations, heads) = match dialect {
        Dialect::Postgres => ("phased.migrations", "phased.version_heads"),
        Dialect::Sqlite => ("phased_migrations", "phased_version_heads"),
    };
    let mut out = Vec::new();
    if run.up {
        out.push(format!(
            "INSERT INTO {migrations} (revision, checksum) VALUES ({}, {})",
            literal(run.revision),
            literal(run.checksum)
        ));
    } else {
        out.push(format!(
            "DELETE FROM {migrations} WHERE revision = {}",
            literal(run.revision)
        ));
    }
    out.push(format!("DELETE FROM {heads}"));
    for head in run.heads_after {
        out.push(format!(
            "INSERT INTO {heads} (revision) VALUES ({})",
            literal(head)
        ));
    }
    out
}

/// The whole migration as it would run: transaction, timeouts, script, bookkeeping.
pub fn script_text(dialect: Dialect, run: &MigrationRun<'_>) -> String {
    let (lock, statement) = millis(run.timeouts);
    let mut out = String::new();
    let set = |out: &mut String, local: &str| {
        if dialect == Dialect::Postgres {
            out.push_str(&format!(
                "SET {local}lock_timeout = '{lock}ms';\nSET {local}statement_timeout = '{statement}ms';\n"
            ));
        }
    };
    let script = run.script.trim();
    if !run.transactional {
        out.push_str("-- not in a transaction: each statement runs on its own\n");
        set(&mut out, "");
        if !script.is_empty() {
            out.push_str(script);
            out.push('\n');
        }
        if dialect == Dialect::Postgres {
            out.push_str("RESET lock_timeout;\nRESET statement_timeout;\n");
        }
    }
    out.push_str(match dialect {
        Dialect::Postgres => "BEGIN;\n",
        Dialect::Sqlite => "BEGIN IMMEDIATE;\n",
    });
    set(&mut out, "LOCAL ");
    if run.transactional && !script.is_empty() {
        out.push_str(script);
        out.push('\n');
    }
    for sql in bookkeeping(dialect, run) {
        out.push_str(&sql);
        out.push_str(";\n");
    }
    out.push_str("COMMIT;\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn run<'a>(heads: &'a [String], transactional: bool) -> MigrationRun<'a> {
        MigrationRun {
            revision: "cc03",
            checksum: "abc",
            up: true,
            script: "CREATE INDEX CONCURRENTLY i ON t (x);",
            transactional,
            heads_after: heads,
            timeouts: Timeouts {
                lock_timeout: Duration::from_secs(2),
                statement_timeout: Duration::ZERO,
                index_wait: Duration::ZERO,
            },
            step: None,
        }
    }

    #[test]
    fn non_transactional_script_runs_before_the_bookkeeping() {
        let heads = vec!["cc03".to_string(), "dd04".to_string()];
        assert_eq!(
            script_text(Dialect::Postgres, &run(&heads, false)),
            "-- not in a transaction: each statement runs on its own\n\
             SET lock_timeout = '2000ms';\nSET statement_timeout = '0ms';\n\
             CREATE INDEX CONCURRENTLY i ON t (x);\n\
             RESET lock_timeout;\nRESET statement_timeout;\n\
             BEGIN;\n\
             SET LOCAL lock_timeout = '2000ms';\nSET LOCAL statement_timeout = '0ms';\n\
             INSERT INTO phased.migrations (revision, checksum) VALUES ('cc03', 'abc');\n\
             DELETE FROM phased.version_heads;\n\
             INSERT INTO phased.version_heads (revision) VALUES ('cc03');\n\
             INSERT INTO phased.version_heads (revision) VALUES ('dd04');\n\
             COMMIT;\n"
        );
    }

    #[test]
    fn transactional_script_shares_the_transaction() {
        let heads = vec!["cc03".to_string()];
        assert_eq!(
            script_text(Dialect::Sqlite, &run(&heads, true)),
            "BEGIN IMMEDIATE;\n\
             CREATE INDEX CONCURRENTLY i ON t (x);\n\
             INSERT INTO phased_migrations (revision, checksum) VALUES ('cc03', 'abc');\n\
             DELETE FROM phased_version_heads;\n\
             INSERT INTO phased_version_heads (revision) VALUES ('cc03');\n\
             COMMIT;\n"
        );
    }
}
