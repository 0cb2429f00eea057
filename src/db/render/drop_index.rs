//! `drop_index`: PostgreSQL drops it `CONCURRENTLY` (no ACCESS EXCLUSIVE on the table), outside a
//! transaction; SQLite in a transaction.

use super::{ident, Dialect, Unit};
use crate::plan::DropIndex;

pub fn render(step: &DropIndex, dialect: Dialect) -> Vec<Unit> {
    match dialect {
        Dialect::Postgres => vec![Unit::Standalone(format!(
            "DROP INDEX CONCURRENTLY IF EXISTS {}",
            ident(&step.name)
        ))],
        Dialect::Sqlite => vec![Unit::Transaction(vec![format!(
            "DROP INDEX IF EXISTS {}",
            ident(&step.name)
        )])],
    }
}
