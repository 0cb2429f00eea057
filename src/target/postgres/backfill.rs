//! One backfill batch on PostgreSQL: find the batch's last key, update the rows up to it, and
//! record the checkpoint, all in one transaction under `SET LOCAL` timeouts.

use deadpool_postgres::Object;
use tokio_postgres::types::ToSql;

use super::{set_local, sql_error, state};
use crate::target::render::{backfill, ident, literal, Dialect};
use crate::target::{BatchOutcome, BatchRequest, TargetError};

/// The SQL types of the key columns, for casting bound text values.
pub async fn key_types(
    conn: &Object,
    table: &str,
    columns: &[String],
) -> Result<Vec<String>, TargetError> {
    let mut types = Vec::with_capacity(columns.len());
    for column in columns {
        let sql = format!(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = {}::regclass AND attname = $1 AND NOT attisdropped",
            literal(&ident(table))
        );
        let row = conn
            .query_opt(&sql, &[column])
            .await
            .map_err(|e| sql_error(e, &sql))?
            .ok_or_else(|| {
                TargetError::Unexpected(format!("table `{table}` has no column `{column}`"))
            })?;
        types.push(row.get(0));
    }
    Ok(types)
}

pub async fn run_batch(
    conn: &mut Object,
    batch: &BatchRequest<'_>,
    types: &[String],
) -> Result<BatchOutcome, TargetError> {
    let after: Option<Vec<String>> = match batch.after {
        Some(json) => Some(serde_json::from_str(json).map_err(|e| {
            TargetError::Unexpected(format!("unreadable backfill checkpoint {json}: {e}"))
        })?),
        None => None,
    };
    let sql = backfill::render(
        Dialect::Postgres,
        batch.table,
        batch.key_columns,
        types,
        batch.set,
        batch.predicate,
        after.is_some(),
    );
    let tx = conn
        .transaction()
        .await
        .map_err(|e| sql_error(e, "BEGIN"))?;
    let set = set_local(batch.timeouts);
    tx.batch_execute(&set)
        .await
        .map_err(|e| sql_error(e, &set))?;

    let limit = i64::try_from(batch.limit).unwrap_or(i64::MAX);
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
    if let Some(after) = &after {
        params.extend(after.iter().map(|v| v as &(dyn ToSql + Sync)));
    }
    params.push(&limit);
    let row = tx
        .query_opt(&sql.find_last, &params)
        .await
        .map_err(|e| sql_error(e, &sql.find_last))?;
    let Some(row) = row else {
        tx.commit().await.map_err(|e| sql_error(e, "COMMIT"))?;
        return Ok(BatchOutcome {
            rows: 0,
            last_key: None,
        });
    };
    let last: Vec<String> = (0..batch.key_columns.len())
        .map(|i| row.get::<_, String>(i))
        .collect();

    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
    if let Some(after) = &after {
        params.extend(after.iter().map(|v| v as &(dyn ToSql + Sync)));
    }
    params.extend(last.iter().map(|v| v as &(dyn ToSql + Sync)));
    let rows = tx
        .execute(&sql.update, &params)
        .await
        .map_err(|e| sql_error(e, &sql.update))?;
    let last_json = serde_json::to_string(&last).unwrap_or_default();
    state::checkpoint(&tx, batch.key, &last_json, rows as i64).await?;
    tx.commit().await.map_err(|e| sql_error(e, "COMMIT"))?;
    Ok(BatchOutcome {
        rows,
        last_key: Some(last_json),
    })
}
