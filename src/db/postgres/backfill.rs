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
use crate::ops::name::{ident, ident_list, literal, quote};

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
    sql: &str,
    after: Option<&[String]>,
    repeats: bool,
) {
    let shown = |values: &[String]| values.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>();
    let mut params = after.map(shown).unwrap_or_default();
    params.extend([
        format!("{} (the batch size)", batch.limit),
        format!("{:?}", batch.key.plan),
        format!("{:?}", batch.key.phase),
        batch.key.index.to_string(),
        "<rows per second>".to_string(),
        "<the pace and why>".to_string(),
        format!("{:?}", batch.key.plan),
        "<the generation of the run's lease on the plan>".to_string(),
    ]);
    recorder.set_repeating(repeats);
    // One pipeline, as `run_batch` sends it.
    recorder.sql(&begin_batch(batch.timeouts), Vec::new(), Effect::Write);
    recorder.sql(sql, params, Effect::Write);
    recorder.sql("COMMIT", Vec::new(), Effect::Write);
    recorder.set_repeating(false);
}

/// What a batch's transaction opens with: BEGIN and its timeouts. Its COMMIT waits for the
/// WAL flush like any other: a batch that flushes its own WAL leaves little for the
/// application's next commit to flush, so the backfill, not the application, waits for its
/// writes to reach the disk. (Measured in docs/benchmarks.md: with `synchronous_commit = off`
/// on the batches the backfill was no faster and the workload's p99 rose from 1.9× to 2.8×.)
///
/// The batch's statement runs on its generic plan (`plan_cache_mode`, PostgreSQL 12+): its
/// parameters are only the key bounds and the batch size, and a plan made for each batch's
/// values cost as much planning as a short batch's work — the server's own choice between
/// the two kept replanning it (2,500 batches of 200 rows: 2.5–4.3 s replanned, 2.3–2.5 s on
/// the generic plan; docs/benchmarks.md).
pub(crate) fn begin_batch(timeouts: crate::db::Timeouts) -> String {
    format!(
        "BEGIN; {}; SET LOCAL plan_cache_mode = force_generic_plan",
        set_local(timeouts)
    )
}

/// A batch as one statement: the lease fence, the look-up of the batch's last key, the UPDATE
/// of the rows up to it and the checkpoint, so a batch is one round trip (`BEGIN` with its
/// timeouts, this statement and `COMMIT`, pipelined). Each round trip a batch waits for is time
/// it holds no row lock and does no work, at a couple of milliseconds a batch a fifth of the
/// wall time (docs/benchmarks.md).
///
/// Parameters: the previous batch's key (`1..=n`, when `has_lower_bound`), the batch size,
/// then the plan, phase and step index, the rate and the pace; `fenced`, then the lease's
/// plan and generation. Returns one row: the lease generation found (NULL unfenced), the rows
/// updated, the state rows updated (1), the batch's last key — a JSON array of its values as
/// text, as the checkpoint stores it (NULL when no row was left: the walk is done) — and the
/// seconds from the statement's start to the end of its look-up (the row locks come after).
///
/// The fence is in the statement, not a look-up of its own answered first: the lease row is
/// locked `FOR SHARE` before the look-up (an InitPlan of it) and until the batch commits, and
/// a generation not this runner's leaves the look-up empty, so the batch writes nothing, and
/// its checkpoint nothing, whatever follows on the wire. The checkpoint is built in the
/// statement (`json_build_array` of the key as text: `["42"]`, or `{"down":["42"]}` for a
/// rollback's walk), since the last key is only known there.
pub(crate) fn batch_statement(
    batch: &BatchRequest<'_>,
    key_types: &[String],
    has_lower_bound: bool,
    fenced: bool,
) -> String {
    let (table, key, set, predicate) = (batch.table, batch.key_columns, batch.set, batch.predicate);
    let n = key.len();
    let keys = ident_list(key);
    let previous = (0..n)
        .map(|i| {
            let ty = key_types.get(i).map(String::as_str).unwrap_or("text");
            format!("${}::text::{ty}", i + 1)
        })
        .collect::<Vec<_>>()
        .join(", ");
    let mut next = if has_lower_bound { n + 1 } else { 1 };
    let mut param = || {
        let p = format!("${next}");
        next += 1;
        p
    };
    let limit = param();
    let (plan, phase, index, rate, pace) = (param(), param(), param(), param(), param());
    let fence = fenced.then(|| (param(), param()));

    // The last key's columns, as the look-up returns them.
    let last_col = |i: usize| format!("phased_last_{}", i + 1);
    let mut conditions = Vec::new();
    if has_lower_bound {
        conditions.push(format!("({keys}) > ({previous})"));
    }
    if let Some(p) = predicate {
        conditions.push(format!("({p})"));
    }
    let where_clause = backfill::where_clause(&conditions);
    let joined = |parts: Vec<String>| parts.join(", ");
    let last_columns = joined(
        key.iter()
            .enumerate()
            .map(|(i, k)| format!("batch.{} AS {}", quote(k), last_col(i)))
            .collect(),
    );
    let key_text = joined(
        (0..n)
            .map(|i| format!("phased_row.{}::text", last_col(i)))
            .collect(),
    );
    let order_desc = backfill::order_desc(key);
    let last_tuple = joined(
        (0..n)
            .map(|i| format!("phased_last.{}", last_col(i)))
            .collect(),
    );
    // The UPDATE's rows: the look-up's, up to and including the last key, read by a
    // sub-query (an InitPlan, so still an index condition) rather than joined, so that the
    // plan's `set:` and `where:` see the table's columns alone, whatever they are named. No
    // last key (nothing left, or the fence failed): a NULL bound, and no row.
    let mut upd_conditions = conditions.clone();
    upd_conditions.insert(
        usize::from(has_lower_bound),
        format!("({keys}) <= (SELECT {last_tuple} FROM phased_last)"),
    );
    let assignments = backfill::assignments(set);
    let checkpoint = if batch.down {
        "'{\"down\":' || phased_last.phased_key || '}'"
    } else {
        "phased_last.phased_key"
    };
    let (fence_cte, fence_check, generation) = match &fence {
        Some((lease_plan, lease_generation)) => (
            format!(
                "phased_fence AS MATERIALIZED (SELECT generation FROM phased.leases WHERE plan = {lease_plan} FOR SHARE), "
            ),
            format!(
                " WHERE EXISTS (SELECT 1 FROM phased_fence WHERE generation = {lease_generation})"
            ),
            "(SELECT generation FROM phased_fence)".to_string(),
        ),
        None => (String::new(), String::new(), "NULL::bigint".to_string()),
    };
    format!(
        "WITH {fence_cte}\
         phased_last AS MATERIALIZED (SELECT phased_row.*, json_build_array({key_text})::text AS phased_key, \
         extract(epoch FROM clock_timestamp() - statement_timestamp())::float8 AS phased_looked FROM \
         (SELECT {last_columns} FROM (SELECT {keys} FROM {t}{where_clause} ORDER BY {keys} LIMIT {limit}) AS batch{fence_check} ORDER BY {order_desc} LIMIT 1) AS phased_row), \
         phased_batch AS (UPDATE {t} SET {assignments} WHERE {upd} RETURNING 1), \
         phased_step AS (UPDATE phased.steps SET checkpoint = {checkpoint}, rows_done = rows_done + (SELECT count(*) FROM phased_batch), \
         rows_per_second = {rate}, progress = {pace}, updated_at = now() \
         FROM phased_last WHERE plan = {plan} AND phase = {phase} AND step_index = {index} RETURNING 1) \
         SELECT {generation}, (SELECT count(*) FROM phased_batch), (SELECT count(*) FROM phased_step), phased_last.phased_key, phased_last.phased_looked \
         FROM (SELECT) AS phased_one LEFT JOIN phased_last ON true",
        t = ident(table),
        upd = upd_conditions.join(" AND "),
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
    let statement_of = |has_lower_bound: bool| {
        batch_statement(
            batch,
            types,
            has_lower_bound,
            // A dry run shows what a run sends, and a run holds its plan's lease.
            fence.is_some() || conn.recorder().is_some(),
        )
    };
    let sql = statement_of(after.is_some());
    if let Some(recorder) = conn.recorder() {
        // The first batch as it is sent, then the form every later batch takes (after the
        // previous batch's last key), once per batch.
        if after.is_none() {
            record_batch(recorder, batch, &sql, None, false);
        }
        let later = statement_of(true);
        let previous: Vec<String> = match &after {
            Some(after) => after.clone(),
            None => batch
                .key_columns
                .iter()
                .map(|c| format!("<the previous batch's last {c}>"))
                .collect(),
        };
        record_batch(recorder, batch, &later, Some(&previous), true);
        return Ok(BatchOutcome::nothing_left());
    }
    let begin = begin_batch(batch.timeouts);
    let limit = i64::try_from(batch.limit).unwrap_or(i64::MAX);
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
    if let Some(after) = &after {
        params.extend(after.iter().map(|v| v as &(dyn ToSql + Sync)));
    }
    params.extend([
        &limit as &(dyn ToSql + Sync),
        &batch.key.plan,
        &batch.key.phase,
        &batch.key.index,
        &batch.rows_per_second,
        &batch.pace,
    ]);
    if let Some((plan, generation)) = fence {
        params.extend([plan as &(dyn ToSql + Sync), generation]);
    }
    // One round trip a batch: BEGIN with the timeouts, the batch's statement and COMMIT, a
    // pipeline the server runs in order. Short batches are what keep the application's
    // latency flat (docs/benchmarks.md), and at a few milliseconds a batch every round trip
    // saved is work the batch can do instead. The statement must be prepared before it can go
    // on the wire behind BEGIN: on the connection's first batch (of this form) that is a round
    // trip of its own, after the SET LOCALs, since preparing it locks the table — under the
    // batch's lock_timeout.
    // Whether BEGIN still has to go on the wire, ahead of the statement.
    let (statement, open) = match conn.batch_statement(&sql) {
        Some(statement) => (statement, true),
        None => {
            let client = conn.client_mut()?;
            let (begun, prepared) =
                tokio::join!(client.batch_execute(&begin), client.prepare(&sql));
            let statement = match begun
                .map_err(|e| sql_error(e, &begin))
                .and_then(|()| prepared.map_err(|e| sql_error(e, &sql)))
            {
                Ok(statement) => statement,
                Err(e) => {
                    abandon(client).await;
                    return Err(e);
                }
            };
            conn.keep_batch_statement(&sql, statement.clone());
            (statement, false)
        }
    };
    let client = conn.client_mut()?;
    let locking = Instant::now();
    // Each future sends its message when first polled, and `join!` polls them in order: BEGIN
    // (unless sent already), the statement, COMMIT. COMMIT of a transaction the statement
    // failed in rolls it back. The statement's answer comes before the COMMIT is run: what
    // the COMMIT takes after it is the WAL flush.
    let (begun, written, committed) = tokio::join!(
        async {
            if open {
                client.batch_execute(&begin).await
            } else {
                Ok(())
            }
        },
        async {
            let written = client.query_opt(&statement, &params).await;
            (written, locking.elapsed())
        },
        client.batch_execute("COMMIT")
    );
    finish(
        batch,
        &sql,
        fence,
        begun.map_err(|e| sql_error(e, &begin)),
        written,
        committed,
        locking.elapsed(),
    )
}

/// A batch's answers: its rows and last key, or the first error (the fence's among them).
fn finish(
    batch: &BatchRequest<'_>,
    sql: &str,
    fence: Option<&(String, i64)>,
    begun: Result<(), DbError>,
    written: (
        Result<Option<tokio_postgres::Row>, tokio_postgres::Error>,
        Duration,
    ),
    committed: Result<(), tokio_postgres::Error>,
    held: Duration,
) -> Result<BatchOutcome, DbError> {
    let (written, worked) = written;
    begun?;
    let row = written.map_err(|e| sql_error(e, sql))?;
    committed.map_err(|e| sql_error(e, "COMMIT"))?;
    let row =
        row.ok_or_else(|| DbError::Unexpected("a backfill batch returned no row".to_string()))?;
    if let Some((plan, generation)) = fence {
        // A generation not this runner's found nothing to look up: nothing was written.
        crate::db::fence::fence_result(plan, *generation, row.get::<_, Option<i64>>(0))?;
    }
    let rows: i64 = row.get(1);
    let steps: i64 = row.get(2);
    let Some(last) = row.get::<_, Option<String>>(3) else {
        return Ok(BatchOutcome::nothing_left());
    };
    if steps == 0 {
        return Err(DbError::Unexpected(format!(
            "the state row of this backfill step (plan `{}`, phase `{}`) is missing: its \
             last batch was written without a checkpoint",
            batch.key.plan, batch.key.phase
        )));
    }
    // The row locks are taken after the look-up, which writes nothing: the time it took, from
    // the statement's start, is not part of how long the batch held them.
    let looked = row
        .get::<_, Option<f64>>(4)
        .filter(|s| s.is_finite() && *s > 0.0)
        .map_or(Duration::ZERO, Duration::from_secs_f64);
    Ok(BatchOutcome {
        rows: u64::try_from(rows).unwrap_or(0),
        last_key: Some(last),
        held: held.saturating_sub(looked.min(worked)),
        flushed: held.saturating_sub(worked),
        waited: Duration::ZERO,
    })
}
