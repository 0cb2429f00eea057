//! One backfill batch on SQLite: find the batch's last key, update up to it, record the checkpoint,
//! in one `BEGIN IMMEDIATE` transaction.

use std::time::{Duration, Instant};

use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection, TransactionBehavior};

use super::{sql_error, state};
use crate::db::backfill_key::{check_key_columns, not_unique};
use crate::db::Dialect;
use crate::db::{BatchOutcome, BatchRequest, DbError};
use crate::ops::backfill;
use crate::ops::name::base_name;

fn to_json(value: &Value) -> Result<serde_json::Value, DbError> {
    Ok(match value {
        Value::Integer(i) => serde_json::Value::from(*i),
        Value::Real(f) => serde_json::Value::from(*f),
        Value::Text(t) => serde_json::Value::from(t.clone()),
        Value::Null => {
            return Err(DbError::Unexpected(
                "a backfill key column holds NULL: the key must be unique and not null".into(),
            ))
        }
        Value::Blob(_) => {
            return Err(DbError::Unexpected(
                "blob key columns are not supported for backfills".into(),
            ))
        }
    })
}

fn from_json(value: &serde_json::Value) -> Value {
    match value {
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Real(n.as_f64().unwrap_or_default()),
        },
        serde_json::Value::String(s) => Value::Text(s.clone()),
        other => Value::Text(other.to_string()),
    }
}

/// Parses a checkpoint (a JSON array of the key's values).
fn parse_after(batch: &BatchRequest<'_>) -> Result<Option<Vec<Value>>, DbError> {
    match batch.after {
        Some(json) => {
            let parsed: Vec<serde_json::Value> = serde_json::from_str(json).map_err(|e| {
                DbError::Unexpected(format!("unreadable backfill checkpoint {json}: {e}"))
            })?;
            Ok(Some(parsed.iter().map(from_json).collect()))
        }
        None => Ok(None),
    }
}

/// The key a backfill walks: the plan's `key`, checked, or the primary key, or the rowid.
pub fn resolve_key(conn: &Connection, table: &str, key: &[String]) -> Result<Vec<String>, DbError> {
    let name = base_name(table);
    let sql = "SELECT name, \"notnull\", pk FROM pragma_table_info(?1) ORDER BY cid";
    let mut stmt = conn.prepare(sql).map_err(|e| sql_error(e, sql))?;
    let columns: Vec<(String, bool, i64)> = stmt
        .query_map([name], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?, r.get(2)?))
        })
        .map_err(|e| sql_error(e, sql))?
        .collect::<Result<_, _>>()
        .map_err(|e| sql_error(e, sql))?;
    if columns.is_empty() {
        return Err(DbError::Unexpected(format!(
            "table `{table}` does not exist"
        )));
    }
    let mut primary: Vec<(i64, String)> = columns
        .iter()
        .filter(|c| c.2 > 0)
        .map(|c| (c.2, c.0.clone()))
        .collect();
    primary.sort();
    let primary: Vec<String> = primary.into_iter().map(|(_, n)| n).collect();
    if key.is_empty() {
        if primary.is_empty() {
            return Ok(vec!["rowid".to_string()]);
        }
        return Ok(primary);
    }
    if key.len() == 1 && key[0].eq_ignore_ascii_case("rowid") {
        return Ok(key.to_vec());
    }
    // Primary key columns count as NOT NULL (SQLite allows NULLs there only in legacy tables;
    // a NULL met on the way stops the backfill with an error).
    let checked: Vec<(String, bool)> = columns
        .iter()
        .map(|(n, notnull, pk)| (n.clone(), *notnull || *pk > 0))
        .collect();
    check_key_columns(table, key, &checked)?;
    if !primary.is_empty() && primary.iter().all(|p| key.contains(p)) {
        return Ok(key.to_vec());
    }
    let list = "SELECT name FROM pragma_index_list(?1) WHERE \"unique\" = 1 AND partial = 0";
    let mut stmt = conn.prepare(list).map_err(|e| sql_error(e, list))?;
    let indexes: Vec<String> = stmt
        .query_map([name], |r| r.get(0))
        .map_err(|e| sql_error(e, list))?
        .collect::<Result<_, _>>()
        .map_err(|e| sql_error(e, list))?;
    let info = "SELECT name FROM pragma_index_info(?1)";
    for index in indexes {
        let mut stmt = conn.prepare(info).map_err(|e| sql_error(e, info))?;
        let cols: Vec<Option<String>> = stmt
            .query_map([&index], |r| r.get(0))
            .map_err(|e| sql_error(e, info))?
            .collect::<Result<_, _>>()
            .map_err(|e| sql_error(e, info))?;
        let covered = !cols.is_empty()
            && cols
                .iter()
                .all(|c| c.as_ref().is_some_and(|c| key.contains(c)));
        if covered {
            return Ok(key.to_vec());
        }
    }
    Err(not_unique(table, key))
}

/// Rows still to visit after the checkpoint, matching the predicate.
pub fn count_remaining(conn: &Connection, batch: &BatchRequest<'_>) -> Result<i64, DbError> {
    let after = parse_after(batch)?;
    let sql = backfill::render(
        Dialect::Sqlite,
        batch.table,
        batch.key_columns,
        &[],
        batch.set,
        batch.predicate,
        after.is_some(),
    );
    let params = after.unwrap_or_default();
    conn.query_row(&sql.count, params_from_iter(params.iter()), |r| r.get(0))
        .map_err(|e| sql_error(e, &sql.count))
}

pub fn run_batch(
    conn: &mut Connection,
    batch: &BatchRequest<'_>,
    fence: Option<&(String, i64)>,
) -> Result<BatchOutcome, DbError> {
    let after = parse_after(batch)?;
    let sql = backfill::render(
        Dialect::Sqlite,
        batch.table,
        batch.key_columns,
        &[],
        batch.set,
        batch.predicate,
        after.is_some(),
    );
    // How long the write lock took: another writer holding it is the workload's sign of life
    // that `throttle: auto` yields to.
    let asked = Instant::now();
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| sql_error(e, "BEGIN IMMEDIATE"))?;
    let waited = asked.elapsed();
    super::lease::check_fence(&tx, fence)?;
    let limit = i64::try_from(batch.limit).unwrap_or(i64::MAX);
    let mut params: Vec<Value> = after.clone().unwrap_or_default();
    params.push(Value::Integer(limit));
    let n = batch.key_columns.len();
    let last: Option<Vec<Value>> = {
        let mut stmt = tx
            .prepare_cached(&sql.find_last)
            .map_err(|e| sql_error(e, &sql.find_last))?;
        let mut rows = stmt
            .query(params_from_iter(params.iter()))
            .map_err(|e| sql_error(e, &sql.find_last))?;
        match rows.next().map_err(|e| sql_error(e, &sql.find_last))? {
            Some(row) => Some(
                (0..n)
                    .map(|i| row.get::<_, Value>(i))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| sql_error(e, &sql.find_last))?,
            ),
            None => None,
        }
    };
    let Some(last) = last else {
        tx.commit().map_err(|e| sql_error(e, "COMMIT"))?;
        return Ok(BatchOutcome {
            rows: 0,
            last_key: None,
            held: Duration::ZERO,
            flushed: Duration::ZERO,
            waited,
        });
    };
    let mut params: Vec<Value> = after.unwrap_or_default();
    params.extend(last.iter().cloned());
    let locking = Instant::now();
    let rows = tx
        .prepare_cached(&sql.update)
        .and_then(|mut stmt| stmt.execute(params_from_iter(params.iter())))
        .map_err(|e| sql_error(e, &sql.update))?;
    let json: Vec<serde_json::Value> = last.iter().map(to_json).collect::<Result<_, _>>()?;
    let last_json = serde_json::to_string(&json).unwrap_or_default();
    let stored = crate::db::state_sql::backfill_checkpoint(&last_json, batch.down);
    state::checkpoint(
        &tx,
        batch.key,
        &stored,
        rows as i64,
        batch.rows_per_second,
        batch.pace,
    )?;
    tx.commit().map_err(|e| sql_error(e, "COMMIT"))?;
    Ok(BatchOutcome {
        rows: rows as u64,
        last_key: Some(last_json),
        held: locking.elapsed(),
        flushed: Duration::ZERO,
        waited,
    })
}
