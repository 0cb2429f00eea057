//! `destructive-outside-contract` (phased's own): a statement that destroys or renames
//! something the old application still uses — `DROP`, `TRUNCATE`, `SET NOT NULL`, `RENAME` —
//! in a phase other than `contract`. Until contract the old code is still running: it would
//! fail on the missing name or lose the rows. A `DROP INDEX` of an index the same SQL creates
//! again later (dropping an INVALID leftover before a `CONCURRENTLY` build) is a rebuild, not a
//! loss, and passes.

use super::{Context, RuleInfo, Severity, SqlFinding, Statement};
use crate::plan::PhaseKind;

pub const INFO: RuleInfo = RuleInfo {
    name: "destructive-outside-contract",
    severity: Severity::Error,
};

/// What the statement destroys, and the phased step kind that does it safely.
fn destroys(stmt: &Statement) -> Option<(&'static str, &'static str)> {
    if stmt.starts(&["DROP", "TABLE"]) {
        return Some(("drops a table", "a `drop_table` step in `contract`"));
    }
    if stmt.starts(&["DROP", "INDEX"]) {
        return Some(("drops an index", "a `drop_index` step in `contract`"));
    }
    if stmt.starts(&["DROP"]) {
        return Some(("drops an object", "a `sql` step in `contract`"));
    }
    if stmt.starts(&["TRUNCATE"]) {
        return Some(("empties a table", "a `sql` step in `contract`"));
    }
    if stmt.starts(&["ALTER"]) {
        if stmt.has(&["SET", "NOT", "NULL"]) {
            return Some((
                "sets a column NOT NULL (old code may still write NULL)",
                "a `set_not_null` step in `contract` (a validated CHECK first, no scan under ACCESS EXCLUSIVE)",
            ));
        }
        if stmt.has(&["RENAME"]) {
            return Some((
                "renames an object the old code still uses by its old name",
                "a `rename_column` or `rename_table` operation in `expand` (both names work until contract)",
            ));
        }
        if stmt.has(&["DROP", "COLUMN"]) {
            return Some(("drops a column", "a `drop_column` step in `contract`"));
        }
        if stmt.has(&["DROP", "CONSTRAINT"]) {
            return Some((
                "drops a constraint",
                "a `drop_constraint` operation in `contract`",
            ));
        }
    }
    None
}

/// The index a `DROP INDEX` names, and the one a `CREATE INDEX` names (lower-cased as
/// PostgreSQL folds them).
fn index_name(stmt: &Statement, verb: &str) -> Option<String> {
    let start = if stmt.starts(&[verb, "INDEX"]) {
        2
    } else if stmt.starts(&[verb, "UNIQUE", "INDEX"]) {
        3
    } else {
        return None;
    };
    let at = stmt.after_options(
        start,
        &[
            &["CONCURRENTLY"],
            &["IF", "EXISTS"],
            &["IF", "NOT", "EXISTS"],
        ],
    )?;
    stmt.name_at(at)
}

/// Whether `stmt` drops an index that a later statement of the same SQL creates again.
fn rebuilds(stmt: &Statement, all: &[Statement]) -> bool {
    let Some(dropped) = index_name(stmt, "DROP") else {
        return false;
    };
    all.iter()
        .filter(|s| s.offset > stmt.offset)
        .any(|s| index_name(s, "CREATE").as_deref() == Some(dropped.as_str()))
}

pub fn check(stmt: &Statement, all: &[Statement], ctx: &Context) -> Option<SqlFinding> {
    let phase = ctx.phase?;
    if phase == PhaseKind::Contract || rebuilds(stmt, all) {
        return None;
    }
    let (what, safe) = destroys(stmt)?;
    Some(SqlFinding::new(
        INFO.name,
        INFO.severity,
        stmt,
        format!(
            "this statement {what}, in `{}`: the old application is still running until `contract`",
            phase.as_str()
        ),
        format!("use {safe}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::Context;
    use crate::plan::PhaseKind;

    const DESTRUCTIVE: [&str; 6] = [
        "DROP TABLE old_accounts;",
        "TRUNCATE audit_log;",
        "ALTER TABLE accounts ALTER COLUMN email SET NOT NULL;",
        "ALTER TABLE accounts RENAME COLUMN email TO email_address;",
        "ALTER TABLE accounts RENAME TO clients;",
        "ALTER TABLE accounts DROP COLUMN legacy;",
    ];

    #[test]
    fn fails_outside_contract() {
        for kind in [PhaseKind::Expand, PhaseKind::Migrate, PhaseKind::SwitchFlag] {
            for sql in DESTRUCTIVE {
                let ctx = Context {
                    phase: Some(kind),
                    transactional: true,
                };
                assert!(
                    rules_hit(sql, ctx).contains(&"destructive-outside-contract"),
                    "{sql} in {kind:?}"
                );
            }
        }
    }

    #[test]
    fn passes_in_contract_and_when_the_phase_is_unknown() {
        for sql in DESTRUCTIVE {
            assert!(!rules_hit(sql, CONTRACT).contains(&"destructive-outside-contract"));
            let plain = Context::default();
            assert!(!rules_hit(sql, plain).contains(&"destructive-outside-contract"));
        }
    }

    #[test]
    fn dropping_an_index_built_again_is_a_rebuild() {
        let rebuild = "DROP INDEX CONCURRENTLY IF EXISTS orders_customer_id_idx;\n\
                       CREATE INDEX CONCURRENTLY orders_customer_id_idx ON orders (customer_id);";
        assert!(!rules_hit(rebuild, SCRIPT).contains(&"destructive-outside-contract"));
        let other = "DROP INDEX IF EXISTS orders_customer_id_idx;\n\
                     CREATE INDEX CONCURRENTLY orders_total_idx ON orders (total);";
        assert!(rules_hit(other, SCRIPT).contains(&"destructive-outside-contract"));
        let after = "CREATE INDEX CONCURRENTLY i ON orders (total);\nDROP INDEX i;";
        assert!(rules_hit(after, SCRIPT).contains(&"destructive-outside-contract"));
    }

    #[test]
    fn rendered() {
        insta::assert_snapshot!(render(
            "ALTER TABLE accounts ALTER COLUMN email SET NOT NULL;",
            EXPAND
        ));
    }
}
