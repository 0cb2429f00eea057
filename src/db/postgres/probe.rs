//! The workload's health as a backfill under `throttle: auto` sees it on PostgreSQL, from a
//! second session (`phased/<plan>/watch`): the latency of a cheap probe query on the backfilled
//! table (the first row by the walk key: an index read, what a point read by primary key costs),
//! and, a few times a second, the lock waits between the step connection and the others
//! (`pg_blocking_pids`). The probe takes ACCESS SHARE on the table, like any reader, under
//! a short `statement_timeout` and `lock_timeout`: it never queues anyone.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::Object;

use crate::db::probe::{Probe, ProbeWindow, BASELINE_SAMPLES};
use crate::db::DbError;
use crate::ops::name::{ident, ident_list};

/// The first probes, which make the baseline, come quickly …
const BASELINE_EVERY: Duration = Duration::from_millis(5);
/// … then one every this long while the backfill runs.
const PROBE_EVERY: Duration = Duration::from_millis(20);
/// The lock waits are read every this many probes (`pg_blocking_pids` takes the lock
/// manager's locks: not on every probe).
const LOCKS_EVERY: u32 = 5;

/// The probe query: the first row of the table by the walk key.
pub fn probe_sql(table: &str, key_columns: &[String]) -> String {
    format!(
        "SELECT 1 FROM {} ORDER BY {} LIMIT 1",
        ident(table),
        ident_list(key_columns)
    )
}

/// Sessions waiting on the step connection's locks, and sessions it waits on.
const LOCK_WAITS: &str = "SELECT \
     (SELECT count(*) FROM pg_stat_activity WHERE $1::int4 = ANY(pg_blocking_pids(pid)))::int4, \
     cardinality(pg_blocking_pids($1::int4))::int4";

/// Starts the probe on `session`; `work_pid` is the step connection's backend (no lock waits
/// read without it).
pub async fn start(
    pooled: Object,
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
    let locks = session
        .prepare(LOCK_WAITS)
        .await
        .map_err(|e| super::sql_error(e, LOCK_WAITS))?;
    let window = Arc::new(Mutex::new(ProbeWindow::default()));
    let shared = window.clone();
    let task = tokio::spawn(async move {
        let mut round: u32 = 0;
        let mut taken = 0usize;
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
            let waits = match work_pid {
                Some(pid) if round % LOCKS_EVERY == 0 => session
                    .query_one(&locks, &[&pid])
                    .await
                    .ok()
                    .map(|r| (r.get::<_, i32>(0), r.get::<_, i32>(1))),
                _ => None,
            };
            {
                let mut w = shared
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                w.latencies.push(latency);
                if let Some((blocked, blocking)) = waits {
                    let count = |n: i32| u32::try_from(n).unwrap_or(0);
                    w.blocked_sessions = w.blocked_sessions.max(count(blocked));
                    w.blocking_sessions = w.blocking_sessions.max(count(blocking));
                }
            }
            round = round.wrapping_add(1);
            taken += 1;
            let every = if taken < BASELINE_SAMPLES {
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
