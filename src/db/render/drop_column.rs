//! `drop_column`: catalog-only on PostgreSQL (ACCESS EXCLUSIVE for a moment, under lock_timeout);
//! SQLite rewrites the table in its own `ALTER TABLE … DROP COLUMN`.

use super::{ident, Dialect, Unit};
use crate::plan::DropColumn;

pub fn render(step: &DropColumn, dialect: Dialect) -> Vec<Unit> {
    let if_exists = match dialect {
        Dialect::Postgres => "IF EXISTS ",
        Dialect::Sqlite => "",
    };
    vec![Unit::Transaction(vec![format!(
        "ALTER TABLE {} DROP COLUMN {if_exists}{}",
        ident(&step.table),
        ident(&step.name)
    )])]
}
