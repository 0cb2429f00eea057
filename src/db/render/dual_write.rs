//! `dual_write` / `drop_dual_write`: a trigger that fills the new columns for rows written by old
//! application code. Creating or dropping a trigger takes SHARE ROW EXCLUSIVE on the table briefly.

use super::{base_name, ident, Dialect, Unit};
use crate::plan::DualWrite;

/// The trigger's (and, on PostgreSQL, its function's) name for a table.
pub fn trigger_name(table: &str) -> String {
    let name = format!("phased_dual_write_{}", base_name(table));
    name.chars().take(63).collect()
}

pub fn render(step: &DualWrite, dialect: Dialect) -> Vec<Unit> {
    let table = ident(&step.table);
    let trigger = trigger_name(&step.table);
    match dialect {
        Dialect::Postgres => {
            let assignments: String = step
                .set
                .iter()
                .map(|(column, expr)| format!("  NEW.{} := {};\n", ident(column), expr))
                .collect();
            let function = ident(&format!("phased.{trigger}"));
            vec![Unit::Transaction(vec![
                format!(
                    "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $phased$\nBEGIN\n{assignments}  RETURN NEW;\nEND\n$phased$"
                ),
                format!("DROP TRIGGER IF EXISTS {} ON {table}", ident(&trigger)),
                format!(
                    "CREATE TRIGGER {} BEFORE INSERT OR UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION {function}()",
                    ident(&trigger)
                ),
            ])]
        }
        Dialect::Sqlite => {
            // SQLite cannot assign NEW in a BEFORE trigger: update the row just written instead.
            // recursive_triggers is off by default, so the trigger's own UPDATE does not re-fire it.
            let assignments = step
                .set
                .iter()
                .map(|(column, expr)| format!("{} = {}", ident(column), expr))
                .collect::<Vec<_>>()
                .join(", ");
            let body = format!("UPDATE {table} SET {assignments} WHERE rowid = NEW.rowid;");
            vec![Unit::Transaction(vec![
                format!(
                    "DROP TRIGGER IF EXISTS {}",
                    ident(&format!("{trigger}_insert"))
                ),
                format!(
                    "DROP TRIGGER IF EXISTS {}",
                    ident(&format!("{trigger}_update"))
                ),
                format!(
                    "CREATE TRIGGER {} AFTER INSERT ON {table} FOR EACH ROW BEGIN {body} END",
                    ident(&format!("{trigger}_insert"))
                ),
                format!(
                    "CREATE TRIGGER {} AFTER UPDATE ON {table} FOR EACH ROW BEGIN {body} END",
                    ident(&format!("{trigger}_update"))
                ),
            ])]
        }
    }
}

pub fn render_drop(table: &str, dialect: Dialect) -> Vec<Unit> {
    let trigger = trigger_name(table);
    match dialect {
        Dialect::Postgres => vec![Unit::Transaction(vec![
            format!(
                "DROP TRIGGER IF EXISTS {} ON {}",
                ident(&trigger),
                ident(table)
            ),
            format!(
                "DROP FUNCTION IF EXISTS {}()",
                ident(&format!("phased.{trigger}"))
            ),
        ])],
        Dialect::Sqlite => vec![Unit::Transaction(vec![
            format!(
                "DROP TRIGGER IF EXISTS {}",
                ident(&format!("{trigger}_insert"))
            ),
            format!(
                "DROP TRIGGER IF EXISTS {}",
                ident(&format!("{trigger}_update"))
            ),
        ])],
    }
}
