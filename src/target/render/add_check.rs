//! `add_check`: PostgreSQL adds it `NOT VALID` (a brief ACCESS EXCLUSIVE, no scan), then validates in
//! a separate transaction under SHARE UPDATE EXCLUSIVE, which lets reads and writes go on.
//! SQLite cannot add a constraint in place: the table is rebuilt.

use super::{ident, Dialect, TableChange, Unit};
use crate::plan::AddCheck;

pub fn render(step: &AddCheck, dialect: Dialect) -> Vec<Unit> {
    match dialect {
        Dialect::Postgres => vec![
            Unit::Transaction(vec![format!(
                "ALTER TABLE {} ADD CONSTRAINT {} CHECK ({}) NOT VALID",
                ident(&step.table),
                ident(&step.name),
                step.expression
            )]),
            Unit::Transaction(vec![format!(
                "ALTER TABLE {} VALIDATE CONSTRAINT {}",
                ident(&step.table),
                ident(&step.name)
            )]),
        ],
        Dialect::Sqlite => vec![Unit::RebuildTable {
            table: step.table.clone(),
            change: TableChange::AddCheck {
                name: step.name.clone(),
                expression: step.expression.clone(),
            },
        }],
    }
}
