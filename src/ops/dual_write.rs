//! `dual_write`: a trigger that fills the new columns for rows written by old application code.
//! Creating a trigger takes SHARE ROW EXCLUSIVE on the table, and the `DROP TRIGGER IF EXISTS`
//! before it ACCESS EXCLUSIVE, briefly.
//!
//! Resumes: one transaction that replaces the function and the trigger, so a retry after a crash
//! leaves exactly one trigger, whatever the crash left.

use serde::{Deserialize, Serialize};

use super::assignments::Assignments;
use super::name::{derived_name, derived_name_in_schema, quote, Name, TableName};
use super::{Dialect, Inverse, InverseContext, LockMode, Operation, RenderError, TableLock, Unit};
use crate::plan::{PhaseKind, PlanDuration};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DualWrite {
    pub table: TableName,
    /// column → SQL expression over `NEW`.
    pub set: Assignments,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
}

/// The names of a table's dual-write trigger and, on PostgreSQL, its function.
///
/// A trigger's name is the table's own (PostgreSQL scopes it to the table). The function lives
/// in schema `phased`, shared by every schema, so it must be unique across schemas and tables:
/// for a table in the default schema (`t`, `public.t`) it is named like the trigger, as it
/// always was; for a table in another schema it carries a hash of the schema-qualified name, so
/// `app.t` and `web.t` no longer share (and overwrite) one function. An older phased named
/// those functions like the trigger: `legacy_function` is that name, dropped with the trigger
/// when nothing else uses it.
///
/// On PostgreSQL the trigger named like the table fires on INSERT, and `update` on UPDATE, the
/// same function: an UPDATE trigger may have a `WHEN` condition on `OLD` (one for both events
/// may not), and that condition spares the function call to an UPDATE that changed every new
/// column — the backfill's every row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerNames {
    pub trigger: Name,
    pub update: Name,
    pub function: Name,
    pub legacy_function: Option<Name>,
}

impl TriggerNames {
    pub fn for_table(table: &TableName) -> Self {
        let trigger = derived_name(table.schema(), &["phased_dual_write", table.name()]);
        let update = derived_name(
            table.schema(),
            &["phased_dual_write", table.name(), "update"],
        );
        match table.schema().filter(|s| s.as_str() != "public") {
            Some(schema) => TriggerNames {
                function: derived_name_in_schema(schema, &["phased_dual_write", table.name()]),
                legacy_function: Some(trigger.clone()),
                trigger,
                update,
            },
            None => TriggerNames {
                function: trigger.clone(),
                legacy_function: None,
                trigger,
                update,
            },
        }
    }

    /// `"phased"."phased_dual_write_<table>[_<hash>]"`
    fn function(&self) -> String {
        format!("{}.{}", quote("phased"), self.function.quoted())
    }

    /// SQLite's two triggers (it cannot assign NEW: one per event).
    fn sqlite(&self) -> [String; 2] {
        [
            quote(&format!("{}_insert", self.trigger)),
            quote(&format!("{}_update", self.trigger)),
        ]
    }
}

impl Operation for DualWrite {
    fn kind(&self) -> &'static str {
        "dual_write"
    }

    fn subject(&self) -> String {
        self.table.to_string()
    }

    fn allowed_in(&self) -> &'static [PhaseKind] {
        &[PhaseKind::Expand]
    }

    fn table(&self) -> Option<&TableName> {
        Some(&self.table)
    }

    /// DROP TRIGGER (run before CREATE TRIGGER) takes ACCESS EXCLUSIVE.
    fn locks(&self) -> Vec<TableLock> {
        vec![TableLock {
            table: self.table.clone(),
            mode: LockMode::AccessExclusive,
        }]
    }

    fn lock_timeout(&self) -> Option<PlanDuration> {
        self.lock_timeout
    }

    /// SQLite's update trigger lists the columns it watches.
    fn facts_of(&self) -> Option<&TableName> {
        Some(&self.table)
    }

    fn units(&self, dialect: Dialect) -> Result<Vec<Unit>, RenderError> {
        self.units_with(dialect, &super::TableFacts::default())
    }

    fn units_with(
        &self,
        dialect: Dialect,
        facts: &super::TableFacts,
    ) -> Result<Vec<Unit>, RenderError> {
        let table = self.table.quoted();
        let names = TriggerNames::for_table(&self.table);
        let trigger = names.trigger.quoted();
        Ok(match dialect {
            Dialect::Postgres => {
                // A value the writer set itself is kept: on INSERT one it gave, on UPDATE one it
                // changed (the new application writes the new columns itself).
                let assignments: String = self
                    .set
                    .iter()
                    .map(|(column, expr)| {
                        let c = column.quoted();
                        format!(
                            "  IF (TG_OP = 'INSERT' AND NEW.{c} IS NULL) OR (TG_OP = 'UPDATE' AND NEW.{c} IS NOT DISTINCT FROM OLD.{c}) THEN\n    NEW.{c} := {expr};\n  END IF;\n"
                        )
                    })
                    .collect();
                let function = names.function();
                let update = names.update.quoted();
                // The function assigns nothing on an UPDATE that changed every new column (the
                // backfill's, which sets them): the condition skips its call there, which cost
                // the backfill a PL/pgSQL call a row (docs/benchmarks.md).
                let unchanged = self
                    .set
                    .keys()
                    .map(|column| {
                        let c = column.quoted();
                        format!("NEW.{c} IS NOT DISTINCT FROM OLD.{c}")
                    })
                    .collect::<Vec<_>>()
                    .join(" OR ");
                vec![Unit::Transaction(vec![
                    format!(
                        "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $phased$\nBEGIN\n{assignments}  RETURN NEW;\nEND\n$phased$"
                    ),
                    format!("DROP TRIGGER IF EXISTS {trigger} ON {table}"),
                    format!("DROP TRIGGER IF EXISTS {update} ON {table}"),
                    format!(
                        "CREATE TRIGGER {trigger} BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {function}()"
                    ),
                    format!(
                        "CREATE TRIGGER {update} BEFORE UPDATE ON {table} FOR EACH ROW WHEN ({unchanged}) EXECUTE FUNCTION {function}()"
                    ),
                ])]
            }
            Dialect::Sqlite => {
                // SQLite cannot assign NEW in a BEFORE trigger: update the row just written
                // instead. recursive_triggers is off by default, so the trigger's own UPDATE
                // does not re-fire it.
                // A value the writer set itself is kept: on INSERT one it gave, on UPDATE one it
                // changed.
                let assignments = |kept: &dyn Fn(&str) -> String| {
                    self.set
                        .iter()
                        .map(|(column, expr)| {
                            let c = column.quoted();
                            format!("{c} = CASE WHEN {} THEN {c} ELSE ({expr}) END", kept(&c))
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let on_insert = assignments(&|c| format!("{c} IS NOT NULL"));
                let on_update = assignments(&|c| format!("NEW.{c} IS NOT OLD.{c}"));
                let insert_body =
                    format!("UPDATE {table} SET {on_insert} WHERE rowid = NEW.rowid;");
                let update_body =
                    format!("UPDATE {table} SET {on_update} WHERE rowid = NEW.rowid;");
                let [insert, update] = names.sqlite();
                // The update trigger watches the other columns only: the insert trigger's own
                // update of the new ones must not fire it (it would take a value the new
                // application gave back), nor must an update of the new ones alone.
                let others: Vec<String> = facts
                    .columns
                    .iter()
                    .filter(|c| !self.set.keys().any(|k| k.as_str() == c.name))
                    .map(|c| quote(&c.name))
                    .collect();
                let watched = if others.is_empty() {
                    String::new()
                } else {
                    format!(" OF {}", others.join(", "))
                };
                vec![Unit::Transaction(vec![
                    format!("DROP TRIGGER IF EXISTS {insert}"),
                    format!("DROP TRIGGER IF EXISTS {update}"),
                    format!(
                        "CREATE TRIGGER {insert} AFTER INSERT ON {table} FOR EACH ROW BEGIN {insert_body} END"
                    ),
                    format!(
                        "CREATE TRIGGER {update} AFTER UPDATE{watched} ON {table} FOR EACH ROW BEGIN {update_body} END"
                    ),
                ])]
            }
        })
    }

    /// Drop the trigger (and its function).
    fn inverse(&self, _ctx: &InverseContext<'_>, _done: bool, dialect: Dialect) -> Inverse {
        Inverse::Units(drop_units(&self.table, dialect))
    }
}

/// Drops a table's dual-write trigger (and its function): SHARE ROW EXCLUSIVE… ACCESS
/// EXCLUSIVE for `DROP TRIGGER`, briefly. `IF EXISTS`, so it can run again.
pub fn drop_units(table: &TableName, dialect: Dialect) -> Vec<Unit> {
    let names = TriggerNames::for_table(table);
    match dialect {
        Dialect::Postgres => vec![Unit::Transaction(vec![
            format!(
                "DROP TRIGGER IF EXISTS {} ON {}",
                names.trigger.quoted(),
                table.quoted()
            ),
            format!(
                "DROP TRIGGER IF EXISTS {} ON {}",
                names.update.quoted(),
                table.quoted()
            ),
            format!("DROP FUNCTION IF EXISTS {}()", names.function()),
        ]
        .into_iter()
        .chain(names.legacy_function.iter().map(|legacy| {
            // The function an older phased made for this table, unless another table's
            // trigger (a table of the same name in the default schema) still uses it.
            format!(
                "DO $phased$\nBEGIN\n  DROP FUNCTION IF EXISTS {}.{}();\nEXCEPTION WHEN dependent_objects_still_exist THEN NULL;\nEND\n$phased$",
                quote("phased"),
                legacy.quoted()
            )
        }))
        .collect())],
        Dialect::Sqlite => {
            let [insert, update] = names.sqlite();
            vec![Unit::Transaction(vec![
                format!("DROP TRIGGER IF EXISTS {insert}"),
                format!("DROP TRIGGER IF EXISTS {update}"),
            ])]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::parse_step;

    #[test]
    fn trigger_names_are_kept_when_they_fit() {
        let step = parse_step(
            "dual_write: { table: app.accounts, set: { email_lower: \"lower(NEW.email)\" } }",
        );
        let units = step.op().units(Dialect::Postgres).unwrap_or_default();
        let text = units.iter().map(Unit::sql_text).collect::<String>();
        // The trigger keeps its name; the function, shared by every schema, is the table's
        // own.
        assert!(
            text.contains("CREATE OR REPLACE FUNCTION \"phased\".\"phased_dual_write_accounts_"),
            "{text}"
        );
        assert!(
            text.contains("CREATE TRIGGER \"phased_dual_write_accounts\" BEFORE INSERT ON \"app\".\"accounts\""),
            "{text}"
        );
        assert!(
            text.contains("CREATE TRIGGER \"phased_dual_write_accounts_update\" BEFORE UPDATE ON \"app\".\"accounts\" FOR EACH ROW WHEN (NEW.\"email_lower\" IS NOT DISTINCT FROM OLD.\"email_lower\") EXECUTE"),
            "{text}"
        );
        let sqlite = step.op().units(Dialect::Sqlite).unwrap_or_default();
        assert!(sqlite[0]
            .sql_text()
            .contains("CREATE TRIGGER \"phased_dual_write_accounts_insert\" AFTER INSERT"));
    }

    #[test]
    fn long_table_names_get_their_own_function() {
        let shared = "t".repeat(50);
        let one = TableName::new(format!("{shared}_first_tbl")).unwrap_or_else(|e| panic!("{e}"));
        let two = TableName::new(format!("{shared}_other_tbl")).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(TriggerNames::for_table(&one), TriggerNames::for_table(&two));
    }

    #[test]
    fn tables_of_one_name_in_two_schemas_get_two_functions() {
        let app = TableName::new("app.t").unwrap_or_else(|e| panic!("{e}"));
        let web = TableName::new("web.t").unwrap_or_else(|e| panic!("{e}"));
        let public = TableName::new("t").unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<Name> = [&app, &web, &public]
            .iter()
            .map(|t| TriggerNames::for_table(t).function)
            .collect();
        assert_ne!(names[0], names[1]);
        assert_ne!(names[0], names[2]);
        assert_eq!(names[2].as_str(), "phased_dual_write_t");
        assert_eq!(
            TriggerNames::for_table(&TableName::new("public.t").unwrap_or_else(|e| panic!("{e}")))
                .function
                .as_str(),
            "phased_dual_write_t"
        );
    }
}
