//! `concurrently-in-transaction` (phased's own): `CREATE INDEX CONCURRENTLY`, `DROP INDEX
//! CONCURRENTLY`, `REINDEX … CONCURRENTLY` or `DETACH PARTITION … CONCURRENTLY` in SQL that runs
//! inside a transaction (a transactional `sql` step or migration). PostgreSQL refuses them
//! there, so the step fails every time. squawk's
//! `ban-concurrent-index-creation-in-transaction` sees this only in a file with `BEGIN` or
//! several statements; phased knows how each step runs, even a one-statement one.

use super::{Context, RuleInfo, Severity, SqlFinding, Statement};

pub const INFO: RuleInfo = RuleInfo {
    name: "concurrently-in-transaction",
    severity: Severity::Error,
};

pub fn check(stmt: &Statement, _ctx: &Context) -> Option<SqlFinding> {
    // REFRESH MATERIALIZED VIEW CONCURRENTLY is allowed in a transaction.
    if !stmt.in_transaction || stmt.starts(&["REFRESH"]) || !stmt.has(&["CONCURRENTLY"]) {
        return None;
    }
    Some(SqlFinding::new(
        INFO.name,
        INFO.severity,
        stmt,
        "PostgreSQL refuses CONCURRENTLY inside a transaction block, and this SQL runs in one: the step fails every time",
        "give the `sql` step `transactional: false` (each statement runs on its own), or use a `create_index` / `drop_index` step; a migration file says `-- transactional: false`",
    ))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    #[test]
    fn fails_in_a_transactional_step() {
        for sql in [
            "CREATE INDEX CONCURRENTLY accounts_email_idx ON accounts (email);",
            "DROP INDEX CONCURRENTLY accounts_email_idx;",
            "REINDEX INDEX CONCURRENTLY accounts_email_idx;",
        ] {
            assert!(
                rules_hit(sql, EXPAND).contains(&"concurrently-in-transaction"),
                "{sql}"
            );
        }
    }

    #[test]
    fn passes_in_a_script() {
        let sql = "CREATE INDEX CONCURRENTLY accounts_email_idx ON accounts (email);";
        assert!(!rules_hit(sql, SCRIPT).contains(&"concurrently-in-transaction"));
        let plain = super::super::Context::default();
        let in_block = "BEGIN;\nCREATE INDEX CONCURRENTLY i ON t (c);\nCOMMIT;\nCREATE INDEX CONCURRENTLY j ON t (d);";
        let hits: Vec<_> = super::super::lint_sql(in_block, &plain, &[])
            .into_iter()
            .filter(|f| f.rule == "concurrently-in-transaction")
            .map(|f| f.line)
            .collect();
        assert_eq!(hits, vec![2]);
        let refresh = "REFRESH MATERIALIZED VIEW CONCURRENTLY totals;";
        assert!(!rules_hit(refresh, EXPAND).contains(&"concurrently-in-transaction"));
    }

    #[test]
    fn rendered() {
        insta::assert_snapshot!(render(
            "CREATE INDEX CONCURRENTLY accounts_email_idx ON accounts (email);",
            EXPAND
        ));
    }
}
