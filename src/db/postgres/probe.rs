//! The workload's health as a backfill under `throttle: auto` sees it on PostgreSQL, from a
//! second session (`phased/<plan>/watch`):
//! - the latency of a cheap probe query on the backfilled table (the first row by the walk key:
//!   an index read, what a point read by primary key costs);
//! - the latency of a probe *commit*: a one-row update of the plan's row in
//!   `phased.pace_probe`, committed. An application's commit waits for the WAL written before
//!   it to reach the disk, the backfill's included, so this is where a backfill's large
//!   batches hurt the workload most, and a read never shows it;
//! - a few times a second, the lock waits between the step connection and the others
//!   (`pg_blocking_pids`) and how many other client sessions of the cluster are at work
//!   (active, idle in a transaction, or busy within the last second): none means an idle
//!   database, where the backfill may run flat out.
//!
//! The probe read takes ACCESS SHARE on the table, like any reader, and the probe write a row
//! lock on phased's own row; both run under a short `statement_timeout` and `lock_timeout`, so
//! the probe never queues anyone.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::Object;

use crate::db::probe::{Probe, ProbeWindow, BASELINE_SAMPLES};
use crate::db::DbError;
use crate::ops::name::{ident, ident_list};

/// The baseline's probes, before the first batch, come this often …
const BASELINE_EVERY: Duration = Duration::from_millis(10);
/// … then one every this long while the backfill runs.
const PROBE_EVERY: Duration = Duration::from_millis(20);
/// The lock waits and the other sessions' activity are read every this many probes
/// (`pg_blocking_pids` takes the lock manager's locks: not on every probe).
const LOCKS_EVERY: u32 = 5;

/// The probe query: the first row of the table by the walk key.
pub fn probe_sql(table: &str, key_columns: &[String]) -> String {
    format!(
        "SELECT 1 FROM {} ORDER BY {} LIMIT 1",
        ident(table),
        ident_list(key_columns)
    )
}

/// The plan's row for the probe commit (made once; `phased.pace_probe` is state version 6).
const COMMIT_ROW: &str =
    "INSERT INTO phased.pace_probe (plan) VALUES ($1) ON CONFLICT (plan) DO NOTHING";
/// The probe commit: one row, no index touched (a HOT update), committed on its own.
const COMMIT_PROBE: &str =
    "UPDATE phased.pace_probe SET beats = beats + 1, at = clock_timestamp() WHERE plan = $1";

/// Other client sessions in a statement or a transaction (phased's own left out): the
/// workload's transactions in flight; and how many such sessions are connected at all.
const IN_FLIGHT: &str = "SELECT count(*) FILTER (WHERE state IN \
         ('active', 'idle in transaction', 'idle in transaction (aborted)'))::int4, \
       count(*)::int4 \
     FROM pg_stat_activity \
     WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND pid <> $1::int4 \
       AND coalesce(application_name, '') NOT LIKE 'phased/%'";

/// Sessions waiting on the step connection's locks, sessions it waits on, and other client
/// sessions at work (phased's own, named `phased/…`, left out; a session whose state this
/// role may not read counts as at work). `pg_blocking_pids` takes the lock manager's locks:
/// it is asked about sessions waiting on a lock only, not about every session each time.
const LOOK_AROUND: &str = "SELECT \
     (SELECT count(*) FROM pg_stat_activity \
       WHERE CASE WHEN wait_event_type = 'Lock' \
         THEN $1::int4 = ANY(pg_blocking_pids(pid)) ELSE false END)::int4, \
     cardinality(pg_blocking_pids($1::int4))::int4, \
     (SELECT count(*) FROM pg_stat_activity \
       WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND pid <> $1::int4 \
         AND coalesce(application_name, '') NOT LIKE 'phased/%' \
         AND (state IS DISTINCT FROM 'idle' OR state_change > now() - interval '1 second'))::int4";

/// Starts the probe on `session` for `plan`'s backfill; `work_pid` is the step connection's
/// backend (no lock waits read without it).
pub async fn start(
    pooled: Object,
    plan: &str,
    table: &str,
    key_columns: &[String],
    work_pid: Option<i32>,
) -> Result<Probe, DbError> {
    // Taken out of the pool: its session settings must not follow it back there, and it
    // closes when the probe stops.
    let session = Object::take(pooled);
    let sql = probe_sql(table, key_columns);
    session
        .batch_execute("SET statement_timeout = '1s'; SET lock_timeout = '100ms'")
        .await
        .map_err(|e| super::sql_error(e, "SET statement_timeout"))?;
    let probe = session
        .prepare(&sql)
        .await
        .map_err(|e| super::sql_error(e, &sql))?;
    let look = session
        .prepare(LOOK_AROUND)
        .await
        .map_err(|e| super::sql_error(e, LOOK_AROUND))?;
    let in_flight = session
        .prepare(IN_FLIGHT)
        .await
        .map_err(|e| super::sql_error(e, IN_FLIGHT))?;
    // Without its row (a state older than version 6 cannot be: the runner brings the state up
    // to date first) the backfill paces on the read probe alone.
    let commit = match session.execute(COMMIT_ROW, &[&plan]).await {
        Ok(_) => Some(
            session
                .prepare(COMMIT_PROBE)
                .await
                .map_err(|e| super::sql_error(e, COMMIT_PROBE))?,
        ),
        Err(e) => {
            tracing::warn!(error = %e, "no probe commit; pacing on the probe read");
            None
        }
    };
    let plan = plan.to_string();
    let pid = work_pid.unwrap_or(0);
    let window = Arc::new(Mutex::new(ProbeWindow::default()));
    let shared = window.clone();
    let task = tokio::spawn(async move {
        let mut round: u32 = 0;
        loop {
            let started = Instant::now();
            // A probe that fails (its timeout) counts with the time it took: the workload
            // felt at least that.
            let answered = session.query_opt(&probe, &[]).await;
            let latency = started.elapsed();
            if let Err(e) = &answered {
                if e.is_closed() {
                    tracing::warn!(error = %e, "the backfill's probe session was lost; pacing on the batches alone");
                    return;
                }
            }
            let committed = match &commit {
                Some(stmt) => {
                    let at = Instant::now();
                    let _ = session.execute(stmt, &[&plan]).await;
                    Some(at.elapsed())
                }
                None => None,
            };
            let flying = session
                .query_one(&in_flight, &[&pid])
                .await
                .ok()
                .map(|r| (r.get::<_, i32>(0), r.get::<_, i32>(1)));
            let around = if round % LOCKS_EVERY == 0 {
                session
                    .query_one(&look, &[&pid])
                    .await
                    .ok()
                    .map(|r| (r.get::<_, i32>(0), r.get::<_, i32>(1), r.get::<_, i32>(2)))
            } else {
                None
            };
            {
                let mut w = shared
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                w.latencies.push(latency);
                if let Some(c) = committed {
                    w.commit_latencies.push(c);
                    w.slowest_commit = w.slowest_commit.max(c);
                }
                if let Some((n, connected)) = flying {
                    w.in_flight.push(u32::try_from(n).unwrap_or(0));
                    w.connections = w.connections.max(u32::try_from(connected).unwrap_or(0));
                }
                if let Some((blocked, blocking, others)) = around {
                    let count = |n: i32| u32::try_from(n).unwrap_or(0);
                    if work_pid.is_some() {
                        w.blocked_sessions = w.blocked_sessions.max(count(blocked));
                        w.blocking_sessions = w.blocking_sessions.max(count(blocking));
                    }
                    w.activity_reads += 1;
                    w.others_active = w.others_active.max(count(others));
                }
            }
            round = round.wrapping_add(1);
            let every = if (round as usize) < BASELINE_SAMPLES {
                BASELINE_EVERY
            } else {
                PROBE_EVERY
            };
            tokio::time::sleep(every.saturating_sub(started.elapsed())).await;
        }
    });
    Ok(Probe::new(window, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_reads_the_first_row_by_the_key_quoted() {
        assert_eq!(
            probe_sql("app.Items", &["a".to_string(), "b c".to_string()]),
            r#"SELECT 1 FROM "app"."Items" ORDER BY "a", "b c" LIMIT 1"#
        );
    }
}
