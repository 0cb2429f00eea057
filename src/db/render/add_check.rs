//! `add_check`: PostgreSQL adds it `NOT VALID` (a brief ACCESS EXCLUSIVE, no scan), then validates in
//! a separate transaction under SHARE UPDATE EXCLUSIVE, which lets reads and writes go on.
//! SQLite cannot add a constraint in place: the table is rebuilt.

use super::{add_not_valid_then_validate, ident, Dialect, RenderError, TableChange, Unit};
use crate::plan::AddCheck;

pub fn render(step: &AddCheck, dialect: Dialect) -> Vec<Unit> {
    match dialect {
        Dialect::Postgres => add_not_valid_then_validate(
            &step.table,
            &step.name,
            &format!("CHECK ({})", step.expression),
        ),
        Dialect::Sqlite => vec![Unit::RebuildTable {
            table: step.table.clone(),
            change: TableChange::AddCheck {
                name: step.name.clone(),
                expression: step.expression.clone(),
            },
        }],
    }
}

/// The inverse: drop the constraint (ACCESS EXCLUSIVE for a moment on PostgreSQL); on SQLite, a
/// rebuild without it.
pub fn render_down(step: &AddCheck, dialect: Dialect) -> Result<Vec<Unit>, RenderError> {
    match dialect {
        Dialect::Postgres => Ok(vec![Unit::Transaction(vec![format!(
            "ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}",
            ident(&step.table),
            ident(&step.name)
        )])]),
        Dialect::Sqlite => Ok(vec![Unit::RebuildTable {
            table: step.table.clone(),
            change: TableChange::DropConstraint {
                name: step.name.clone(),
            },
        }]),
    }
}
