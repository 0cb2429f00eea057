//! `table-rewrite` (phased's own): a statement that rewrites a whole table under ACCESS
//! EXCLUSIVE — `CLUSTER`, `VACUUM FULL`, a `serial` column added to an existing table (every row
//! gets a value from the sequence). Reads and writes wait for the whole rewrite, in any phase.
//! (`ALTER COLUMN … TYPE` and volatile or generated defaults are squawk's
//! `changing-column-type` and `adding-field-with-default`.)

use super::{Context, RuleInfo, Severity, SqlFinding, Statement};

pub const INFO: RuleInfo = RuleInfo {
    name: "table-rewrite",
    severity: Severity::Error,
};

const SERIALS: [&str; 6] = [
    "SERIAL",
    "BIGSERIAL",
    "SMALLSERIAL",
    "SERIAL2",
    "SERIAL4",
    "SERIAL8",
];

fn rewrites(stmt: &Statement) -> Option<(&'static str, &'static str)> {
    if stmt.starts(&["CLUSTER"]) {
        return Some((
            "CLUSTER rewrites the table in index order under ACCESS EXCLUSIVE",
            "leave it out of the deployment; pg_repack reorders a table online",
        ));
    }
    if stmt.starts(&["VACUUM"]) && stmt.words.iter().any(|w| w == "FULL") {
        return Some((
            "VACUUM FULL rewrites the table under ACCESS EXCLUSIVE",
            "use plain VACUUM (no lock on reads or writes), or pg_repack, outside the deployment",
        ));
    }
    if stmt.altered_table().is_some() && stmt.has(&["ADD"]) {
        let serial = stmt
            .words
            .windows(2)
            .any(|w| w[0] != "TYPE" && SERIALS.contains(&w[1].as_str()));
        if serial {
            return Some((
                "a serial column added to an existing table fills every row from the sequence: a rewrite under ACCESS EXCLUSIVE",
                "use an `add_column` step (nullable bigint, no default), a `backfill` step from the sequence, then `set_not_null` in `contract`",
            ));
        }
    }
    None
}

pub fn check(stmt: &Statement, _ctx: &Context) -> Option<SqlFinding> {
    let (what, safe) = rewrites(stmt)?;
    Some(SqlFinding::new(INFO.name, INFO.severity, stmt, what, safe))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    #[test]
    fn fails_in_every_phase() {
        for sql in [
            "CLUSTER accounts USING accounts_pkey;",
            "VACUUM FULL accounts;",
            "VACUUM (FULL, ANALYZE) accounts;",
            "ALTER TABLE accounts ADD COLUMN seq bigserial;",
        ] {
            assert!(rules_hit(sql, EXPAND).contains(&"table-rewrite"), "{sql}");
            assert!(rules_hit(sql, CONTRACT).contains(&"table-rewrite"), "{sql}");
        }
    }

    #[test]
    fn passes() {
        for sql in [
            "VACUUM ANALYZE accounts;",
            "CREATE TABLE t (id bigserial PRIMARY KEY);",
            "ALTER TABLE accounts ADD COLUMN seq bigint;",
        ] {
            assert!(!rules_hit(sql, EXPAND).contains(&"table-rewrite"), "{sql}");
        }
    }

    #[test]
    fn rendered() {
        insta::assert_snapshot!(render("VACUUM FULL accounts;", EXPAND));
    }
}
