//! PostgreSQL's safe way to add a constraint, shared by `add_check`, `add_foreign_key` and
//! `set_not_null`: `NOT VALID` first (a brief lock, no scan), `VALIDATE` after (a scan that lets
//! reads and writes go on).

use super::name::{literal, Name, TableName};
use super::unit::Unit;

/// `ADD CONSTRAINT … NOT VALID` (a brief lock, no scan; skipped when a retry finds it already
/// there), then `VALIDATE CONSTRAINT` in its own transaction (SHARE UPDATE EXCLUSIVE: reads and
/// writes go on while it scans).
pub fn add_not_valid_then_validate(table: &TableName, name: &Name, definition: &str) -> Vec<Unit> {
    vec![
        Unit::Transaction(vec![unless_constraint_exists(
            table,
            name,
            &format!(
                "ALTER TABLE {} ADD CONSTRAINT {} {definition} NOT VALID",
                table.quoted(),
                name.quoted()
            ),
        )]),
        Unit::Transaction(vec![format!(
            "ALTER TABLE {} VALIDATE CONSTRAINT {}",
            table.quoted(),
            name.quoted()
        )]),
    ]
}

/// Runs `sql` (an `ALTER TABLE … ADD CONSTRAINT name …`) only when `table` has no constraint
/// `name` yet, so a step retried after a later unit failed picks up where it stopped.
pub fn unless_constraint_exists(table: &TableName, name: &Name, sql: &str) -> String {
    format!(
        "DO $phased$\nBEGIN\n  IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = {}::regclass AND conname = {}) THEN\n    {sql};\n  END IF;\nEND\n$phased$",
        table.literal(),
        literal(name)
    )
}
