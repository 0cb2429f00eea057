//! `set_not_null`: PostgreSQL adds `CHECK (col IS NOT NULL) NOT VALID`, validates it (no ACCESS
//! EXCLUSIVE scan), then `SET NOT NULL` uses the validated check to skip its own scan, and the
//! helper check is dropped. SQLite rebuilds the table.

use super::{add_not_valid_then_validate, ident, Dialect, RenderError, TableChange, Unit};
use crate::plan::SetNotNull;

/// The helper check's name.
pub fn helper_name(table: &str, column: &str) -> String {
    let name = format!("{}_{}_not_null", super::base_name(table), column);
    name.chars().take(63).collect()
}

pub fn render(step: &SetNotNull, dialect: Dialect) -> Vec<Unit> {
    let table = ident(&step.table);
    let column = ident(&step.column);
    let helper = helper_name(&step.table, &step.column);
    let check = ident(&helper);
    match dialect {
        Dialect::Postgres => {
            let mut units = add_not_valid_then_validate(
                &step.table,
                &helper,
                &format!("CHECK ({column} IS NOT NULL)"),
            );
            units.push(Unit::Transaction(vec![
                format!("ALTER TABLE {table} ALTER COLUMN {column} SET NOT NULL"),
                format!("ALTER TABLE {table} DROP CONSTRAINT {check}"),
            ]));
            units
        }
        Dialect::Sqlite => vec![Unit::RebuildTable {
            table: step.table.clone(),
            change: TableChange::SetNotNull {
                column: step.column.clone(),
            },
        }],
    }
}

/// The inverse: `DROP NOT NULL` (catalog-only, ACCESS EXCLUSIVE for a moment) on PostgreSQL; on
/// SQLite, a rebuild with the column nullable.
pub fn render_down(step: &SetNotNull, dialect: Dialect) -> Result<Vec<Unit>, RenderError> {
    match dialect {
        Dialect::Postgres => Ok(vec![Unit::Transaction(vec![format!(
            "ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL",
            ident(&step.table),
            ident(&step.column)
        )])]),
        Dialect::Sqlite => Ok(vec![Unit::RebuildTable {
            table: step.table.clone(),
            change: TableChange::DropNotNull {
                column: step.column.clone(),
            },
        }]),
    }
}
