//! Keeping a new column in step with the application that does not know it: the triggers of
//! the operations written once (`add_column` with `up`, `rename_column`, `change_type`).
//!
//! Each operation has its own trigger, named for its table and column, so two operations on one
//! table never replace each other's, and each part that ends or undoes one drops exactly its
//! own. On PostgreSQL a `BEFORE` row trigger sets `NEW` (its function lives in schema `phased`);
//! on SQLite, which cannot assign `NEW`, `AFTER` triggers update the row just written
//! (`recursive_triggers` is off by default, so their own updates do not fire them again).

use serde::{Deserialize, Serialize};

use super::name::{derived_name, derived_name_in_schema, quote, Name, TableName};
use super::{Dialect, Inverse, InverseContext, LockMode, Operation, RenderError, TableLock, Unit};
use crate::plan::{PhaseKind, PlanDuration};

/// How the trigger keeps a column in step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// `column` is `up` of the row unless the writer set it: on INSERT when left NULL, on UPDATE
    /// when the writer left it as it was and `up` of the row changed (PostgreSQL; SQLite
    /// recomputes whenever the writer left it as it was).
    Derive { column: Name, up: String },
}

impl Rule {
    pub fn column(&self) -> &Name {
        match self {
            Rule::Derive { column, .. } => column,
        }
    }
}

/// The names of one column's sync trigger and, on PostgreSQL, its function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncNames {
    pub trigger: Name,
    function: Name,
}

impl SyncNames {
    pub fn new(table: &TableName, column: &Name) -> Self {
        let parts = ["phased_sync", table.name().as_str(), column.as_str()];
        let trigger = derived_name(table.schema(), &parts);
        let function = match table.schema().filter(|s| s.as_str() != "public") {
            Some(schema) => derived_name_in_schema(schema, &parts),
            None => trigger.clone(),
        };
        SyncNames { trigger, function }
    }

    /// `"phased"."phased_sync_<table>_<column>[_<hash>]"`
    pub fn function(&self) -> String {
        format!("{}.{}", quote("phased"), self.function.quoted())
    }

    /// SQLite's triggers, one per event.
    pub fn sqlite(&self) -> [String; 2] {
        [
            quote(&format!("{}_insert", self.trigger)),
            quote(&format!("{}_update", self.trigger)),
        ]
    }
}

/// `expr` (over the row's columns by their bare names) evaluated for a PL/pgSQL record (`NEW`,
/// `OLD`).
fn over(expr: &str, record: &str) -> String {
    format!("(SELECT ({expr}) FROM (SELECT {record}.*) AS phased_row)")
}

/// The statements that (re)create the sync trigger of `rule` on `table`: safe to run again.
pub fn create_sql(table: &TableName, rule: &Rule, dialect: Dialect) -> Vec<String> {
    let names = SyncNames::new(table, rule.column());
    let t = table.quoted();
    match (dialect, rule) {
        (Dialect::Postgres, Rule::Derive { column, up }) => {
            let c = column.quoted();
            let (new, old) = (over(up, "NEW"), over(up, "OLD"));
            let body = format!(
                "BEGIN\n  IF TG_OP = 'INSERT' THEN\n    IF NEW.{c} IS NULL THEN NEW.{c} := {new}; END IF;\n  ELSIF NEW.{c} IS NOT DISTINCT FROM OLD.{c} AND (NEW.{c} IS NULL OR {new} IS DISTINCT FROM {old}) THEN\n    NEW.{c} := {new};\n  END IF;\n  RETURN NEW;\nEND"
            );
            pg_trigger(&names, &t, &body)
        }
        (Dialect::Sqlite, Rule::Derive { column, up }) => {
            let c = column.quoted();
            let [insert, update] = names.sqlite();
            vec![
                format!("DROP TRIGGER IF EXISTS {insert}"),
                format!("DROP TRIGGER IF EXISTS {update}"),
                format!(
                    "CREATE TRIGGER {insert} AFTER INSERT ON {t} FOR EACH ROW WHEN NEW.{c} IS NULL BEGIN UPDATE {t} SET {c} = ({up}) WHERE rowid = NEW.rowid; END"
                ),
                format!(
                    "CREATE TRIGGER {update} AFTER UPDATE ON {t} FOR EACH ROW WHEN NEW.{c} IS OLD.{c} BEGIN UPDATE {t} SET {c} = ({up}) WHERE rowid = NEW.rowid; END"
                ),
            ]
        }
    }
}

/// A PostgreSQL trigger function with `body` and its `BEFORE INSERT OR UPDATE` row trigger.
pub fn pg_trigger(names: &SyncNames, table: &str, body: &str) -> Vec<String> {
    let function = names.function();
    let trigger = names.trigger.quoted();
    vec![
        format!(
            "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $phased$\n{body}\n$phased$"
        ),
        format!("DROP TRIGGER IF EXISTS {trigger} ON {table}"),
        format!(
            "CREATE TRIGGER {trigger} BEFORE INSERT OR UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION {function}()"
        ),
    ]
}

/// The statements that drop a column's sync trigger (and function): `IF EXISTS`, so they can
/// run again.
pub fn drop_sql(table: &TableName, column: &Name, dialect: Dialect) -> Vec<String> {
    let names = SyncNames::new(table, column);
    match dialect {
        Dialect::Postgres => vec![
            format!(
                "DROP TRIGGER IF EXISTS {} ON {}",
                names.trigger.quoted(),
                table.quoted()
            ),
            format!("DROP FUNCTION IF EXISTS {}()", names.function()),
        ],
        Dialect::Sqlite => names
            .sqlite()
            .into_iter()
            .map(|t| format!("DROP TRIGGER IF EXISTS {t}"))
            .collect(),
    }
}

/// The part that ends a sync at contract: drops the column's trigger. Its inverse makes it
/// again, so a rollback through contract leaves the two applications in step.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct DropSync {
    pub table: TableName,
    pub rule: Rule,
    /// The operation it ends, for labels: `add_column users.email_lower`.
    pub of: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
}

impl Operation for DropSync {
    fn kind(&self) -> &'static str {
        "drop_sync"
    }

    fn subject(&self) -> String {
        format!("{}: drop the sync trigger", self.of)
    }

    fn label(&self) -> String {
        self.subject()
    }

    fn allowed_in(&self) -> &'static [PhaseKind] {
        &[PhaseKind::Contract]
    }

    fn table(&self) -> Option<&TableName> {
        Some(&self.table)
    }

    /// DROP TRIGGER takes ACCESS EXCLUSIVE, for a moment.
    fn locks(&self) -> Vec<TableLock> {
        vec![TableLock {
            table: self.table.clone(),
            mode: LockMode::AccessExclusive,
        }]
    }

    fn lock_timeout(&self) -> Option<PlanDuration> {
        self.lock_timeout
    }

    fn units(&self, dialect: Dialect) -> Result<Vec<Unit>, RenderError> {
        Ok(vec![Unit::Transaction(drop_sql(
            &self.table,
            self.rule.column(),
            dialect,
        ))])
    }

    fn inverse(&self, _ctx: &InverseContext<'_>, _done: bool, dialect: Dialect) -> Inverse {
        Inverse::Units(vec![Unit::Transaction(create_sql(
            &self.table,
            &self.rule,
            dialect,
        ))])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> Name {
        Name::new(n).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn each_column_has_its_own_trigger() {
        let t = TableName::new("users").unwrap_or_else(|e| panic!("{e}"));
        let a = SyncNames::new(&t, &name("a"));
        let b = SyncNames::new(&t, &name("b"));
        assert_ne!(a, b);
        assert_eq!(a.trigger.as_str(), "phased_sync_users_a");
        let app = TableName::new("app.users").unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(SyncNames::new(&app, &name("a")).function, a.function);
    }

    #[test]
    fn derive_fills_only_what_the_writer_left() {
        let t = TableName::new("users").unwrap_or_else(|e| panic!("{e}"));
        let rule = Rule::Derive {
            column: name("email_lower"),
            up: "lower(email)".into(),
        };
        let pg = create_sql(&t, &rule, Dialect::Postgres).join("\n");
        assert!(pg.contains("IF NEW.\"email_lower\" IS NULL THEN NEW.\"email_lower\" := (SELECT (lower(email)) FROM (SELECT NEW.*) AS phased_row)"), "{pg}");
        let lite = create_sql(&t, &rule, Dialect::Sqlite).join("\n");
        assert!(
            lite.contains("WHEN NEW.\"email_lower\" IS OLD.\"email_lower\""),
            "{lite}"
        );
    }
}
