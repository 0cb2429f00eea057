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
    /// SQLite cannot rename an index: in one transaction the index is created again under
    /// `to` from its SQL in `sqlite_schema`, and `from` dropped. Nothing to do when `from` is
    /// gone and `to` is there. Names as the plan writes them (unquoted).
    RenameIndex { from: String, to: String },
    /// Looks up what `then` is about to change or drop (`what`) and keeps it in the step's
    /// checkpoint, so rollback can put it back ([`Recorded`]). In `then`'s transaction when it
    /// is one (PostgreSQL); before it otherwise (a `CONCURRENTLY` drop, a SQLite rebuild). An
    /// index or constraint that is not there (a rerun after the drop committed) leaves what
    /// was recorded as it is.
    Remember { what: Remembered, then: Box<Unit> },
    /// Runs `then` (a transaction) and, in that same transaction, writes `checkpoint` as the
    /// step's checkpoint: what is left of the step once `then` has committed (a step of several
    /// units that a crash can stop between them), for the rerun that finishes it and for
    /// rollback, which must know that `then` committed.
    Checkpoint { checkpoint: String, then: Box<Unit> },
}

/// What a [`Unit::Remember`] looks up before the change. Names are as the plan writes them
/// (unquoted; `schema.name` where one was written), and for an index on PostgreSQL qualified
/// by its table's schema.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Remembered {
    /// An index's definition (`pg_get_indexdef`; SQLite: its SQL in `sqlite_schema`).
    Index { name: String },
    /// A table constraint's definition (`pg_get_constraintdef`, with its index's for UNIQUE and
    /// PRIMARY KEY; SQLite: its clause in the table's SQL in `sqlite_schema`).
    Constraint { table: String, name: String },
    /// A column's default (`pg_get_expr`; SQLite: `pragma_table_info`), none included.
    Default { table: String, column: String },
    /// A table's or column's comment (PostgreSQL), none included.
    Comment {
        table: String,
        column: Option<String>,
    },
}

/// What a [`Unit::Remember`] found, as kept in the step's checkpoint (`{"recorded": …}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Recorded {
    /// The definition, default or comment; None: there was none (a column without a default).
    pub definition: Option<String>,
    /// A constraint's kind (`pg_constraint.contype`: c, f, u, p, x).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contype: Option<String>,
    /// The index behind a UNIQUE or PRIMARY KEY constraint: its name and `pg_get_indexdef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_definition: Option<String>,
}

impl Recorded {
    /// The checkpoint text that keeps it.
    pub fn to_checkpoint(&self) -> String {
        serde_json::json!({ "recorded": self }).to_string()
    }

    /// What a checkpoint kept, if it is a record's.
    pub fn from_checkpoint(checkpoint: Option<&str>) -> Option<Self> {
        let value: serde_json::Value = serde_json::from_str(checkpoint?).ok()?;
        serde_json::from_value(value.get("recorded")?.clone()).ok()
    }
}

impl Remembered {
    /// What it names, for messages: `index "i"`, `constraint "c" on "t"`.
    pub fn describe(&self) -> String {
        match self {
            Remembered::Index { name } => format!("index {}", super::name::ident(name)),
            Remembered::Constraint { table, name } => format!(
                "constraint {} on {}",
                super::name::ident(name),
                super::name::ident(table)
            ),
            Remembered::Default { table, column } => format!(
                "the default of {}.{}",
                super::name::ident(table),
                super::name::ident(column)
            ),
            Remembered::Comment {
                table,
                column: None,
            } => format!("the comment on {}", super::name::ident(table)),
            Remembered::Comment {
                table,
                column: Some(column),
            } => format!(
                "the comment on {}.{}",
                super::name::ident(table),
                super::name::ident(column)
            ),
        }
    }
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
    /// Sets (`Some`: the text after `DEFAULT`, as SQLite should store it) or drops a column's
    /// default; nothing to do when it is that already.
    SetDefault {
        column: String,
        default: Option<String>,
    },
    /// `CONSTRAINT name UNIQUE (columns)`, refused first (naming a few keys) when existing
    /// rows repeat a key; nothing to do when the constraint is there.
    AddUnique {
        name: String,
        columns: Vec<String>,
    },
    /// Puts back a constraint clause recorded before a drop, as it was written; nothing to do
    /// when a constraint of that name is there.
    RestoreConstraint {
        name: String,
        clause: String,
    },
    /// Renames a table constraint; nothing to do when `from` is not there and `to` is.
    RenameConstraint {
        from: String,
        to: String,
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
            Unit::RenameIndex { from, to } => format!(
                "-- SQLite cannot rename an index: it is created again as {} from its stored SQL, and {} dropped, in one transaction",
                quote(to),
                quote(from)
            ),
            Unit::Remember { what, then } => format!(
                "-- first: record {} in the step's state (rollback puts it back)\n{}",
                what.describe(),
                then.sql_text()
            ),
            Unit::Checkpoint { then, .. } => format!(
                "{}\n-- and, in the same transaction: record in the step's state what is left to do after it",
                then.sql_text()
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
                    TableChange::SetDefault {
                        column,
                        default: Some(default),
                    } => format!("set the DEFAULT of {} to {default}", quote(column)),
                    TableChange::SetDefault {
                        column,
                        default: None,
                    } => format!("drop the DEFAULT of {}", quote(column)),
                    TableChange::AddUnique { name, columns } => format!(
                        "add CONSTRAINT {} UNIQUE ({}) after checking for duplicate keys",
                        quote(name),
                        super::name::ident_list(columns)
                    ),
                    TableChange::RestoreConstraint { clause, .. } => {
                        format!("add back {clause}")
                    }
                    TableChange::RenameConstraint { from, to } => {
                        format!("rename CONSTRAINT {} to {}", quote(from), quote(to))
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
