//! squawk's rules, by squawk's names, run through `squawk_linter`: the set phased runs, each
//! with phased's severity and the phased step kind that does the same change safely. Rules
//! about dropping and renaming are left out in `contract`, where dropping is the point.

use squawk_linter::{Linter, LinterSettings, Rule};
use squawk_syntax::{Parse, SourceFile};

use super::{Context, Severity, SqlFinding, Statement};
use crate::plan::PhaseKind;

/// A squawk rule as phased runs it.
pub struct SquawkRule {
    pub rule: Rule,
    pub name: &'static str,
    pub severity: Severity,
    /// The safe way, in phased's terms.
    pub help: &'static str,
    /// Whether the rule is about the old application breaking (silent in `contract`).
    pub old_code_breaks: bool,
}

const fn rule(
    rule: Rule,
    name: &'static str,
    severity: Severity,
    help: &'static str,
    old_code_breaks: bool,
) -> SquawkRule {
    SquawkRule {
        rule,
        name,
        severity,
        help,
        old_code_breaks,
    }
}

use Severity::{Error, Warning};

pub const RULES: &[SquawkRule] = &[
    rule(Rule::RequireConcurrentIndexCreation, "require-concurrent-index-creation", Error,
        "use a `create_index` step (CONCURRENTLY, outside a transaction, an INVALID leftover rebuilt), or `CREATE INDEX CONCURRENTLY` in a `transactional: false` sql step", false),
    rule(Rule::ConstraintMissingNotValid, "constraint-missing-not-valid", Error,
        "use an `add_check` or `add_foreign_key` step: NOT VALID first, then VALIDATE under SHARE UPDATE EXCLUSIVE (reads and writes go on)", false),
    rule(Rule::ChangingColumnType, "changing-column-type", Error,
        "use a `change_type` operation: a shadow column kept in sync, backfilled in batches, swapped at contract", false),
    rule(Rule::AddingFieldWithDefault, "adding-field-with-default", Error,
        "use an `add_column` step without the volatile default (or generated expression), a `backfill` step to fill it, and `dual_write` to keep new rows in sync", false),
    rule(Rule::AddingNotNullableField, "adding-not-nullable-field", Error,
        "use a `set_not_null` step in `contract`: a CHECK (col IS NOT NULL) NOT VALID, validated, then SET NOT NULL without a scan", false),
    rule(Rule::AddingRequiredField, "adding-required-field", Error,
        "add the column nullable (`add_column`), `backfill` it, then `set_not_null` in `contract`; or give it a constant default", false),
    rule(Rule::AddingSerialPrimaryKeyField, "adding-serial-primary-key-field", Error,
        "build the unique index with a `create_index` step first, then `ALTER TABLE … ADD PRIMARY KEY USING INDEX`", false),
    rule(Rule::DisallowedUniqueConstraint, "disallowed-unique-constraint", Error,
        "use an `add_unique` operation (the index built CONCURRENTLY, then attached as the constraint)", false),
    rule(Rule::AddingForeignKeyConstraint, "adding-foreign-key-constraint", Warning,
        "use an `add_foreign_key` step (NOT VALID, then VALIDATE)", false),
    rule(Rule::BanDropDatabase, "ban-drop-database", Error,
        "drop databases by hand, never from a deployment", false),
    rule(Rule::RequireConcurrentIndexDeletion, "require-concurrent-index-deletion", Warning,
        "use a `drop_index` step (DROP INDEX CONCURRENTLY, outside a transaction)", false),
    rule(Rule::TransactionNesting, "transaction-nesting", Warning,
        "leave transaction control to phased: a `sql` step is one transaction unless it says `transactional: false`", false),
    rule(Rule::BanDropColumn, "ban-drop-column", Warning,
        "use a `drop_column` step in `contract`, once no running code reads the column", true),
    rule(Rule::BanDropTable, "ban-drop-table", Warning,
        "use a `drop_table` step in `contract`, once no running code reads the table", true),
    rule(Rule::BanDropNotNull, "ban-drop-not-null", Warning,
        "use a `drop_not_null` operation", true),
    rule(Rule::RenamingColumn, "renaming-column", Warning,
        "use a `rename_column` operation: both names work from expand until contract", true),
    rule(Rule::RenamingTable, "renaming-table", Warning,
        "use a `rename_table` operation: the old name stays as an updatable view until contract", true),
    rule(Rule::BanTruncateCascade, "ban-truncate-cascade", Warning,
        "truncate the tables by name, so nothing else is emptied by surprise", false),
    rule(Rule::PreferBigintOverInt, "prefer-bigint-over-int", Warning,
        "use bigint: a full int key column needs a table rewrite (`change_type`) to widen", false),
    rule(Rule::PreferBigintOverSmallint, "prefer-bigint-over-smallint", Warning,
        "use bigint: a full smallint column needs a table rewrite (`change_type`) to widen", false),
    rule(Rule::PreferIdentity, "prefer-identity", Warning,
        "use `bigint GENERATED ALWAYS AS IDENTITY` instead of serial", false),
    rule(Rule::PreferTextField, "prefer-text-field", Warning,
        "use text (with a CHECK on its length if needed): changing a varchar's length rewrites the table", false),
    rule(Rule::PreferTimestampTz, "prefer-timestamp-tz", Warning,
        "use timestamptz: timestamp without time zone loses the offset", false),
    rule(Rule::BanCharField, "ban-char-field", Warning,
        "use text: char(n) pads with spaces", false),
    rule(Rule::IdentifierTooLong, "identifier-too-long", Warning,
        "keep names to 63 bytes: PostgreSQL cuts longer ones silently", false),
];

/// Runs squawk's rules that apply in `ctx` over the parsed text.
pub fn check(
    sql: &str,
    parse: &Parse<SourceFile>,
    ctx: &Context,
    statements: &[Statement],
) -> Vec<SqlFinding> {
    let in_contract = ctx.phase == Some(PhaseKind::Contract);
    let active: Vec<&SquawkRule> = RULES
        .iter()
        .filter(|r| !(in_contract && r.old_code_breaks))
        .collect();
    let mut linter = Linter::from(active.iter().map(|r| r.rule));
    linter.settings = LinterSettings {
        assume_in_transaction: ctx.transactional,
        ..LinterSettings::default()
    };
    linter
        .lint(parse, sql)
        .into_iter()
        .filter_map(|v| {
            let known = active.iter().find(|r| r.rule == v.code)?;
            let at = usize::from(v.text_range.start());
            let stmt = statements
                .iter()
                .rev()
                .find(|s| s.offset <= at)
                .or(statements.first())?;
            let message = v.message.trim_end_matches('.').to_string();
            Some(SqlFinding::new(
                known.name,
                known.severity,
                stmt,
                message,
                known.help,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::Context;
    use super::RULES;

    #[test]
    fn names_are_squawks() {
        for r in RULES {
            assert_eq!(r.rule.to_string(), r.name);
        }
    }

    /// Each rule: SQL that fails it and SQL that passes, and the rendered finding.
    const CASES: &[(&str, &str, &str)] = &[
        ("require-concurrent-index-creation",
         "CREATE INDEX accounts_email_idx ON accounts (email);",
         "CREATE INDEX CONCURRENTLY accounts_email_idx ON accounts (email);"),
        ("constraint-missing-not-valid",
         "ALTER TABLE orders ADD CONSTRAINT orders_total_positive CHECK (total > 0);",
         "ALTER TABLE orders ADD CONSTRAINT orders_total_positive CHECK (total > 0) NOT VALID;"),
        ("changing-column-type",
         "ALTER TABLE orders ALTER COLUMN total TYPE bigint;",
         "ALTER TABLE orders ADD COLUMN total_big bigint;"),
        ("adding-field-with-default",
         "ALTER TABLE accounts ADD COLUMN token uuid DEFAULT gen_random_uuid();",
         "ALTER TABLE accounts ADD COLUMN active boolean DEFAULT true;"),
        ("adding-required-field",
         "ALTER TABLE accounts ADD COLUMN plan text NOT NULL;",
         "ALTER TABLE accounts ADD COLUMN plan text NOT NULL DEFAULT 'free';"),
        ("adding-serial-primary-key-field",
         "ALTER TABLE accounts ADD PRIMARY KEY (id);",
         "ALTER TABLE accounts ADD CONSTRAINT accounts_pkey PRIMARY KEY USING INDEX accounts_id_idx;"),
        ("disallowed-unique-constraint",
         "ALTER TABLE accounts ADD CONSTRAINT accounts_email_key UNIQUE (email);",
         "ALTER TABLE accounts ADD CONSTRAINT accounts_email_key UNIQUE USING INDEX accounts_email_idx;"),
        ("adding-foreign-key-constraint",
         "ALTER TABLE orders ADD CONSTRAINT orders_customer_fk FOREIGN KEY (customer_id) REFERENCES customers (id);",
         "ALTER TABLE orders ADD CONSTRAINT orders_customer_fk FOREIGN KEY (customer_id) REFERENCES customers (id) NOT VALID;"),
        ("ban-drop-database", "DROP DATABASE production;", "SELECT 1;"),
        ("require-concurrent-index-deletion",
         "DROP INDEX accounts_email_idx;",
         "DROP INDEX CONCURRENTLY accounts_email_idx;"),
        ("ban-truncate-cascade", "TRUNCATE accounts CASCADE;", "TRUNCATE accounts;"),
        ("prefer-bigint-over-int",
         "CREATE TABLE t (id int PRIMARY KEY);",
         "CREATE TABLE t (id bigint PRIMARY KEY);"),
        ("prefer-text-field",
         "CREATE TABLE t (id bigint PRIMARY KEY, name varchar(100));",
         "CREATE TABLE t (id bigint PRIMARY KEY, name text);"),
        ("prefer-timestamp-tz",
         "CREATE TABLE t (id bigint PRIMARY KEY, at timestamp);",
         "CREATE TABLE t (id bigint PRIMARY KEY, at timestamptz);"),
        ("ban-char-field",
         "CREATE TABLE t (id bigint PRIMARY KEY, code char(2));",
         "CREATE TABLE t (id bigint PRIMARY KEY, code text);"),
        ("prefer-identity",
         "CREATE TABLE t (id bigserial PRIMARY KEY);",
         "CREATE TABLE t (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY);"),
        ("renaming-column",
         "ALTER TABLE accounts RENAME COLUMN email TO email_address;",
         "ALTER TABLE accounts ADD COLUMN email_address text;"),
        ("renaming-table", "ALTER TABLE accounts RENAME TO clients;", "SELECT 1;"),
        ("ban-drop-column", "ALTER TABLE accounts DROP COLUMN legacy;", "SELECT 1;"),
        ("ban-drop-table", "DROP TABLE legacy;", "SELECT 1;"),
        ("ban-drop-not-null",
         "ALTER TABLE accounts ALTER COLUMN note DROP NOT NULL;",
         "SELECT 1;"),
        ("identifier-too-long",
         "CREATE TABLE this_table_name_is_far_too_long_for_postgres_which_cuts_at_sixty_three_bytes (id bigint PRIMARY KEY);",
         "CREATE TABLE t (id bigint PRIMARY KEY);"),
    ];

    #[test]
    fn every_rule_fails_and_passes() {
        for (rule, bad, good) in CASES {
            assert!(
                rules_hit(bad, EXPAND).contains(rule),
                "{rule} should fail: {bad}"
            );
            assert!(
                !rules_hit(good, EXPAND).contains(rule),
                "{rule} should pass: {good}"
            );
            insta::assert_snapshot!(format!("squawk__{rule}"), render(bad, EXPAND));
        }
    }

    #[test]
    fn transaction_nesting_in_a_transactional_step() {
        let sql = "BEGIN;\nALTER TABLE accounts ADD COLUMN c text;\nCOMMIT;";
        assert!(rules_hit(sql, EXPAND).contains(&"transaction-nesting"));
        assert!(
            !rules_hit("ALTER TABLE accounts ADD COLUMN c text;", EXPAND)
                .contains(&"transaction-nesting")
        );
    }

    #[test]
    fn not_null_on_an_existing_column_scans_the_table() {
        let sql = "ALTER TABLE accounts ALTER COLUMN email SET NOT NULL;";
        assert!(rules_hit(sql, CONTRACT).contains(&"adding-not-nullable-field"));
        assert!(!rules_hit(
            "ALTER TABLE accounts ALTER COLUMN email DROP DEFAULT;",
            CONTRACT
        )
        .contains(&"adding-not-nullable-field"));
    }

    #[test]
    fn drops_are_the_point_of_contract() {
        let sql = "ALTER TABLE accounts DROP COLUMN legacy;";
        assert!(!rules_hit(sql, CONTRACT).contains(&"ban-drop-column"));
        assert!(rules_hit(sql, Context::default()).contains(&"ban-drop-column"));
    }

    #[test]
    fn an_index_on_a_table_created_in_the_same_transaction_is_fine() {
        let sql = "CREATE TABLE t (id bigint PRIMARY KEY, email text);\nCREATE INDEX t_email_idx ON t (email);";
        assert!(!rules_hit(sql, EXPAND).contains(&"require-concurrent-index-creation"));
    }

    #[test]
    fn squawk_ignore_comment_suppresses() {
        let sql = "-- squawk-ignore require-concurrent-index-creation\nCREATE INDEX i ON t (c);";
        assert!(!rules_hit(sql, EXPAND).contains(&"require-concurrent-index-creation"));
    }
}
