//! What a step records before it changes or drops something (`Unit::Remember`), as SQLite
//! stores it: an index's SQL and a table constraint's clause (from the table's SQL) in
//! `sqlite_schema`, a column's default from `pragma_table_info`. Kept in the step's checkpoint
//! for rollback.

use rusqlite::{Connection, OptionalExtension};

use super::table_definition::TableDefinition;
use super::{sql_error, state};
use crate::db::{DbError, StepKey};
use crate::ops::name::base_name;
use crate::ops::{Recorded, Remembered};

/// Looks `what` up and keeps it in the step's checkpoint. An index or constraint that is not
/// there leaves what an earlier attempt recorded (a rerun after the drop committed), or, when
/// nothing was, records that it was not there (rollback then has nothing to put back).
pub fn record(conn: &Connection, key: &StepKey, what: &Remembered) -> Result<(), DbError> {
    if let Some(recorded) = look_up(conn, what)? {
        return state::set_checkpoint(conn, key, Some(&recorded.to_checkpoint()));
    }
    let sql =
        "SELECT checkpoint FROM phased_steps WHERE plan = ?1 AND phase = ?2 AND step_index = ?3";
    let checkpoint: Option<String> = conn
        .query_row(
            sql,
            rusqlite::params![key.plan, key.phase, key.index],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| sql_error(e, sql))?
        .flatten();
    if Recorded::from_checkpoint(checkpoint.as_deref()).is_some() {
        tracing::info!(
            what = %what.describe(),
            "not there any more; keeping what an earlier attempt recorded"
        );
        return Ok(());
    }
    state::set_checkpoint(conn, key, Some(&Recorded::default().to_checkpoint()))
}

fn look_up(conn: &Connection, what: &Remembered) -> Result<Option<Recorded>, DbError> {
    let found = |definition: Option<String>| Recorded {
        definition,
        ..Recorded::default()
    };
    match what {
        Remembered::Index { name } => {
            let sql = "SELECT sql FROM sqlite_schema WHERE type = 'index' AND name = ?1 COLLATE NOCASE AND sql IS NOT NULL";
            let definition: Option<String> = conn
                .query_row(sql, [base_name(name)], |r| r.get(0))
                .optional()
                .map_err(|e| sql_error(e, sql))?;
            Ok(definition.map(|d| found(Some(d))))
        }
        Remembered::Constraint { table, name } => {
            let sql = "SELECT name, sql FROM sqlite_schema WHERE type = 'table' AND name = ?1 COLLATE NOCASE";
            let stored: Option<(String, String)> = conn
                .query_row(sql, [base_name(table)], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
                .map_err(|e| sql_error(e, sql))?;
            let Some((table, create)) = stored else {
                return Ok(None);
            };
            let definition = TableDefinition::parse(&table, &create)
                .map_err(|e| DbError::Unexpected(e.to_string()))?;
            Ok(definition
                .constraint(name)
                .map(|clause| found(Some(clause.to_string()))))
        }
        Remembered::Default { table, column } => {
            let sql = "SELECT dflt_value FROM pragma_table_info(?1) WHERE name = ?2 COLLATE NOCASE";
            let default: Option<Option<String>> = conn
                .query_row(sql, [base_name(table), column.as_str()], |r| r.get(0))
                .optional()
                .map_err(|e| sql_error(e, sql))?;
            Ok(default.map(found))
        }
        Remembered::Comment { .. } => Ok(None),
    }
}
