//! What an operation hands the database layer: units of work in the order they must run, for
//! one SQL dialect. Pure text; the targets in `db/` run them.

use super::name::quote;

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
    /// dropped first; a valid one means the work is already done. `name` is quoted and
    /// schema-qualified when the table is (`"app"."idx"`): the index lives in its table's schema,
    /// and the lookup (`to_regclass`) and the drop must find it there.
    ConcurrentIndex { name: String, create: String },
    /// A user script that must not be wrapped in a transaction (`transactional: false`).
    Script(String),
    /// `ALTER TABLE … DROP COLUMN` (`drop`), preceded in its transaction by an explicit drop of
    /// each index and constraint that involves the column, looked up by the target when it runs:
    /// PostgreSQL would drop them silently, SQLite would refuse. `table` and `column` are the
    /// names as the plan writes them (unquoted); `drop` is the column's rendered drop.
    DropColumn {
        table: String,
        column: String,
        drop: String,
    },
    /// SQLite's copy-table recipe: rebuild `table` with a change SQLite cannot make in place.
    RebuildTable { table: String, change: TableChange },
}

/// A change applied by rebuilding a SQLite table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableChange {
    AddCheck {
        name: String,
        expression: String,
    },
    AddForeignKey {
        name: String,
        definition: String,
    },
    SetNotNull {
        column: String,
    },
    /// The inverse of the two adds: nothing to do when the constraint is not there.
    DropConstraint {
        name: String,
    },
    /// The inverse of `SetNotNull`: nothing to do when the column is nullable already.
    DropNotNull {
        column: String,
    },
}

impl Unit {
    /// The statements as they would be sent, for dry runs and error messages.
    pub fn sql_text(&self) -> String {
        match self {
            Unit::Transaction(stmts) => stmts.join(";\n"),
            Unit::Standalone(sql) | Unit::Script(sql) => sql.clone(),
            Unit::ConcurrentIndex { create, .. } => create.clone(),
            Unit::DropColumn { drop, .. } => format!(
                "-- first: DROP CONSTRAINT / DROP INDEX for each constraint and index on the column\n{drop}"
            ),
            Unit::RebuildTable { table, change } => {
                let what = match change {
                    TableChange::AddCheck { name, expression } => {
                        format!("add CONSTRAINT {} CHECK ({expression})", quote(name))
                    }
                    TableChange::AddForeignKey { name, definition } => {
                        format!("add CONSTRAINT {} {definition}", quote(name))
                    }
                    TableChange::SetNotNull { column } => {
                        format!("make {} NOT NULL", quote(column))
                    }
                    TableChange::DropConstraint { name } => {
                        format!("drop CONSTRAINT {}", quote(name))
                    }
                    TableChange::DropNotNull { column } => {
                        format!("make {} nullable", quote(column))
                    }
                };
                format!(
                    "-- copy-table recipe on {}: {what}\n-- (create the new table, copy the rows, drop the old one, rename, recreate indexes and triggers, PRAGMA foreign_key_check; one transaction)",
                    super::name::ident(table)
                )
            }
        }
    }
}

/// Why a step cannot be rendered for a dialect.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RenderError(pub String);
