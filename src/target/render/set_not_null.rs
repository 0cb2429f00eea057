//! `set_not_null`: PostgreSQL adds `CHECK (col IS NOT NULL) NOT VALID`, validates it (no ACCESS
//! EXCLUSIVE scan), then `SET NOT NULL` uses the validated check to skip its own scan, and the
//! helper check is dropped. SQLite rebuilds the table.

use super::{ident, Dialect, TableChange, Unit};
use crate::plan::SetNotNull;

/// The helper check's name.
pub fn helper_name(table: &str, column: &str) -> String {
    let name = format!("{}_{}_not_null", super::base_name(table), column);
    name.chars().take(63).collect()
}

pub fn render(step: &SetNotNull, dialect: Dialect) -> Vec<Unit> {
    let table = ident(&step.table);
    let column = ident(&step.column);
    let check = ident(&helper_name(&step.table, &step.column));
    match dialect {
        Dialect::Postgres => vec![
            Unit::Transaction(vec![format!(
                "ALTER TABLE {table} ADD CONSTRAINT {check} CHECK ({column} IS NOT NULL) NOT VALID"
            )]),
            Unit::Transaction(vec![format!(
                "ALTER TABLE {table} VALIDATE CONSTRAINT {check}"
            )]),
            Unit::Transaction(vec![
                format!("ALTER TABLE {table} ALTER COLUMN {column} SET NOT NULL"),
                format!("ALTER TABLE {table} DROP CONSTRAINT {check}"),
            ]),
        ],
        Dialect::Sqlite => vec![Unit::RebuildTable {
            table: step.table.clone(),
            change: TableChange::SetNotNull {
                column: step.column.clone(),
            },
        }],
    }
}
