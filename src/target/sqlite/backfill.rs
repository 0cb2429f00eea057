//! One backfill batch on SQLite: find the batch's last key, update up to it, record the checkpoint,
//! in one `BEGIN IMMEDIATE` transaction.

use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection, TransactionBehavior};

use super::{sql_error, state};
use crate::target::render::{backfill, Dialect};
use crate::target::{BatchOutcome, BatchRequest, TargetError};

fn to_json(value: &Value) -> Result<serde_json::Value, TargetError> {
    Ok(match value {
        Value::Integer(i) => serde_json::Value::from(*i),
        Value::Real(f) => serde_json::Value::from(*f),
        Value::Text(t) => serde_json::Value::from(t.clone()),
        Value::Null => {
            return Err(TargetError::Unexpected(
                "a backfill key column holds NULL: the key must be unique and not null".into(),
            ))
        }
        Value::Blob(_) => {
            return Err(TargetError::Unexpected(
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

pub fn run_batch(
    conn: &mut Connection,
    batch: &BatchRequest<'_>,
) -> Result<BatchOutcome, TargetError> {
    let after: Option<Vec<Value>> = match batch.after {
        Some(json) => {
            let parsed: Vec<serde_json::Value> = serde_json::from_str(json).map_err(|e| {
                TargetError::Unexpected(format!("unreadable backfill checkpoint {json}: {e}"))
            })?;
            Some(parsed.iter().map(from_json).collect())
        }
        None => None,
    };
    let sql = backfill::render(
        Dialect::Sqlite,
        batch.table,
        batch.key_columns,
        &[],
        batch.set,
        batch.predicate,
        after.is_some(),
    );
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| sql_error(e, "BEGIN IMMEDIATE"))?;
    let limit = i64::try_from(batch.limit).unwrap_or(i64::MAX);
    let mut params: Vec<Value> = after.clone().unwrap_or_default();
    params.push(Value::Integer(limit));
    let n = batch.key_columns.len();
    let last: Option<Vec<Value>> = {
        let mut stmt = tx
            .prepare(&sql.find_last)
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
        });
    };
    let mut params: Vec<Value> = after.unwrap_or_default();
    params.extend(last.iter().cloned());
    let rows = tx
        .execute(&sql.update, params_from_iter(params.iter()))
        .map_err(|e| sql_error(e, &sql.update))?;
    let json: Vec<serde_json::Value> = last.iter().map(to_json).collect::<Result<_, _>>()?;
    let last_json = serde_json::to_string(&json).unwrap_or_default();
    state::checkpoint(&tx, batch.key, &last_json, rows as i64)?;
    tx.commit().map_err(|e| sql_error(e, "COMMIT"))?;
    Ok(BatchOutcome {
        rows: rows as u64,
        last_key: Some(last_json),
    })
}
