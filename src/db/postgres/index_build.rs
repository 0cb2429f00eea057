//! Concurrent index statements (`CREATE INDEX CONCURRENTLY`, `DROP INDEX CONCURRENTLY`,
//! `REINDEX … CONCURRENTLY`, `DETACH PARTITION … CONCURRENTLY`), watched from a second session.
//!
//! Such a statement first queues for SHARE UPDATE EXCLUSIVE on its table, then waits for every
//! transaction older than its snapshots to finish — in any table of the database. PostgreSQL's
//! `lock_timeout` cannot tell the two apart (both are lock waits), so a plan's 2s lock_timeout
//! used to cancel a build after it had scanned and sorted the whole table, only because some
//! report elsewhere had been open for 3s. The waits for older transactions block no application
//! query (reads and writes do not conflict with SHARE UPDATE EXCLUSIVE), so here:
//!
//! - the statement runs with a session `lock_timeout` that is only a backstop (past
//!   `index_wait_timeout`), and `client_connection_check_interval` so that a build whose runner
//!   died stops instead of waiting on;
//! - a second session (`phased/<plan>/watch`) reads `pg_stat_activity`, `pg_locks` and
//!   `pg_stat_progress_create_index` a few times a second. While the statement is queued for a
//!   lock on a *relation* longer than the plan's `lock_timeout`, it cancels it
//!   (`pg_cancel_backend`), which the engine sees as a lock timeout and retries as before. While
//!   it waits for other transactions, it reports them (pid, age, the start of their query) and
//!   lets it wait, up to `index_wait_timeout` in total;
//! - its progress (phase, blocks or tuples done of the total, an ETA) goes to the caller as
//!   events and into the step's state for `phased status`.
//!
//! When a build fails — a timeout, a real error, a cancel (an operator's Ctrl-C cancels the
//! step connection's statement: `db::cancel`) — the INVALID index it leaves is dropped, the same
//! way, before the error is returned (`clean_up_failed_build`).
//!
//! A dry run sends nothing from the second session: the step connection records the settings,
//! the statement and the reset, and a note says how the run watches it.

use std::time::{Duration, Instant};

use deadpool_postgres::Object;
use tokio::sync::oneshot;

use super::{pg_millis, state, PgTarget};
use crate::db::index_build::{human_duration, ConcurrentStatement, Eta, IndexProgress, WaitingFor};
use crate::db::{DbError, StepKey, Timeouts};

/// How often the watcher looks.
const POLL: Duration = Duration::from_millis(250);
/// Progress events at most this often while only the counts move.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// Progress writes to the state at most this often while only the counts move.
const RECORD_EVERY: Duration = Duration::from_secs(2);
/// A cancel that did not end the statement is sent again after this long.
const CANCEL_AGAIN: Duration = Duration::from_secs(5);
/// The most the clean-up of a failed build waits for older transactions (and at most the step's
/// own `index_wait_timeout`): an operator who pressed Ctrl-C is waiting too, and the next run
/// drops what is left anyway.
const CLEANUP_WAIT: Duration = Duration::from_secs(10);
/// The session `lock_timeout` is a backstop for when the watcher is gone: it lets the watcher
/// act first.
const BACKSTOP_MARGIN: Duration = Duration::from_secs(60);
/// How long to wait for the second session before running the statement unwatched.
const WATCHER_CONNECT: Duration = Duration::from_secs(10);

/// One concurrent statement to run on the step connection.
pub(super) struct Statement<'a> {
    pub sql: &'a str,
    pub kind: ConcurrentStatement,
    pub timeouts: Timeouts,
    /// The step whose state records the progress.
    pub step: Option<&'a StepKey>,
}

/// How a concurrent statement ended.
pub(super) struct Ran {
    pub result: Result<(), DbError>,
    /// The index it built, as PostgreSQL names it, once the watcher saw it.
    pub index: Option<String>,
}

/// Why the watcher cancelled the statement.
#[derive(Debug, Clone, PartialEq)]
enum Cancel {
    /// Queued for a lock on a relation (its table) longer than lock_timeout.
    LockTimeout {
        relation: String,
        mode: String,
        waited: Duration,
    },
    /// Waited for older transactions longer than index_wait_timeout, in total.
    WaitTimeout {
        waited: Duration,
        sessions: Vec<WaitingFor>,
    },
}

/// The lock the statement waits for, as `pg_locks` shows it.
#[derive(Debug, Clone, PartialEq)]
struct LockWait {
    locktype: String,
    mode: String,
    relation: Option<String>,
    /// Since `pg_locks.waitstart` (PostgreSQL 14+).
    waited: Option<Duration>,
}

/// PostgreSQL's progress report (`pg_stat_progress_create_index`).
#[derive(Debug, Clone, Default, PartialEq)]
struct PgProgress {
    phase: String,
    blocks: (u64, u64),
    tuples: (u64, u64),
    lockers: (u64, u64),
    index: Option<String>,
}

/// What one look saw.
#[derive(Debug, Clone, Default, PartialEq)]
struct Snapshot {
    /// The statement is running (its backend is active with this statement).
    running: bool,
    waiting: Option<LockWait>,
    progress: Option<PgProgress>,
    /// The sessions `pg_blocking_pids` names.
    blocking: Vec<WaitingFor>,
}

/// What the watcher does after a look.
#[derive(Debug, Default, PartialEq)]
struct Decision {
    report: Option<IndexProgress>,
    record: bool,
    cancel: Option<Cancel>,
}

/// What the watcher knows between looks.
struct Watcher {
    kind: ConcurrentStatement,
    timeouts: Timeouts,
    started: Instant,
    /// The relation lock it is queued for, and since when.
    queued: Option<(String, Instant)>,
    /// Since when it has been waiting for other transactions (this episode), when a look last
    /// saw it waiting, and how long it waited before this episode.
    waiting_since: Option<Instant>,
    waiting_seen: Option<Instant>,
    waited_before: Duration,
    eta: Eta,
    last: Option<IndexProgress>,
    reported: Option<(Instant, String)>,
    recorded: Option<Instant>,
    cancelled: Option<(Cancel, Instant)>,
    index: Option<String>,
    /// The last wait seen was for other transactions (not a relation lock).
    last_wait_was_for_transactions: bool,
}

impl Watcher {
    fn new(kind: ConcurrentStatement, timeouts: Timeouts, now: Instant) -> Self {
        Self {
            kind,
            timeouts,
            started: now,
            queued: None,
            waiting_since: None,
            waiting_seen: None,
            waited_before: Duration::ZERO,
            eta: Eta::default(),
            last: None,
            reported: None,
            recorded: None,
            cancelled: None,
            index: None,
            last_wait_was_for_transactions: false,
        }
    }

    fn waited(&self, now: Instant) -> Duration {
        self.waited_before
            + self
                .waiting_since
                .and_then(|since| now.checked_duration_since(since))
                .unwrap_or_default()
    }

    /// The episode ends when a look last saw it waiting (looks are a fraction of a second
    /// apart): the time counted never runs ahead of the time seen.
    fn stop_waiting(&mut self) {
        if let (Some(since), Some(seen)) = (self.waiting_since, self.waiting_seen) {
            self.waited_before += seen.saturating_duration_since(since);
        }
        self.waiting_since = None;
        self.waiting_seen = None;
    }

    fn observe(&mut self, snap: &Snapshot, now: Instant) -> Decision {
        let mut decision = Decision::default();
        if !snap.running {
            self.stop_waiting();
            self.queued = None;
            return decision;
        }
        if let Some(index) = snap.progress.as_ref().and_then(|p| p.index.clone()) {
            self.index = Some(index);
        }
        let mut lock_phase = None;
        match &snap.waiting {
            Some(wait) if wait.locktype == "relation" => {
                self.stop_waiting();
                self.last_wait_was_for_transactions = false;
                let relation = wait.relation.clone().unwrap_or_else(|| "a relation".into());
                let since = match &self.queued {
                    Some((r, since)) if *r == relation => *since,
                    _ => {
                        let since = wait.waited.and_then(|w| now.checked_sub(w)).unwrap_or(now);
                        self.queued = Some((relation.clone(), since));
                        since
                    }
                };
                let waited = wait
                    .waited
                    .unwrap_or_else(|| now.saturating_duration_since(since));
                let limit = self.timeouts.lock_timeout;
                if !limit.is_zero() && waited >= limit && self.cancelled.is_none() {
                    decision.cancel = Some(Cancel::LockTimeout {
                        relation: relation.clone(),
                        mode: wait.mode.clone(),
                        waited,
                    });
                }
                lock_phase = Some(format!("waiting for a lock on {relation} ({})", wait.mode));
            }
            Some(wait) => {
                self.queued = None;
                self.last_wait_was_for_transactions = true;
                if self.waiting_since.is_none() {
                    let since = wait
                        .waited
                        .map(|w| w.min(now.saturating_duration_since(self.started)))
                        .and_then(|w| now.checked_sub(w))
                        .unwrap_or(now);
                    self.waiting_since = Some(since);
                }
                self.waiting_seen = Some(now);
                let waited = self.waited(now);
                let limit = self.timeouts.index_wait;
                if !limit.is_zero() && waited >= limit && self.cancelled.is_none() {
                    decision.cancel = Some(Cancel::WaitTimeout {
                        waited,
                        sessions: snap.blocking.clone(),
                    });
                }
            }
            None => {
                self.stop_waiting();
                self.queued = None;
            }
        }
        let progress = self.progress(snap, lock_phase, now);
        let key = format!(
            "{}|{}|{:?}",
            progress.phase,
            progress.unit.as_deref().unwrap_or(""),
            progress
                .waiting_for
                .iter()
                .map(|w| w.pid)
                .collect::<Vec<_>>()
        );
        let changed = self.reported.as_ref().is_none_or(|(_, k)| *k != key);
        let report_due = self
            .reported
            .as_ref()
            .is_none_or(|(at, _)| now.saturating_duration_since(*at) >= REPORT_EVERY);
        let record_due = self
            .recorded
            .is_none_or(|at| now.saturating_duration_since(at) >= RECORD_EVERY);
        if changed || report_due {
            self.reported = Some((now, key));
            decision.report = Some(progress.clone());
        }
        if changed || record_due {
            self.recorded = Some(now);
            decision.record = true;
        }
        self.last = Some(progress);
        decision
    }

    fn progress(
        &mut self,
        snap: &Snapshot,
        lock_phase: Option<String>,
        now: Instant,
    ) -> IndexProgress {
        let pg = snap.progress.clone().unwrap_or_default();
        let waiting_for_transactions = snap
            .waiting
            .as_ref()
            .is_some_and(|w| w.locktype != "relation");
        let phase = match lock_phase {
            Some(phase) => phase,
            None if !pg.phase.is_empty() && pg.phase != "initializing" => pg.phase.clone(),
            None if waiting_for_transactions => "waiting for older transactions".to_string(),
            None if !pg.phase.is_empty() => pg.phase.clone(),
            None => "running".to_string(),
        };
        let counted = if phase.starts_with("waiting for") {
            (pg.lockers.1 > 0).then_some((pg.lockers, "transactions"))
        } else if phase.contains("sorting") {
            None
        } else if pg.tuples.1 > 0 {
            Some((pg.tuples, "tuples"))
        } else if pg.blocks.1 > 0 {
            Some((pg.blocks, "blocks"))
        } else {
            None
        };
        let eta = match counted {
            Some(((done, total), unit)) => self.eta.observe(&phase, unit, done, total, now),
            None => {
                self.eta.reset();
                None
            }
        };
        IndexProgress {
            command: self.kind.command().to_string(),
            index: self.index.clone(),
            phase,
            done: counted.map(|((done, _), _)| done),
            total: counted.map(|((_, total), _)| total),
            unit: counted.map(|(_, unit)| unit.to_string()),
            eta_ms: eta.map(millis),
            waiting_for: if snap.waiting.is_some() {
                snap.blocking.clone()
            } else {
                Vec::new()
            },
            waited_ms: millis(self.waited(now)),
            wait_limit_ms: (!self.timeouts.index_wait.is_zero())
                .then(|| millis(self.timeouts.index_wait)),
            elapsed_ms: millis(now.saturating_duration_since(self.started)),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One look at the statement's backend, in one round trip.
const LOOK: &str = "SELECT a.state = 'active' AND a.query <> '' AND left($2, length(a.query)) = a.query, \
     w.locktype, w.mode, w.relation, w.waited, \
     p.phase, p.blocks_total, p.blocks_done, p.tuples_total, p.tuples_done, p.lockers_total, p.lockers_done, p.index_name, \
     b.sessions \
     FROM pg_stat_activity a \
     LEFT JOIN LATERAL (SELECT l.locktype, l.mode, l.relation::regclass::text AS relation, \
         extract(epoch FROM clock_timestamp() - (to_jsonb(l) ->> 'waitstart')::timestamptz)::float8 AS waited \
         FROM pg_locks l WHERE l.pid = a.pid AND NOT l.granted LIMIT 1) w ON true \
     LEFT JOIN LATERAL (PROGRESS) p ON true \
     LEFT JOIN LATERAL (SELECT coalesce(jsonb_agg(jsonb_build_object( \
         'pid', o.pid, 'application_name', coalesce(o.application_name, ''), 'state', coalesce(o.state, ''), \
         'seconds', coalesce(extract(epoch FROM clock_timestamp() - coalesce(o.xact_start, o.query_start, o.backend_start)), 0)::float8, \
         'query', left(regexp_replace(coalesce(o.query, ''), '\\s+', ' ', 'g'), 120)) ORDER BY o.xact_start), '[]'::jsonb)::text AS sessions \
         FROM pg_stat_activity o WHERE o.pid = ANY (pg_blocking_pids(a.pid))) b ON true \
     WHERE a.pid = $1";

/// `pg_stat_progress_create_index` (PostgreSQL 12+).
const PROGRESS: &str =
    "SELECT p.phase, p.blocks_total, p.blocks_done, p.tuples_total, p.tuples_done, \
     p.lockers_total, p.lockers_done, nullif(p.index_relid, 0)::regclass::text AS index_name \
     FROM pg_stat_progress_create_index p WHERE p.pid = a.pid";

/// Before PostgreSQL 12 there is no progress report: the waits are still seen in `pg_locks`.
const NO_PROGRESS: &str =
    "SELECT NULL::text AS phase, NULL::bigint AS blocks_total, NULL::bigint AS blocks_done, \
     NULL::bigint AS tuples_total, NULL::bigint AS tuples_done, NULL::bigint AS lockers_total, \
     NULL::bigint AS lockers_done, NULL::text AS index_name";

/// Cancels the statement if its backend is still running it (not the next one).
const CANCEL: &str = "SELECT pg_cancel_backend(a.pid) FROM pg_stat_activity a \
     WHERE a.pid = $1 AND a.state = 'active' AND a.query <> '' AND left($2, length(a.query)) = a.query";

async fn look(conn: &Object, query: &str, pid: i32, sql: &str) -> Result<Snapshot, DbError> {
    let row = conn
        .query_opt(query, &[&pid, &sql])
        .await
        .map_err(|e| super::sql_error(e, query))?;
    let Some(row) = row else {
        return Ok(Snapshot::default());
    };
    let count = |i: usize| -> u64 {
        row.get::<_, Option<i64>>(i)
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(0)
    };
    let waiting = row.get::<_, Option<String>>(1).map(|locktype| LockWait {
        locktype,
        mode: row.get::<_, Option<String>>(2).unwrap_or_default(),
        relation: row.get(3),
        waited: row
            .get::<_, Option<f64>>(4)
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64),
    });
    let progress = row.get::<_, Option<String>>(5).map(|phase| PgProgress {
        phase,
        blocks: (count(7), count(6)),
        tuples: (count(9), count(8)),
        lockers: (count(11), count(10)),
        index: row.get(12),
    });
    let blocking = row
        .get::<_, Option<String>>(13)
        .and_then(|json| serde_json::from_str(&json).ok())
        .unwrap_or_default();
    Ok(Snapshot {
        running: row.get::<_, Option<bool>>(0).unwrap_or(false),
        waiting,
        progress,
        blocking,
    })
}

async fn cancel(conn: &Object, pid: i32, sql: &str) -> bool {
    match conn.query_opt(CANCEL, &[&pid, &sql]).await {
        Ok(row) => row
            .and_then(|r| r.get::<_, Option<bool>>(0))
            .unwrap_or(false),
        Err(e) => {
            tracing::warn!(error = %e, "cannot cancel the statement from the watching session");
            false
        }
    }
}

/// Watches the statement until `done` fires; returns what it saw.
async fn watch(
    conn: &Object,
    pid: i32,
    server_version: Option<i32>,
    st: &Statement<'_>,
    mut done: oneshot::Receiver<()>,
    progress: &mut dyn FnMut(&IndexProgress),
) -> Watcher {
    let query = LOOK.replace(
        "PROGRESS",
        if server_version.is_none_or(|v| v >= 120_000) {
            PROGRESS
        } else {
            NO_PROGRESS
        },
    );
    let mut watcher = Watcher::new(st.kind, st.timeouts, Instant::now());
    let mut warned = false;
    loop {
        tokio::select! {
            biased;
            _ = &mut done => return watcher,
            _ = tokio::time::sleep(POLL) => {}
        }
        let now = Instant::now();
        let snapshot = match look(conn, &query, pid, st.sql).await {
            Ok(s) => s,
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %e, "cannot watch the {} from the second session", st.kind.command());
                    warned = true;
                }
                continue;
            }
        };
        let decision = watcher.observe(&snapshot, now);
        if let Some(p) = &decision.report {
            progress(p);
        }
        if decision.record {
            if let (Some(key), Some(last)) = (st.step, &watcher.last) {
                if let Ok(json) = serde_json::to_string(last) {
                    if let Err(e) = state::set_progress(conn, key, Some(&json)).await {
                        tracing::debug!(error = %e, "cannot record the build's progress");
                    }
                }
            }
        }
        if let Some(reason) = decision.cancel {
            if cancel(conn, pid, st.sql).await {
                watcher.cancelled = Some((reason, now));
            }
        } else if let Some((reason, at)) = &watcher.cancelled {
            if snapshot.running && now.saturating_duration_since(*at) >= CANCEL_AGAIN {
                let reason = reason.clone();
                if cancel(conn, pid, st.sql).await {
                    watcher.cancelled = Some((reason, now));
                }
            }
        }
    }
}

/// Adds a line to an error's message (the SQL and the code stay).
pub(super) fn with_note(error: DbError, note: &str) -> DbError {
    match error {
        DbError::Sql {
            message,
            code,
            sql,
            retryable,
        } => DbError::Sql {
            message: format!("{message}\n{note}"),
            code,
            sql,
            retryable,
        },
        DbError::Connect { target, message } => DbError::Connect {
            target,
            message: format!("{message}\n{note}"),
        },
        DbError::Unexpected(message) => DbError::Unexpected(format!("{message}\n{note}")),
        lost @ DbError::LeaseLost(_) => lost,
    }
}

fn sqlstate(error: &DbError) -> Option<&str> {
    match error {
        DbError::Sql { code, .. } => code.as_deref(),
        _ => None,
    }
}

fn session_lines(sessions: &[WaitingFor]) -> String {
    sessions
        .iter()
        .map(|s| format!("\n  waiting for {s}"))
        .collect()
}

/// The error the statement ended with, told the way phased stopped it.
fn explain(error: DbError, watcher: &Watcher, st: &Statement<'_>) -> DbError {
    let command = st.kind.command();
    let cancelled = watcher.cancelled.as_ref().map(|(c, _)| c);
    let code = sqlstate(&error).map(str::to_string);
    let canceled_by_us = code.as_deref() == Some("57014") && cancelled.is_some();
    let sql = st.sql.to_string();
    let wait_limit = human_duration(st.timeouts.index_wait);
    match cancelled {
        Some(Cancel::LockTimeout {
            relation,
            mode,
            waited,
        }) if canceled_by_us => DbError::Sql {
            message: format!(
                "canceling statement due to lock timeout: {command} was queued {} for {mode} on {relation}, longer than lock_timeout ({}); phased cancelled it from a second session (SQLSTATE 55P03)",
                human_duration(*waited),
                human_duration(st.timeouts.lock_timeout)
            ),
            code: Some("55P03".to_string()),
            sql,
            retryable: true,
        },
        Some(Cancel::WaitTimeout { waited, sessions }) if canceled_by_us => DbError::Sql {
            message: format!(
                "{command} gave up after waiting {} for older transactions to finish (index_wait_timeout: {wait_limit}). \
                 These waits block no application query — the statement holds only SHARE UPDATE EXCLUSIVE on its table — \
                 but they last as long as those transactions do.{}\n\
                 End those transactions (or wait for a quieter moment), or raise index_wait_timeout, then run again.",
                human_duration(*waited),
                session_lines(sessions)
            ),
            code: Some("57014".to_string()),
            sql,
            retryable: false,
        },
        // The session's own lock_timeout is only a backstop past index_wait_timeout: a wait for
        // older transactions that reached it is not a lock conflict worth retrying.
        _ if code.as_deref() == Some("55P03") && watcher.last_wait_was_for_transactions => {
            let sessions = watcher
                .last
                .as_ref()
                .map(|p| session_lines(&p.waiting_for))
                .unwrap_or_default();
            DbError::Sql {
                message: format!(
                    "{command} gave up waiting for older transactions to finish (its session lock_timeout, a backstop past index_wait_timeout: {wait_limit}, was reached){sessions}"
                ),
                code,
                sql,
                retryable: false,
            }
        }
        _ => error,
    }
}

impl PgTarget {
    /// The server's version number (`150004`), looked up once; None when offline.
    async fn server_version(&mut self) -> Result<Option<i32>, DbError> {
        if let Some(v) = self.server_version {
            return Ok(v);
        }
        let sql = "SELECT current_setting('server_version_num')::int";
        let v = self.work.query_opt(sql, &[]).await?.map(|r| r.get(0));
        self.server_version = Some(v);
        Ok(v)
    }

    /// The step connection's backend pid, looked up once.
    pub(super) async fn work_pid(&mut self) -> Result<i32, DbError> {
        if let Some(pid) = self.work_pid {
            return Ok(pid);
        }
        let sql = "SELECT pg_backend_pid()";
        let pid: i32 = self
            .work
            .query_opt(sql, &[])
            .await?
            .map(|r| r.get(0))
            .ok_or_else(|| DbError::Unexpected(format!("`{sql}` returned no row")))?;
        self.work_pid = Some(pid);
        Ok(pid)
    }

    /// A session to watch a statement from, announced as `phased/<plan>/watch`.
    pub(super) async fn watching_session(&self) -> Result<Object, String> {
        let pool = self
            .watchers
            .as_ref()
            .ok_or_else(|| "no database connection".to_string())?;
        match tokio::time::timeout(WATCHER_CONNECT, pool.get()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(super::pool_error_message(e)),
            Err(_) => Err(format!(
                "no connection within {}",
                human_duration(WATCHER_CONNECT)
            )),
        }
    }

    /// The settings a concurrent statement runs under, and their reset: the session
    /// lock_timeout is a backstop past index_wait_timeout (the watcher bounds the table lock by
    /// the plan's lock_timeout), and on PostgreSQL 14+ the backend checks that phased is still
    /// connected, so a build whose runner died stops instead of waiting on.
    async fn concurrent_settings(
        &mut self,
        timeouts: Timeouts,
    ) -> Result<(String, String), DbError> {
        let check_client = self.server_version().await?.is_none_or(|v| v >= 140_000);
        let backstop = if timeouts.index_wait.is_zero() {
            Duration::ZERO
        } else {
            (timeouts.index_wait + BACKSTOP_MARGIN).max(timeouts.lock_timeout)
        };
        let mut set = format!(
            "SET lock_timeout = '{}'; SET statement_timeout = '{}'",
            pg_millis(backstop),
            pg_millis(timeouts.statement_timeout)
        );
        let mut reset = "RESET lock_timeout; RESET statement_timeout".to_string();
        if check_client {
            set.push_str("; SET client_connection_check_interval = '1000ms'");
            reset.push_str("; RESET client_connection_check_interval");
        }
        Ok((set, reset))
    }

    /// Runs a concurrent statement on the step connection, watched from a second session (see
    /// the module's documentation).
    pub(super) async fn run_concurrent(
        &mut self,
        st: Statement<'_>,
        progress: &mut dyn FnMut(&IndexProgress),
    ) -> Ran {
        let (set, reset) = match self.concurrent_settings(st.timeouts).await {
            Ok(s) => s,
            Err(e) => {
                return Ran {
                    result: Err(e),
                    index: None,
                }
            }
        };
        if let Some(recorder) = self.work.recorder() {
            recorder.note(format!(
                "`phased run` watches this {} from a second session: queued for a lock on its table longer than lock_timeout ({}), it is cancelled and retried; waiting for older transactions to finish (they block no application query), it waits up to index_wait_timeout ({}) and names them; the session lock_timeout below is only a backstop for when the watching session is gone",
                st.kind.command(),
                human_duration(st.timeouts.lock_timeout),
                if st.timeouts.index_wait.is_zero() {
                    "no limit".to_string()
                } else {
                    human_duration(st.timeouts.index_wait)
                }
            ));
            let result = self.send_with(&set, st.sql, &reset).await;
            return Ran {
                result,
                index: None,
            };
        }
        let watching = match self.watching_session().await {
            Ok(conn) => conn,
            Err(why) => {
                tracing::warn!(
                    "cannot open a second session to watch the {} ({why}); it runs under lock_timeout as a whole, as a plain statement would",
                    st.kind.command()
                );
                return Ran {
                    result: self.run_plain(st.sql, st.timeouts).await,
                    index: None,
                };
            }
        };
        let pid = match self.work_pid().await {
            Ok(pid) => pid,
            Err(e) => {
                return Ran {
                    result: Err(e),
                    index: None,
                }
            }
        };
        let version = self.server_version.flatten();
        if let Err(e) = self.work.batch_execute(&set).await {
            return Ran {
                result: Err(e),
                index: None,
            };
        }
        let work = &self.work;
        let (finished, done) = oneshot::channel();
        let build = async {
            let result = work.simple_query(st.sql).await;
            let _ = finished.send(());
            result
        };
        let (result, watcher) =
            tokio::join!(build, watch(&watching, pid, version, &st, done, progress));
        let reset_result = self.work.batch_execute(&reset).await;
        let result = match result {
            Ok(()) => reset_result,
            Err(e) => Err(explain(e, &watcher, &st)),
        };
        if let Some(key) = st.step {
            // Done: nothing to show any more. Failed: where it stopped stays for `status`.
            let last = match (&result, &watcher.last) {
                (Ok(()), _) | (_, None) => None,
                (Err(_), Some(p)) => serde_json::to_string(p).ok(),
            };
            if let Err(e) = state::set_progress(&watching, key, last.as_deref()).await {
                tracing::debug!(error = %e, "cannot record the build's progress");
            }
        }
        Ran {
            result,
            index: watcher.index.clone(),
        }
    }

    /// Sends the settings, the statement and the reset (the reset even when the statement
    /// failed: a pooled connection keeps its `SET`s).
    async fn send_with(&mut self, set: &str, sql: &str, reset: &str) -> Result<(), DbError> {
        self.work.batch_execute(set).await?;
        let result = self.work.simple_query(sql).await;
        let reset_result = self.work.batch_execute(reset).await;
        result?;
        reset_result
    }

    /// After a failed build: an INVALID index it left is dropped (concurrently, watched, within
    /// a short wait for older transactions), and the error says what became of it.
    pub(super) async fn clean_up_failed_build(
        &mut self,
        index: &str,
        error: DbError,
        timeouts: Timeouts,
        progress: &mut dyn FnMut(&IndexProgress),
    ) -> DbError {
        if self.work.recorder().is_some() {
            return error;
        }
        let valid = match self.index_validity(index).await {
            Ok(v) => v,
            Err(e) => {
                return with_note(
                    error,
                    &format!("phased could not check for an INVALID index {index} left by the failed build ({e}); the next run checks again and drops it before building"),
                )
            }
        };
        match valid {
            None => error,
            Some(true) => with_note(
                error,
                &format!("the index {index} was completed nonetheless: the next run finds it valid and counts the step done"),
            ),
            Some(false) => {
                tracing::warn!(
                    index,
                    "the failed build left an INVALID index; dropping it concurrently"
                );
                let drop = format!("DROP INDEX CONCURRENTLY IF EXISTS {index}");
                let allowance = if timeouts.index_wait.is_zero() {
                    CLEANUP_WAIT
                } else {
                    timeouts.index_wait.min(CLEANUP_WAIT)
                };
                let ran = self
                    .run_concurrent(
                        Statement {
                            sql: &drop,
                            kind: ConcurrentStatement::DropIndex,
                            timeouts: Timeouts {
                                index_wait: allowance,
                                ..timeouts
                            },
                            // The step's state keeps where the build stopped, for `status`.
                            step: None,
                        },
                        progress,
                    )
                    .await;
                match ran.result {
                    Ok(()) => with_note(
                        error,
                        &format!("phased dropped the INVALID index {index} the failed build left ({drop}): nothing is left half-built"),
                    ),
                    Err(e) => with_note(
                        error,
                        &format!(
                            "the failed build left the INVALID index {index}, and dropping it failed too ({}); the next run drops it before building again (or drop it by hand: {drop};)",
                            e.to_string().lines().next().unwrap_or("")
                        ),
                    ),
                }
            }
        }
    }

    /// Is the index valid (None: there is no such index)? `index` is quoted as SQL writes it.
    pub(super) async fn index_validity(&mut self, index: &str) -> Result<Option<bool>, DbError> {
        let lookup = "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass($1)";
        Ok(self
            .work
            .query_opt(lookup, &[&index])
            .await?
            .map(|row| row.get(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeouts(lock_ms: u64, wait_ms: u64) -> Timeouts {
        Timeouts {
            lock_timeout: Duration::from_millis(lock_ms),
            statement_timeout: Duration::ZERO,
            index_wait: Duration::from_millis(wait_ms),
        }
    }

    fn session(pid: i32) -> WaitingFor {
        WaitingFor {
            pid,
            application_name: "report".into(),
            state: "idle in transaction".into(),
            seconds: 30.0,
            query: "SELECT count(*) FROM other".into(),
        }
    }

    fn waiting(locktype: &str, secs: f64) -> Snapshot {
        Snapshot {
            running: true,
            waiting: Some(LockWait {
                locktype: locktype.into(),
                mode: "ShareUpdateExclusiveLock".into(),
                relation: (locktype == "relation").then(|| "big".into()),
                waited: Some(Duration::from_secs_f64(secs)),
            }),
            progress: None,
            blocking: vec![session(42)],
        }
    }

    #[test]
    fn a_queue_for_the_table_lock_is_cancelled_after_lock_timeout() {
        let t0 = Instant::now();
        let mut w = Watcher::new(ConcurrentStatement::CreateIndex, timeouts(2000, 60_000), t0);
        let d = w.observe(&waiting("relation", 1.0), t0);
        assert_eq!(d.cancel, None);
        let p = d.report.expect("a first report");
        assert_eq!(
            p.phase,
            "waiting for a lock on big (ShareUpdateExclusiveLock)"
        );
        assert_eq!(
            p.waited_ms, 0,
            "a table lock is not a wait for older transactions"
        );
        let d = w.observe(&waiting("relation", 2.1), t0 + Duration::from_millis(1100));
        assert_eq!(
            d.cancel,
            Some(Cancel::LockTimeout {
                relation: "big".into(),
                mode: "ShareUpdateExclusiveLock".into(),
                waited: Duration::from_secs_f64(2.1),
            })
        );
    }

    #[test]
    fn waits_for_older_transactions_outlast_lock_timeout_up_to_index_wait_timeout() {
        let t0 = Instant::now();
        let mut w = Watcher::new(ConcurrentStatement::CreateIndex, timeouts(2000, 10_000), t0);
        let mut snap = waiting("virtualxid", 0.5);
        snap.progress = Some(PgProgress {
            phase: "waiting for old snapshots".into(),
            blocks: (5405, 5406),
            lockers: (0, 1),
            index: Some("big_v_idx".into()),
            ..PgProgress::default()
        });
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let d = w.observe(&snap, at(500));
        let p = d.report.expect("reported");
        assert_eq!(p.phase, "waiting for old snapshots");
        assert_eq!(
            (p.done, p.total, p.unit.as_deref()),
            (Some(0), Some(1), Some("transactions"))
        );
        assert_eq!(p.waiting_for, vec![session(42)]);
        assert_eq!(p.index.as_deref(), Some("big_v_idx"));
        snap.waiting = waiting("virtualxid", 5.0).waiting;
        assert_eq!(w.observe(&snap, at(5000)).cancel, None, "past lock_timeout");
        // Working again for a while does not count.
        let working = Snapshot {
            running: true,
            ..Snapshot::default()
        };
        assert_eq!(w.observe(&working, at(20_000)).cancel, None);
        snap.waiting = waiting("virtualxid", 0.1).waiting;
        assert_eq!(w.observe(&snap, at(21_000)).cancel, None);
        let d = w.observe(&snap, at(26_100));
        match d.cancel {
            Some(Cancel::WaitTimeout { waited, sessions }) => {
                assert!(waited >= Duration::from_secs(10), "{waited:?}");
                assert_eq!(sessions, vec![session(42)]);
            }
            other => panic!("expected the wait timeout, got {other:?}"),
        }
    }

    #[test]
    fn phases_count_what_postgresql_counts_and_changes_are_reported_at_once() {
        let t0 = Instant::now();
        let mut w = Watcher::new(ConcurrentStatement::CreateIndex, timeouts(2000, 0), t0);
        let mut snap = Snapshot {
            running: true,
            progress: Some(PgProgress {
                phase: "building index: scanning table".into(),
                blocks: (100, 1000),
                ..PgProgress::default()
            }),
            ..Snapshot::default()
        };
        let d = w.observe(&snap, t0);
        let p = d.report.expect("first report");
        assert_eq!(p.unit.as_deref(), Some("blocks"));
        assert_eq!(p.wait_limit_ms, None, "0 = no limit");
        assert!(d.record);
        // Only the count moved, within a second: no event, no write.
        if let Some(p) = snap.progress.as_mut() {
            p.blocks = (200, 1000);
        }
        let d = w.observe(&snap, t0 + Duration::from_millis(300));
        assert_eq!((d.report.is_some(), d.record), (false, false));
        // A new phase: at once.
        if let Some(p) = snap.progress.as_mut() {
            p.phase = "building index: sorting live tuples".into();
        }
        let d = w.observe(&snap, t0 + Duration::from_millis(400));
        let p = d.report.expect("a new phase is reported at once");
        assert_eq!((p.done, p.unit), (None, None), "sorting has no count");
        // Not running (finished, or not started yet): nothing.
        assert_eq!(
            w.observe(&Snapshot::default(), t0 + Duration::from_secs(5)),
            Decision::default()
        );
    }
}
