//! One backfill batch on PostgreSQL: find the batch's last key, update the rows up to it, and
//! record the checkpoint, all in one transaction under `SET LOCAL` timeouts.

use std::time::{Duration, Instant};

use super::conn::Conn;
use tokio_postgres::types::ToSql;

use super::{set_local, sql_error};
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

/// A table the planner's statistics put at this many rows or more gets the planner's estimate
/// of the rows left to visit, not a count: counting is a scan of the whole table before the
/// first batch (minutes for a billion rows, on every attempt), and it competes with the
/// workload for the disk and the cores (a count of 1,000,000 rows here runs as three processes
/// on two cores; in its second a light workload's p99 read 12.5 ms). The total only drives the
/// progress bar and ETA; it grows to the rows done when they pass it, and is set to them when
/// the backfill ends. gh-ost does the same (`--exact-rowcount` to count instead).
pub const ESTIMATE_FROM_ROWS: f64 = 100_000.0;

/// Rows still to visit after the checkpoint, matching the predicate: counted, or on a large
/// table estimated (`ESTIMATE_FROM_ROWS`).
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
    // reltuples is -1 for a table never vacuumed nor analyzed: counted.
    let size = format!(
        "SELECT reltuples::float8 FROM pg_class WHERE oid = {}::regclass",
        literal(&ident(batch.table))
    );
    let rows: f64 = conn
        .query_opt(&size, &[])
        .await?
        .map_or(-1.0, |row| row.get(0));
    if rows >= ESTIMATE_FROM_ROWS {
        let explain = format!("EXPLAIN (FORMAT JSON) {}", sql.rows);
        if let Some(estimate) = conn
            .query_opt(&explain, &params)
            .await?
            .and_then(|row| planned_rows(&row.get::<_, serde_json::Value>(0)))
        {
            return Ok(estimate);
        }
    }
    Ok(conn
        .query_opt(&sql.count, &params)
        .await?
        .map(|row| row.get(0))
        .unwrap_or(0))
}

/// The rows `EXPLAIN (FORMAT JSON)` expects its statement to return.
fn planned_rows(plan: &serde_json::Value) -> Option<i64> {
    let rows = plan.get(0)?.get("Plan")?.get("Plan Rows")?.as_f64()?;
    // Rounded: the planner's estimates are fractional, and never negative.
    Some(rows.max(0.0).round() as i64)
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
    update_params.extend([
        format!("{:?}", batch.key.plan),
        format!("{:?}", batch.key.phase),
        batch.key.index.to_string(),
        "<the batch's last key>".to_string(),
        "<rows per second>".to_string(),
        "<the pace and why>".to_string(),
    ]);
    let taken = update_params.len() - 6;
    recorder.set_repeating(repeats);
    // Two pipelines, as `run_batch` sends them (the fence, sent by a runner holding the
    // plan's lease, is not in a dry run).
    recorder.sql(&begin_batch(batch.timeouts), Vec::new(), Effect::Write);
    recorder.sql(&sql.find_last, lookup_params, Effect::Read);
    recorder.sql(
        &update_and_checkpoint(&sql.update, taken),
        update_params,
        Effect::Write,
    );
    recorder.sql("COMMIT", Vec::new(), Effect::Write);
    recorder.set_repeating(false);
}

/// What a batch's transaction opens with: BEGIN and its timeouts. Its COMMIT waits for the
/// WAL flush like any other: a batch that flushes its own WAL leaves little for the
/// application's next commit to flush, so the backfill, not the application, waits for its
/// writes to reach the disk. (Measured in docs/benchmarks.md: with `synchronous_commit = off`
/// on the batches the backfill was no faster and the workload's p99 rose from 1.9× to 2.8×.)
pub(crate) fn begin_batch(timeouts: crate::db::Timeouts) -> String {
    format!("BEGIN; {}", set_local(timeouts))
}

/// The batch's UPDATE and its checkpoint in one statement: the checkpoint counts the rows
/// the UPDATE changed. Parameters: the UPDATE's own `1..=taken`, then the plan, phase, step
/// index, checkpoint, rate and pace. Returns one row: the rows updated.
pub(crate) fn update_and_checkpoint(update: &str, taken: usize) -> String {
    let p = |i: usize| format!("${}", taken + i);
    format!(
        "WITH batch AS ({update} RETURNING 1) \
         UPDATE phased.steps SET checkpoint = {cp}, rows_done = rows_done + (SELECT count(*) FROM batch), \
         rows_per_second = {rate}, progress = {pace}, updated_at = now() \
         WHERE plan = {plan} AND phase = {phase} AND step_index = {index} \
         RETURNING (SELECT count(*) FROM batch)",
        plan = p(1),
        phase = p(2),
        index = p(3),
        cp = p(4),
        rate = p(5),
        pace = p(6),
    )
}

/// Ends a batch's transaction after a failure, so the connection is usable again.
async fn abandon(client: &tokio_postgres::Client) {
    if let Err(e) = client.batch_execute("ROLLBACK").await {
        tracing::debug!(error = %e, "rolling back a failed backfill batch");
    }
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
            flushed: Duration::ZERO,
            waited: Duration::ZERO,
        });
    }
    let client = conn.client_mut()?;
    // Two round trips a batch, each a pipeline of statements run in order: BEGIN with the
    // timeouts, the fence and the lookup of the batch's last key; then the UPDATE with its
    // checkpoint, and COMMIT. Short batches are what keep the application's latency flat
    // (docs/benchmarks.md), and at a few milliseconds a batch every round trip saved is work
    // the batch can do instead. Statements are prepared once per connection; a statement sent
    // before the one ahead of it has answered is only ever one that need not wait for it.
    let begin = begin_batch(batch.timeouts);
    let limit = i64::try_from(batch.limit).unwrap_or(i64::MAX);
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
    if let Some(after) = &after {
        params.extend(after.iter().map(|v| v as &(dyn ToSql + Sync)));
    }
    params.push(&limit);
    // The fence: the lease row stays locked FOR SHARE until this batch commits, so no other
    // runner can take the plan over while it runs.
    let fenced = async {
        match fence {
            None => Ok(None),
            Some((plan, _)) => {
                let statement = client.prepare_cached(super::lease::FENCE).await?;
                client
                    .query_opt(&statement, &[plan])
                    .await
                    .map(|row| row.map(|r| r.get::<_, i64>(0)))
            }
        }
    };
    // Its preparation on the connection's first batch locks the table too: after the SET
    // LOCALs on the wire, so under the batch's lock_timeout.
    let lookup = async {
        let find_last = client.prepare_cached(&sql.find_last).await?;
        client.query_opt(&find_last, &params).await
    };
    let (begun, found, row) = tokio::join!(client.batch_execute(&begin), fenced, lookup);
    let opened = begun
        .map_err(|e| sql_error(e, &begin))
        .and_then(|()| found.map_err(|e| sql_error(e, super::lease::FENCE)))
        .and_then(|found| match fence {
            Some((plan, generation)) => crate::db::fence::fence_result(plan, *generation, found),
            None => Ok(()),
        })
        .and_then(|()| row.map_err(|e| sql_error(e, &sql.find_last)));
    let row = match opened {
        Ok(row) => row,
        Err(e) => {
            abandon(client).await;
            return Err(e);
        }
    };
    let Some(row) = row else {
        client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| sql_error(e, "COMMIT"))?;
        return Ok(BatchOutcome {
            rows: 0,
            last_key: None,
            held: Duration::ZERO,
            flushed: Duration::ZERO,
            waited: Duration::ZERO,
        });
    };
    let last: Vec<String> = (0..batch.key_columns.len())
        .map(|i| row.get::<_, String>(i))
        .collect();
    let last_json = serde_json::to_string(&last).unwrap_or_default();
    let stored = crate::db::state_sql::backfill_checkpoint(&last_json, batch.down);

    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
    if let Some(after) = &after {
        params.extend(after.iter().map(|v| v as &(dyn ToSql + Sync)));
    }
    params.extend(last.iter().map(|v| v as &(dyn ToSql + Sync)));
    let taken = params.len();
    params.extend([
        &batch.key.plan as &(dyn ToSql + Sync),
        &batch.key.phase,
        &batch.key.index,
        &stored,
        &batch.rows_per_second,
        &batch.pace,
    ]);
    let write = update_and_checkpoint(&sql.update, taken);
    // Prepared before COMMIT goes on the wire: a statement still being prepared would run
    // after it, outside the transaction.
    let statement = match client.prepare_cached(&write).await {
        Ok(statement) => statement,
        Err(e) => {
            abandon(client).await;
            return Err(sql_error(e, &write));
        }
    };
    let locking = Instant::now();
    // COMMIT of a transaction the UPDATE failed in rolls it back. The UPDATE's answer comes
    // before the COMMIT is run: what the COMMIT takes after it is the WAL flush.
    let (written, committed) = tokio::join!(
        async {
            let written = client.query_opt(&statement, &params).await;
            (written, locking.elapsed())
        },
        client.batch_execute("COMMIT")
    );
    let held = locking.elapsed();
    let (written, worked) = written;
    let written = written.map_err(|e| sql_error(e, &write))?;
    committed.map_err(|e| sql_error(e, "COMMIT"))?;
    let rows = written.map(|r| r.get::<_, i64>(0)).ok_or_else(|| {
        DbError::Unexpected(format!(
            "the state row of this backfill step (plan `{}`, phase `{}`) is missing: its \
                 last batch was written without a checkpoint",
            batch.key.plan, batch.key.phase
        ))
    })?;
    Ok(BatchOutcome {
        rows: u64::try_from(rows).unwrap_or(0),
        last_key: Some(last_json),
        held,
        flushed: held.saturating_sub(worked),
        waited: Duration::ZERO,
    })
}
