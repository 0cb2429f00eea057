//! One backfill batch on PostgreSQL: find the batch's last key, update the rows up to it, and
//! record the checkpoint, all in one transaction under `SET LOCAL` timeouts.

use std::time::{Duration, Instant};

use super::conn::Conn;
use tokio_postgres::types::ToSql;

use super::{set_local, sql_error, state};
use crate::db::backfill_key::{check_key_columns, not_unique};
use crate::db::recorder::{Effect, Recorder};
use crate::db::Dialect;
use crate::db::{BatchOutcome, BatchRequest, DbError};
use crate::ops::backfill;
use crate::ops::name::{ident, literal};

/// The SQL types of the key columns, for casting bound text values.
pub async fn key_types(
    conn: &Conn,
    table: &str,
    columns: &[String],
) -> Result<Vec<String>, DbError> {
    let mut types = Vec::with_capacity(columns.len());
    for column in columns {
        let sql = format!(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = {}::regclass AND attname = $1 AND NOT attisdropped",
            literal(&ident(table))
        );
        let row = conn.query_opt(&sql, &[column]).await?.ok_or_else(|| {
            DbError::Unexpected(format!("table `{table}` has no column `{column}`"))
        })?;
        types.push(row.get(0));
    }
    Ok(types)
}

/// Parses a checkpoint (a JSON array of the key's values as text).
fn parse_after(batch: &BatchRequest<'_>) -> Result<Option<Vec<String>>, DbError> {
    match batch.after {
        Some(json) => Ok(Some(serde_json::from_str(json).map_err(|e| {
            DbError::Unexpected(format!("unreadable backfill checkpoint {json}: {e}"))
        })?)),
        None => Ok(None),
    }
}

/// The key a backfill walks: the plan's `key`, checked, or the primary key.
pub async fn resolve_key(conn: &Conn, table: &str, key: &[String]) -> Result<Vec<String>, DbError> {
    let regclass = literal(&ident(table));
    if !super::state::relation_exists(conn, &ident(table)).await? {
        return Err(DbError::Unexpected(format!(
            "table `{table}` does not exist"
        )));
    }
    if key.is_empty() {
        let sql = format!(
            "SELECT a.attname::text FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = {regclass}::regclass AND i.indisprimary \
             ORDER BY array_position(i.indkey::int2[], a.attnum)"
        );
        let rows = conn.query(&sql, &[]).await?;
        if rows.is_empty() {
            return Err(DbError::Unexpected(format!(
                "table `{table}` has no primary key for the backfill to walk; name a unique, \
                 NOT NULL column set in the step with `key: [column, …]` (a unique index must cover it)"
            )));
        }
        return Ok(rows.iter().map(|r| r.get(0)).collect());
    }
    // Every named column exists and is NOT NULL: a NULL key would never compare greater than
    // the checkpoint, so its row would be skipped.
    let sql = format!(
        "SELECT attname::text, attnotnull FROM pg_attribute \
         WHERE attrelid = {regclass}::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
    );
    let columns: Vec<(String, bool)> = conn
        .query(&sql, &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    check_key_columns(table, key, &columns)?;
    // A unique index (not partial, no expressions) on a subset of the key makes it unique.
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = {regclass}::regclass \
         AND i.indisunique AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL \
         AND (SELECT bool_and(a.attname = ANY($1)) FROM pg_attribute a \
              WHERE a.attrelid = i.indrelid \
              AND a.attnum = ANY((i.indkey::int2[])[0:i.indnkeyatts - 1])))"
    );
    let unique: bool = conn
        .query_opt(&sql, &[&key])
        .await?
        .is_some_and(|row| row.get(0));
    if !unique {
        return Err(not_unique(table, key));
    }
    Ok(key.to_vec())
}

/// The batch's SQL on PostgreSQL, with or without the previous batch's key as lower bound.
fn batch_sql(
    batch: &BatchRequest<'_>,
    types: &[String],
    has_lower_bound: bool,
) -> backfill::BatchSql {
    backfill::render(
        Dialect::Postgres,
        batch.table,
        batch.key_columns,
        types,
        batch.set,
        batch.predicate,
        has_lower_bound,
    )
}

/// Rows still to visit after the checkpoint, matching the predicate.
pub async fn count_remaining(
    conn: &Conn,
    batch: &BatchRequest<'_>,
    types: &[String],
) -> Result<i64, DbError> {
    let after = parse_after(batch)?;
    let sql = batch_sql(batch, types, after.is_some());
    let params: Vec<&(dyn ToSql + Sync)> = after
        .iter()
        .flatten()
        .map(|v| v as &(dyn ToSql + Sync))
        .collect();
    Ok(conn
        .query_opt(&sql.count, &params)
        .await?
        .map(|row| row.get(0))
        .unwrap_or(0))
}

/// The largest replay lag among the streaming replicas (None without replicas). A replica
/// that has caught up and is idle reports a NULL lag, counted as none.
pub async fn replica_lag(conn: &Conn) -> Result<Option<std::time::Duration>, DbError> {
    let sql =
        "SELECT max(COALESCE(EXTRACT(EPOCH FROM replay_lag), 0))::float8 FROM pg_stat_replication";
    let seconds: Option<f64> = conn.query_opt(sql, &[]).await?.and_then(|row| row.get(0));
    Ok(seconds.map(|s| std::time::Duration::from_secs_f64(s.max(0.0))))
}

/// A dry run's batch: the statements a batch sends, in its order, with the values a batch
/// learns as it goes described instead of bound.
fn record_batch(
    recorder: &Recorder,
    batch: &BatchRequest<'_>,
    sql: &backfill::BatchSql,
    after: Option<&[String]>,
    repeats: bool,
) {
    let shown = |values: &[String]| values.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>();
    let mut lookup_params = after.map(shown).unwrap_or_default();
    lookup_params.push(format!("{} (the batch size)", batch.limit));
    let mut update_params = after.map(shown).unwrap_or_default();
    update_params.extend(
        batch
            .key_columns
            .iter()
            .map(|c| format!("<the batch's last {c}>")),
    );
    recorder.set_repeating(repeats);
    // tokio-postgres opens the live batch's transaction with `START TRANSACTION`.
    recorder.sql("START TRANSACTION", Vec::new(), Effect::Write);
    recorder.sql(&set_local(batch.timeouts), Vec::new(), Effect::Write);
    recorder.sql(&sql.find_last, lookup_params, Effect::Read);
    recorder.sql(&sql.update, update_params, Effect::Write);
    recorder.sql(
        state::CHECKPOINT,
        vec![
            format!("{:?}", batch.key.plan),
            format!("{:?}", batch.key.phase),
            batch.key.index.to_string(),
            "<the batch's last key>".to_string(),
            "<rows updated>".to_string(),
            "<rows per second>".to_string(),
            "<the pace and why>".to_string(),
        ],
        Effect::State,
    );
    recorder.sql("COMMIT", Vec::new(), Effect::Write);
    recorder.set_repeating(false);
}

pub async fn run_batch(
    conn: &mut Conn,
    batch: &BatchRequest<'_>,
    types: &[String],
    fence: Option<&(String, i64)>,
) -> Result<BatchOutcome, DbError> {
    let after = parse_after(batch)?;
    let sql = batch_sql(batch, types, after.is_some());
    if let Some(recorder) = conn.recorder() {
        // The first batch as it is sent, then the form every later batch takes (after the
        // previous batch's last key), once per batch.
        if after.is_none() {
            record_batch(recorder, batch, &sql, None, false);
        }
        let later = batch_sql(batch, types, true);
        let previous: Vec<String> = match &after {
            Some(after) => after.clone(),
            None => batch
                .key_columns
                .iter()
                .map(|c| format!("<the previous batch's last {c}>"))
                .collect(),
        };
        record_batch(recorder, batch, &later, Some(&previous), true);
        return Ok(BatchOutcome {
            rows: 0,
            last_key: None,
            held: Duration::ZERO,
            waited: Duration::ZERO,
        });
    }
    let conn = conn.client_mut()?;
    // Five round trips a batch: BEGIN; SET LOCAL pipelined with the lookup of the batch's last
    // key; the UPDATE; the checkpoint; COMMIT. Statements are prepared once per connection.
    // Short batches are what keep the application's latency flat (docs/benchmarks.md), and at
    // a few milliseconds a batch, every round trip saved is work the batch can do instead.
    let tx = conn
        .transaction()
        .await
        .map_err(|e| sql_error(e, "BEGIN"))?;
    // The fence first: the lease row stays locked FOR SHARE until this batch commits.
    super::lease::check_fence(&tx, fence).await?;
    let set = set_local(batch.timeouts);

    let limit = i64::try_from(batch.limit).unwrap_or(i64::MAX);
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
    if let Some(after) = &after {
        params.extend(after.iter().map(|v| v as &(dyn ToSql + Sync)));
    }
    params.push(&limit);
    // Sent together, run in order: SET LOCAL first, so that the lookup — and its preparation
    // on the connection's first batch, which locks the table too — already runs under the
    // batch's lock_timeout.
    let lookup = async {
        let find_last = tx.prepare_cached(&sql.find_last).await?;
        tx.query_opt(&find_last, &params).await
    };
    let (set_done, row) = tokio::join!(tx.batch_execute(&set), lookup);
    set_done.map_err(|e| sql_error(e, &set))?;
    let row = row.map_err(|e| sql_error(e, &sql.find_last))?;
    let Some(row) = row else {
        tx.commit().await.map_err(|e| sql_error(e, "COMMIT"))?;
        return Ok(BatchOutcome {
            rows: 0,
            last_key: None,
            held: Duration::ZERO,
            waited: Duration::ZERO,
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
    let update = tx
        .prepare_cached(&sql.update)
        .await
        .map_err(|e| sql_error(e, &sql.update))?;
    let locking = Instant::now();
    let rows = tx
        .execute(&update, &params)
        .await
        .map_err(|e| sql_error(e, &sql.update))?;
    let last_json = serde_json::to_string(&last).unwrap_or_default();
    let stored = crate::db::state_sql::backfill_checkpoint(&last_json, batch.down);
    state::checkpoint(
        &tx,
        batch.key,
        &stored,
        rows as i64,
        batch.rows_per_second,
        batch.pace,
    )
    .await?;
    tx.commit().await.map_err(|e| sql_error(e, "COMMIT"))?;
    Ok(BatchOutcome {
        rows,
        last_key: Some(last_json),
        held: locking.elapsed(),
        waited: Duration::ZERO,
    })
}
