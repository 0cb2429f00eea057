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
pub mod versions;

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
            Unit::RebuildTable { table, change } => {
                let what = match change {
                    TableChange::AddCheck { name, expression } => {
                        format!("add CONSTRAINT {} CHECK ({expression})", ident(name))
                    }
                    TableChange::AddForeignKey { name, definition } => {
                        format!("add CONSTRAINT {} {definition}", ident(name))
                    }
                    TableChange::SetNotNull { column } => {
                        format!("make {} NOT NULL", ident(column))
                    }
                    TableChange::DropConstraint { name } => {
                        format!("drop CONSTRAINT {}", ident(name))
                    }
                    TableChange::DropNotNull { column } => {
                        format!("make {} nullable", ident(column))
                    }
                };
                format!(
                    "-- copy-table recipe on {}: {what}\n-- (create the new table, copy the rows, drop the old one, rename, recreate indexes and triggers, PRAGMA foreign_key_check; one transaction)",
                    ident(table)
                )
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

/// PostgreSQL: runs `sql` (an `ALTER TABLE … ADD CONSTRAINT name …`) only when `table` has no
/// constraint `name` yet, so a step retried after a later unit failed picks up where it stopped.
/// PostgreSQL's safe way to add a constraint: `ADD CONSTRAINT … NOT VALID` (a brief lock, no
/// scan; skipped when a retry finds it already there), then `VALIDATE CONSTRAINT` in its own
/// transaction (SHARE UPDATE EXCLUSIVE: reads and writes go on while it scans).
pub fn add_not_valid_then_validate(table: &str, name: &str, definition: &str) -> Vec<Unit> {
    vec![
        Unit::Transaction(vec![unless_constraint_exists(
            table,
            name,
            &format!(
                "ALTER TABLE {} ADD CONSTRAINT {} {definition} NOT VALID",
                ident(table),
                ident(name)
            ),
        )]),
        Unit::Transaction(vec![format!(
            "ALTER TABLE {} VALIDATE CONSTRAINT {}",
            ident(table),
            ident(name)
        )]),
    ]
}

pub fn unless_constraint_exists(table: &str, name: &str, sql: &str) -> String {
    format!(
        "DO $phased$\nBEGIN\n  IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = {}::regclass AND conname = {}) THEN\n    {sql};\n  END IF;\nEND\n$phased$",
        literal(&ident(table)),
        literal(name)
    )
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

/// The units that undo a schema step (rollback), or why it has none. Backfills, flags and
/// commands are undone by the engine; `drop_dual_write` is undone by re-creating the plan's
/// `dual_write` for the table, which only the engine can find.
pub fn render_step_down(step: &Step, dialect: Dialect) -> Result<Vec<Unit>, RenderError> {
    let lost = |what: &str| {
        Err(RenderError(format!(
            "`{}` {what}; only a backup brings it back (`phased restore`)",
            step.kind_name()
        )))
    };
    Ok(match step {
        Step::CreateTable(s) => create_table::render_down(s, dialect),
        Step::AddColumn(s) => add_column::render_down(s, dialect),
        Step::CreateIndex(s) => create_index::render_down(s, dialect),
        Step::AddCheck(s) => add_check::render_down(s, dialect)?,
        Step::AddForeignKey(s) => add_foreign_key::render_down(s, dialect)?,
        Step::SetNotNull(s) => set_not_null::render_down(s, dialect)?,
        Step::DualWrite(s) => dual_write::render_drop(&s.table, dialect),
        Step::Sql(s) => sql::render_down(s)?,
        Step::DropTable(_) => return lost("dropped a table and its rows"),
        Step::DropColumn(_) => return lost("dropped a column and its values"),
        Step::DropIndex(_) => {
            return lost("dropped an index whose definition the plan does not hold")
        }
        Step::DropDualWrite(_) => {
            return Err(RenderError(
                "`drop_dual_write` is undone by re-creating the plan's `dual_write`".to_string(),
            ))
        }
        Step::Backfill(_) | Step::Flag(_) | Step::Command(_) | Step::Migrations(_) => {
            return Err(RenderError(format!(
                "`{}` is undone by the engine, not by SQL",
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

    fn step(yaml: &str) -> Step {
        match serde_saphyr::from_str(yaml) {
            Ok(step) => step,
            Err(e) => panic!("{yaml}: {e}"),
        }
    }

    #[test]
    fn inverses_per_dialect() {
        let index = step("create_index: { table: t, name: t_c_idx, columns: [c] }");
        assert_eq!(
            render_step_down(&index, Dialect::Postgres).ok(),
            Some(vec![Unit::Standalone(
                "DROP INDEX CONCURRENTLY IF EXISTS \"t_c_idx\"".into()
            )])
        );
        assert_eq!(
            render_step_down(&index, Dialect::Sqlite).ok(),
            Some(vec![Unit::Transaction(vec![
                "DROP INDEX IF EXISTS \"t_c_idx\"".into()
            ])])
        );
        let column = step("add_column: { table: t, name: c, type: text }");
        assert_eq!(
            render_step_down(&column, Dialect::Postgres).ok(),
            Some(vec![Unit::Transaction(vec![
                "ALTER TABLE \"t\" DROP COLUMN IF EXISTS \"c\"".into()
            ])])
        );
        let table = step("create_table: { name: t, columns: [{ name: id, type: int }] }");
        assert_eq!(
            render_step_down(&table, Dialect::Sqlite).ok(),
            Some(vec![Unit::Transaction(vec![
                "DROP TABLE IF EXISTS \"t\"".into()
            ])])
        );
        let check = step("add_check: { table: t, name: t_pos, expression: \"c > 0\" }");
        assert!(render_step_down(&check, Dialect::Postgres).is_ok());
        assert_eq!(
            render_step_down(&check, Dialect::Sqlite).ok(),
            Some(vec![Unit::RebuildTable {
                table: "t".into(),
                change: TableChange::DropConstraint {
                    name: "t_pos".into()
                }
            }])
        );
        let not_null = step("set_not_null: { table: t, column: c }");
        assert_eq!(
            render_step_down(&not_null, Dialect::Sqlite).ok(),
            Some(vec![Unit::RebuildTable {
                table: "t".into(),
                change: TableChange::DropNotNull { column: "c".into() }
            }])
        );
    }

    #[test]
    fn sql_needs_down_and_drops_have_no_inverse() {
        let with_down = step("sql: { up: \"CREATE VIEW v AS SELECT 1\", down: \"DROP VIEW v\" }");
        assert_eq!(
            render_step_down(&with_down, Dialect::Sqlite).ok(),
            Some(vec![Unit::Transaction(vec!["DROP VIEW v".into()])])
        );
        let without = step("sql: \"UPDATE t SET c = 1\"");
        let err = render_step_down(&without, Dialect::Postgres)
            .err()
            .map(|e| e.0);
        assert!(err.is_some_and(|e| e.contains("no `down`")));
        let drop = step("drop_column: { table: t, name: c }");
        let err = render_step_down(&drop, Dialect::Postgres)
            .err()
            .map(|e| e.0);
        assert!(err.is_some_and(|e| e.contains("phased restore")));
    }
}
