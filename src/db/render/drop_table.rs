//! `drop_table`: ACCESS EXCLUSIVE on the table for the (catalog-only) drop, under lock_timeout.

use super::{ident, Dialect, Unit};
use crate::plan::DropTable;

pub fn render(step: &DropTable, _dialect: Dialect) -> Vec<Unit> {
    vec![Unit::Transaction(vec![format!(
        "DROP TABLE IF EXISTS {}",
        ident(&step.name)
    )])]
}
