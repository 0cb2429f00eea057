//! SQL for each step kind, per dialect. Pure text generation: identifiers quoted, no I/O.
//!
//! Each step kind has its own file with its rendering for both dialects and its tests.

mod add_check;
mod add_column;
mod add_foreign_key;
pub mod backfill;
mod create_index;
mod create_table;
mod drop_column;
mod drop_index;
mod drop_table;
mod dual_write;
mod set_not_null;
mod sql;

use crate::plan::Step;

/// The SQL dialect of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    Postgres,
    Sqlite,
}

impl Dialect {
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Postgres => "postgres",
            Dialect::Sqlite => "sqlite",
        }
    }
}

/// A piece of a step's work, in the order it must run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unit {
    /// Statements run together in one transaction, under `SET LOCAL` timeouts.
    Transaction(Vec<String>),
    /// One statement on its own, outside any transaction (`… CONCURRENTLY`).
    Standalone(String),
    /// Builds an index concurrently (PostgreSQL). An INVALID leftover of the same name is
    /// dropped first; a valid one means the work is already done.
    ConcurrentIndex { name: String, create: String },
    /// A user script that must not be wrapped in a transaction (`transactional: false`).
    Script(String),
    /// SQLite's copy-table recipe: rebuild `table` with a change SQLite cannot make in place.
    RebuildTable { table: String, change: TableChange },
}

/// A change applied by rebuilding a SQLite table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableChange {
    AddCheck { name: String, expression: String },
    AddForeignKey { name: String, definition: String },
    SetNotNull { column: String },
}

impl Unit {
    /// The statements as they would be sent, for dry runs and error messages.
    pub fn sql_text(&self) -> String {
        match self {
            Unit::Transaction(stmts) => stmts.join(";\n"),
            Unit::Standalone(sql) | Unit::Script(sql) => sql.clone(),
            Unit::ConcurrentIndex { create, .. } => create.clone(),
            Unit::RebuildTable { table, change } => {
                format!("-- rebuild table {table} (copy-table recipe): {change:?}")
            }
        }
    }
}

/// Why a step cannot be rendered for a dialect.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RenderError(pub String);

/// Quotes an identifier; `schema.name` is quoted part by part.
pub fn ident(name: &str) -> String {
    name.split('.')
        .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// Quotes a list of identifiers, comma-separated.
pub fn ident_list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| ident(n))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A string literal (for catalog lookups that cannot take bind parameters, e.g. `regclass`).
pub fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The last part of a possibly schema-qualified name.
pub fn base_name(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

/// The units for a schema step. Backfills, flags, migrations and commands are driven by the
/// engine and have no fixed SQL.
pub fn render_step(step: &Step, dialect: Dialect) -> Result<Vec<Unit>, RenderError> {
    Ok(match step {
        Step::CreateTable(s) => create_table::render(s, dialect),
        Step::DropTable(s) => drop_table::render(s, dialect),
        Step::AddColumn(s) => add_column::render(s, dialect),
        Step::DropColumn(s) => drop_column::render(s, dialect),
        Step::CreateIndex(s) => create_index::render(s, dialect),
        Step::DropIndex(s) => drop_index::render(s, dialect),
        Step::AddCheck(s) => add_check::render(s, dialect),
        Step::AddForeignKey(s) => add_foreign_key::render(s, dialect),
        Step::SetNotNull(s) => set_not_null::render(s, dialect),
        Step::DualWrite(s) => dual_write::render(s, dialect),
        Step::DropDualWrite(s) => dual_write::render_drop(&s.table, dialect),
        Step::Sql(s) => sql::render(s)?,
        Step::Backfill(_) | Step::Flag(_) | Step::Migrations(_) | Step::Command(_) => {
            return Err(RenderError(format!(
                "`{}` has no fixed SQL; the engine runs it",
                step.kind_name()
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_identifiers() {
        assert_eq!(ident("accounts"), "\"accounts\"");
        assert_eq!(ident("public.accounts"), "\"public\".\"accounts\"");
        assert_eq!(ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(literal("it's"), "'it''s'");
    }
}
