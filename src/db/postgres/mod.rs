//! PostgreSQL target: state in schema `phased`, DDL under `SET LOCAL lock_timeout`, indexes
//! built `CONCURRENTLY` outside transactions, the runner lease as a session advisory lock.

mod backfill;
pub mod backup;
mod blockers;
mod column_dependents;
pub mod conn;
mod conversion_check;
mod facts;
mod index_build;
mod lease;
mod probe;
mod remember;
mod snapshot;
mod state;
pub mod tls;
mod versions;

pub use lease::key as lease_key;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio_postgres::error::SqlState;

use crate::db::index_build::ConcurrentStatement;
use crate::db::recorder::Recorder;
use crate::db::IndexProgress;
use conn::Conn;
use index_build::Statement;

use super::backup::{BackupError, BackupRecord, RestoreNote};
use super::url::redact;
use super::{Backups, Catalog, Executor, Lease, MigrationRun, StateStore, VersionState};
use super::{
    BatchOutcome, BatchRequest, DbError, FlagRecord, LeaseHolder, StepKey, StepRecord, StepStart,
    StepStatus, Timeouts,
};
use super::{Dialect, Unit};
use crate::migrations::statements;

/// A connection pool to one PostgreSQL database, plus the connection that holds the lease.
pub struct PgTarget {
    /// None when offline (`phased plan --offline`): nothing to connect to.
    pool: Option<Pool>,
    /// The connection that runs step work and state writes (kept for the whole run); in a dry
    /// run it records them instead.
    work: Conn,
    /// The connections holding advisory-lock leases, by key (a plan's, and `db:<dir>` while a
    /// `migrations` step runs inside it), with their backend pids (not blockers: they only
    /// hold advisory locks).
    leases: std::collections::HashMap<String, HeldLease>,
    /// Why a lease this target held was lost, once its heartbeat saw it (shared with the
    /// heartbeat tasks).
    lease_lost: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    url: String,
    key_types: std::collections::HashMap<String, Vec<String>>,
    /// In a dry run, the versions as the recorded migrations would leave them.
    dry_versions: Option<VersionState>,
    /// Sessions that watch a concurrent index build while the step connection runs it,
    /// announced as `phased/<plan>/watch` (none offline).
    watchers: Option<Pool>,
    /// The step connection's backend pid (to cancel its statement on an interrupt, and for
    /// the session that watches a concurrent index build).
    work_pid: Option<i32>,
    /// The same pid, shared with the [`Canceller`](crate::db::cancel::Canceller) handed out
    /// before the run (0: unknown), so a step connection opened again is the one cancelled.
    shared_pid: std::sync::Arc<std::sync::atomic::AtomicI32>,
    /// The server's `server_version_num`, once looked up (None inside: offline).
    server_version: Option<Option<i32>>,
}

/// An advisory-lock lease this target holds.
struct HeldLease {
    /// The session holding the lock (shared with its heartbeat).
    conn: std::sync::Arc<Object>,
    /// Its backend pid (not a blocker: it only holds advisory locks).
    pid: i32,
    /// The lease's generation as this runner took it: the fence each unit checks.
    generation: i64,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl Drop for HeldLease {
    /// A target dropped without releasing its lease (an error path, a library caller) must not
    /// leave the heartbeat keeping the lock session, and with it the lease, alive.
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

/// How often the session holding a lease is asked whether it is still there, and how long it
/// may take to answer: a lost lock session is seen within about a second (and a heartbeat
/// keeps the session from counting as idle for `idle_session_timeout`).
const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);
const HEARTBEAT_PATIENCE: Duration = Duration::from_millis(1000);

/// Renders `Duration` as a PostgreSQL interval string in milliseconds.
pub(crate) fn pg_millis(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// Maps a driver error to a [`DbError`], keeping the statement and classifying retries.
pub(crate) fn sql_error(err: tokio_postgres::Error, sql: &str) -> DbError {
    let code = err.code().cloned();
    // A connection that is gone (`connection closed`: no SQLSTATE) is a connection failure.
    let code_text = code
        .as_ref()
        .map(|c| c.code().to_string())
        .or_else(|| err.is_closed().then(|| "08006".to_string()));
    let lost = code_text
        .as_deref()
        .is_some_and(|c| c.starts_with("08") || c == "57P01" || c == "57P02");
    let retryable = lost
        || matches!(
            code,
            Some(SqlState::LOCK_NOT_AVAILABLE)
                | Some(SqlState::T_R_DEADLOCK_DETECTED)
                | Some(SqlState::T_R_SERIALIZATION_FAILURE)
        );
    let message = match err.as_db_error() {
        Some(db) => {
            let mut m = format!(
                "{}: {} (SQLSTATE {})",
                db.severity(),
                db.message(),
                db.code().code()
            );
            if let Some(detail) = db.detail() {
                m.push_str(&format!("\nDETAIL: {detail}"));
            }
            if let Some(hint) = db.hint() {
                m.push_str(&format!("\nHINT: {hint}"));
            }
            m
        }
        None => err.to_string(),
    };
    DbError::Sql {
        message,
        code: code_text,
        sql: sql.to_string(),
        retryable,
    }
}

impl PgTarget {
    /// Connects to `url`; every connection announces itself as `phased/<plan>`.
    pub async fn connect(url: &str, application: &str) -> Result<Self, DbError> {
        let connect_error = |message: String| DbError::Connect {
            target: redact(url),
            message,
        };
        let (mut config, tls) =
            tls::parse(url).map_err(|e| connect_error(format!("invalid URL: {e}")))?;
        let tls = tls.connector().map_err(connect_error)?;
        config.connect_timeout(Duration::from_secs(10));
        let mut watch_config = config.clone();
        watch_config.application_name(format!("{application}/watch"));
        config.application_name(application);
        let watch_manager = Manager::from_config(
            watch_config,
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        // Connections are opened when first needed: a run without concurrent index builds
        // never opens one.
        let watchers = Pool::builder(watch_manager)
            .max_size(2)
            .build()
            .map_err(|e| connect_error(e.to_string()))?;
        let pool = Pool::builder(manager)
            .max_size(4)
            .build()
            .map_err(|e| connect_error(e.to_string()))?;
        let work = pool
            .get()
            .await
            .map_err(|e| connect_error(pool_error_message(e)))?;
        let work_pid = work
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .ok()
            .map(|row| row.get(0));
        Ok(Self {
            pool: Some(pool),
            shared_pid: std::sync::Arc::new(std::sync::atomic::AtomicI32::new(
                work_pid.unwrap_or(0),
            )),
            work_pid,
            work: Conn::live(work),
            leases: Default::default(),
            lease_lost: Default::default(),
            url: url.to_string(),
            key_types: Default::default(),
            dry_versions: None,
            watchers: Some(watchers),
            server_version: None,
        })
    }

    /// A dry run's target: the connection records what it would write (look-ups still go to
    /// the database when there is one, `target: None` is offline).
    pub fn recording(target: Option<Self>, recorder: Recorder) -> Self {
        match target {
            Some(t) => Self {
                work: Conn::recording(t.work.into_client(), recorder),
                ..t
            },
            None => Self {
                pool: None,
                work: Conn::recording(None, recorder),
                leases: Default::default(),
                lease_lost: Default::default(),
                url: "postgres://(offline)".to_string(),
                key_types: Default::default(),
                dry_versions: None,
                watchers: None,
                work_pid: None,
                shared_pid: Default::default(),
                server_version: None,
            },
        }
    }

    /// Another connection from the pool (for a second session's work).
    pub(crate) async fn connection(&self) -> Result<Object, DbError> {
        let pool = self.pool.as_ref().ok_or_else(|| {
            DbError::Unexpected("no database connection (offline dry run)".to_string())
        })?;
        pool.get().await.map_err(|e| DbError::Connect {
            target: redact(&self.url),
            message: pool_error_message(e),
        })
    }

    /// Opens a new step connection when the old one is gone (terminated, dropped): whatever it
    /// was running rolled back with it, so the engine's next attempt starts from the recorded
    /// state (a backfill's checkpoint, an INVALID index to drop). Never in a dry run.
    async fn revive(&mut self) -> Result<(), DbError> {
        if self.work.recorder().is_some() || !self.work.is_closed() {
            return Ok(());
        }
        let client = self.connection().await?;
        // Looked up directly on the new session, like at connect: not a step statement.
        let pid: Option<i32> = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .ok()
            .map(|row| row.get(0));
        tracing::warn!(
            pid,
            "the step connection was lost; carrying on on a new one"
        );
        self.work = Conn::live(client);
        self.work_pid = pid;
        self.shared_pid
            .store(pid.unwrap_or(0), std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// The fence a state write of `plan` checks: the generation of the plan's lease this target
    /// holds (None without one: a dry run, a command that takes no lease).
    fn fence(&self, plan: &str) -> Option<(String, i64)> {
        self.leases
            .get(plan)
            .map(|held| (plan.to_string(), held.generation))
    }

    /// Checks the fence outside a transaction (a write that has none of its own), and first
    /// whether the heartbeat already saw the lease go.
    async fn check_fence_now(&self, plan: &str) -> Result<(), DbError> {
        if let Some(why) = self.lost_reason() {
            return Err(DbError::LeaseLost(why));
        }
        match self.fence(plan) {
            Some(fence) => lease::check_fence(self.work.client()?, Some(&fence)).await,
            None => Ok(()),
        }
    }

    /// A bookkeeping write that records work (an attempt starting or failing, a status, a
    /// checkpoint, a script's progress): with `plan`'s lease held, it is sent in a transaction
    /// that first proves the lease's generation, locked `FOR SHARE` until the commit, so no
    /// runner can take the lease over between the proof and the write. Without a lease (a dry
    /// run, a command that takes none) the write is sent as it is.
    async fn fenced<T>(
        &self,
        plan: &str,
        write: impl AsyncFnOnce(&Conn) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        if let Some(why) = self.lost_reason() {
            return Err(DbError::LeaseLost(why));
        }
        let Some(fence) = self.fence(plan) else {
            return write(&self.work).await;
        };
        let work = &self.work;
        work.in_transaction(async {
            lease::check_fence(work.client()?, Some(&fence)).await?;
            write(work).await
        })
        .await
    }

    /// Every lease this target holds, as fences: a versioned migration's record proves them
    /// all, since the version tables belong to no one plan.
    fn all_fences(&self) -> Vec<(String, i64)> {
        let mut fences: Vec<(String, i64)> = self
            .leases
            .iter()
            .map(|(plan, held)| (plan.clone(), held.generation))
            .collect();
        fences.sort();
        fences
    }

    fn lost_reason(&self) -> Option<String> {
        self.lease_lost.lock().ok().and_then(|l| l.clone())
    }

    /// The connection step work runs on.
    pub fn client(&self) -> Result<&tokio_postgres::Client, DbError> {
        Ok(self.work.client()?)
    }

    /// One transaction: `SET LOCAL` timeouts, the statements, and — when given — the step's new
    /// status, committed together.
    async fn run_transaction(
        &mut self,
        statements: &[String],
        timeouts: Timeouts,
        done: Option<(&StepKey, StepStatus)>,
        fence: Option<(String, i64)>,
    ) -> Result<(), DbError> {
        self.run_transaction_remembering(statements, timeouts, done, fence, None, None)
            .await
    }

    /// [`Self::run_transaction`], first recording what the statements change in the step's
    /// checkpoint when `remember` says so (`Unit::Remember`), in the same transaction; and,
    /// after them, writing `checkpoint` as the step's checkpoint (`Unit::Checkpoint`).
    async fn run_transaction_remembering(
        &mut self,
        statements: &[String],
        timeouts: Timeouts,
        done: Option<(&StepKey, StepStatus)>,
        fence: Option<(String, i64)>,
        remember: Option<(&StepKey, &crate::ops::Remembered)>,
        checkpoint: Option<(&StepKey, &str)>,
    ) -> Result<(), DbError> {
        if let Some(why) = self.lost_reason() {
            return Err(DbError::LeaseLost(why));
        }
        let work = &self.work;
        work.in_transaction(async {
            if fence.is_some() {
                lease::check_fence(work.client()?, fence.as_ref()).await?;
            }
            work.batch_execute(&set_local(timeouts)).await?;
            if let Some((key, what)) = remember {
                remember::record(work, key, what).await?;
            }
            for sql in statements {
                work.batch_execute(sql).await?;
            }
            if let Some((key, checkpoint)) = checkpoint {
                state::set_checkpoint(work, key, Some(checkpoint)).await?;
            }
            if let Some((key, status)) = done {
                state::mark(work, key, status).await?;
            }
            Ok(())
        })
        .await
    }

    /// Runs units in order; the last one, when transactional, records `status` in its
    /// transaction, otherwise it is recorded right after.
    async fn apply_units(
        &mut self,
        key: &StepKey,
        units: &[Unit],
        timeouts: Timeouts,
        status: StepStatus,
        progress: &mut dyn FnMut(&IndexProgress),
    ) -> Result<(), DbError> {
        let last_tx = units
            .iter()
            .rposition(|u| match u {
                Unit::Remember { then, .. } | Unit::Checkpoint { then, .. } => {
                    matches!(**then, Unit::Transaction(_))
                }
                other => matches!(other, Unit::Transaction(_) | Unit::DropColumn { .. }),
            })
            .filter(|&i| i + 1 == units.len());
        for (i, unit) in units.iter().enumerate() {
            let done = (Some(i) == last_tx).then_some((key, status));
            match unit {
                Unit::Transaction(stmts) => {
                    let fence = self.fence(&key.plan);
                    self.run_transaction(stmts, timeouts, done, fence).await?
                }
                Unit::DropColumn {
                    table,
                    column,
                    drop,
                } => {
                    let stmts =
                        column_dependents::drop_statements(&self.work, table, column, drop).await?;
                    let fence = self.fence(&key.plan);
                    self.run_transaction(&stmts, timeouts, done, fence).await?
                }
                // A statement outside a transaction (`CONCURRENTLY`) cannot prove the fence in
                // its own: it is checked right before, the heartbeat cancels the statement if
                // the lock session goes meanwhile, and the step's status after it is fenced.
                Unit::Standalone(sql) => {
                    self.check_fence_now(&key.plan).await?;
                    self.run_standalone(sql, timeouts, Some(key), progress)
                        .await?
                }
                Unit::Script(sql) => self.run_script(key, sql, timeouts, progress).await?,
                Unit::ConcurrentIndex { name, create } => {
                    self.check_fence_now(&key.plan).await?;
                    self.concurrent_index(key, name, create, timeouts, progress)
                        .await?
                }
                Unit::RebuildTable { .. } | Unit::RenameIndex { .. } => {
                    return Err(DbError::Unexpected(format!(
                        "SQLite only: {}",
                        unit.sql_text()
                    )))
                }
                Unit::Checkpoint { checkpoint, then } => match &**then {
                    // Written in the change's own transaction: both commit, or neither.
                    Unit::Transaction(stmts) => {
                        let fence = self.fence(&key.plan);
                        self.run_transaction_remembering(
                            stmts,
                            timeouts,
                            done,
                            fence,
                            None,
                            Some((key, checkpoint.as_str())),
                        )
                        .await?
                    }
                    other => {
                        return Err(DbError::Unexpected(format!(
                            "cannot record a checkpoint with {}",
                            other.sql_text()
                        )))
                    }
                },
                Unit::Remember { what, then } => match &**then {
                    // Recorded in the change's own transaction: both commit, or neither.
                    Unit::Transaction(stmts) => {
                        let fence = self.fence(&key.plan);
                        self.run_transaction_remembering(
                            stmts,
                            timeouts,
                            done,
                            fence,
                            Some((key, what)),
                            None,
                        )
                        .await?
                    }
                    // A `CONCURRENTLY` drop cannot share a transaction: recorded first (a
                    // rerun after the drop finds nothing and keeps this record).
                    Unit::Standalone(sql) => {
                        self.check_fence_now(&key.plan).await?;
                        remember::record(&self.work, key, what).await?;
                        self.run_standalone(sql, timeouts, Some(key), progress)
                            .await?
                    }
                    other => {
                        return Err(DbError::Unexpected(format!(
                            "cannot record before {}",
                            other.sql_text()
                        )))
                    }
                },
            }
        }
        if last_tx.is_none() {
            self.fenced(&key.plan, async |work| state::mark(work, key, status).await)
                .await?;
        }
        Ok(())
    }

    /// A script that must not run in a transaction (`transactional: false`): each statement is
    /// sent on its own (a multi-statement string would be one implicit transaction, which
    /// `CREATE INDEX CONCURRENTLY` refuses), and the count of statements done is recorded after
    /// each, so a retry or a rerun resumes after the last one that completed.
    async fn run_script(
        &mut self,
        key: &StepKey,
        script: &str,
        timeouts: Timeouts,
        progress: &mut dyn FnMut(&IndexProgress),
    ) -> Result<(), DbError> {
        let statements = statements::split(script);
        let done = state::script_progress(&self.work, key).await?;
        if done > 0 {
            tracing::info!(
                statements_done = done,
                "resuming the script after its last completed statement"
            );
        }
        for (i, statement) in statements.iter().enumerate().skip(done) {
            self.check_fence_now(&key.plan).await?;
            self.run_standalone(statement, timeouts, Some(key), progress)
                .await?;
            self.fenced(&key.plan, async |work| {
                state::set_script_progress(work, key, i + 1).await
            })
            .await?;
        }
        Ok(())
    }

    /// Runs one statement outside a transaction. One that waits for older transactions
    /// (`… CONCURRENTLY`) is watched from a second session (`index_build`), and an INVALID
    /// index a failed build leaves is dropped; any other runs under session-level timeouts.
    async fn run_standalone(
        &mut self,
        sql: &str,
        timeouts: Timeouts,
        step: Option<&StepKey>,
        progress: &mut dyn FnMut(&IndexProgress),
    ) -> Result<(), DbError> {
        let Some(kind) = ConcurrentStatement::of(sql) else {
            return self.run_plain(sql, timeouts).await;
        };
        let ran = self
            .run_concurrent(
                Statement {
                    sql,
                    kind,
                    timeouts,
                    step,
                },
                progress,
            )
            .await;
        let error = match ran.result {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        // A name that exists already is someone else's index (or a build in progress):
        // never ours to drop.
        let duplicate = matches!(&error, DbError::Sql { code: Some(c), .. } if c == "42P07");
        match (kind, ran.index) {
            (ConcurrentStatement::CreateIndex, Some(index)) if !duplicate => Err(self
                .clean_up_failed_build(&index, error, timeouts, progress)
                .await),
            (ConcurrentStatement::DropIndex, _) => Err(index_build::with_note(
                error,
                "a DROP INDEX CONCURRENTLY that stops half-way can leave the index INVALID (no query uses it); running the step again finishes the drop",
            )),
            _ => Err(error),
        }
    }

    /// Runs SQL outside a transaction with session-level timeouts, then resets them, since a
    /// pooled connection keeps its `SET`s.
    async fn run_plain(&mut self, sql: &str, timeouts: Timeouts) -> Result<(), DbError> {
        let set = format!(
            "SET lock_timeout = '{}'; SET statement_timeout = '{}'",
            pg_millis(timeouts.lock_timeout),
            pg_millis(timeouts.statement_timeout)
        );
        self.work.batch_execute(&set).await?;
        let result = self.work.simple_query(sql).await;
        let reset_result = self
            .work
            .batch_execute("RESET lock_timeout; RESET statement_timeout")
            .await;
        result?;
        reset_result
    }

    /// The SQL types of a backfill's key columns, looked up once per table and key.
    async fn key_types_of(&mut self, batch: &BatchRequest<'_>) -> Result<Vec<String>, DbError> {
        let cache_key = format!("{}\u{0}{}", batch.table, batch.key_columns.join("\u{0}"));
        if let Some(t) = self.key_types.get(&cache_key) {
            return Ok(t.clone());
        }
        let t = match backfill::key_types(&self.work, batch.table, batch.key_columns).await {
            Ok(t) => t,
            // A dry run of a plan that creates the table: the plan's declared types.
            Err(_) if self.work.recorder().is_some() && !batch.key_types_hint.is_empty() => {
                batch.key_types_hint.to_vec()
            }
            Err(e) => return Err(e),
        };
        self.key_types.insert(cache_key, t.clone());
        Ok(t)
    }

    /// Builds an index concurrently, watched (`index_build`): an INVALID leftover of an
    /// earlier failed build is dropped first, and one this build leaves when it fails (a
    /// timeout, an error, a cancel) is dropped before the error is returned.
    async fn concurrent_index(
        &mut self,
        key: &StepKey,
        name: &str,
        create: &str,
        timeouts: Timeouts,
        progress: &mut dyn FnMut(&IndexProgress),
    ) -> Result<(), DbError> {
        // `name` comes quoted and schema-qualified like its table (`Unit::ConcurrentIndex`).
        let quoted = name.to_string();
        match self.index_validity(&quoted).await? {
            Some(true) => {
                tracing::info!(index = name, "index already exists and is valid");
                return Ok(());
            }
            Some(false) => {
                tracing::warn!(
                    index = name,
                    "found an INVALID index left by an earlier failed build; dropping it concurrently"
                );
                let drop = format!("DROP INDEX CONCURRENTLY IF EXISTS {quoted}");
                self.run_standalone(&drop, timeouts, Some(key), progress)
                    .await?;
            }
            None => {}
        }
        let ran = self
            .run_concurrent(
                Statement {
                    sql: create,
                    kind: ConcurrentStatement::CreateIndex,
                    timeouts,
                    step: Some(key),
                },
                progress,
            )
            .await;
        match ran.result {
            Ok(()) => Ok(()),
            Err(error) => Err(self
                .clean_up_failed_build(&quoted, error, timeouts, progress)
                .await),
        }
    }
}

/// Asks the session holding a lease, every [`HEARTBEAT_EVERY`], whether it is still there. When
/// it is not (terminated, `idle_session_timeout`, a dropped network), the lease is gone — another
/// runner may hold it already — so the reason is noted for the run to stop with, and the
/// statement running on the step connection is cancelled (its transaction rolls back; the fence
/// would refuse its commit anyway).
async fn heartbeat(
    conn: std::sync::Arc<Object>,
    plan: String,
    lost: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    canceller: Option<crate::db::cancel::Canceller>,
) {
    loop {
        tokio::time::sleep(HEARTBEAT_EVERY).await;
        let reason =
            match tokio::time::timeout(HEARTBEAT_PATIENCE, conn.simple_query("SELECT 1")).await {
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => format!("the session holding plan `{plan}`'s lock ended ({e})"),
                Err(_) => format!(
                    "the session holding plan `{plan}`'s lock did not answer within {}ms",
                    HEARTBEAT_PATIENCE.as_millis()
                ),
            };
        tracing::error!(plan = %plan, reason = %reason, "the lease was lost; stopping");
        if let Ok(mut slot) = lost.lock() {
            slot.get_or_insert(reason);
        }
        if let Some(canceller) = &canceller {
            canceller.cancel().await;
        }
        return;
    }
}

fn pool_error_message(err: deadpool_postgres::PoolError) -> String {
    match err {
        deadpool_postgres::PoolError::Backend(e) => match e.as_db_error() {
            Some(db) => db.message().to_string(),
            None => {
                let mut text = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    text = format!("{text}: {s}");
                    source = s.source();
                }
                text
            }
        },
        other => other.to_string(),
    }
}

/// `SET LOCAL` for a transaction's timeouts (holds behind PgBouncer in transaction mode).
pub(crate) fn set_local(timeouts: Timeouts) -> String {
    format!(
        "SET LOCAL lock_timeout = '{}'; SET LOCAL statement_timeout = '{}'",
        pg_millis(timeouts.lock_timeout),
        pg_millis(timeouts.statement_timeout)
    )
}

impl StateStore for PgTarget {
    async fn ensure_state(&mut self) -> Result<(), DbError> {
        self.revive().await?;
        state::ensure(&mut self.work).await
    }

    async fn load_steps(&mut self, plan: &str) -> Result<Vec<StepRecord>, DbError> {
        self.revive().await?;
        state::load_steps(&self.work, plan).await
    }

    // Every write below that records a runner's work goes through `fenced`: it proves the
    // plan's lease generation in its own transaction.

    async fn begin_step(&mut self, step: &StepStart<'_>) -> Result<(), DbError> {
        self.revive().await?;
        self.fenced(&step.key.plan, async |work| {
            state::begin_step(work, step).await
        })
        .await
    }

    async fn fail_step(&mut self, key: &StepKey, error: &str) -> Result<(), DbError> {
        self.revive().await?;
        self.fenced(&key.plan, async |work| {
            state::fail_step(work, key, error).await
        })
        .await
    }

    async fn finish_step(&mut self, key: &StepKey) -> Result<(), DbError> {
        self.revive().await?;
        self.fenced(&key.plan, async |work| state::mark_done(work, key).await)
            .await
    }

    async fn set_step_status(&mut self, key: &StepKey, status: StepStatus) -> Result<(), DbError> {
        self.revive().await?;
        self.fenced(&key.plan, async |work| {
            state::set_status(work, key, status).await
        })
        .await
    }

    async fn set_checkpoint(
        &mut self,
        key: &StepKey,
        checkpoint: Option<&str>,
    ) -> Result<(), DbError> {
        self.revive().await?;
        self.fenced(&key.plan, async |work| {
            state::set_checkpoint(work, key, checkpoint).await
        })
        .await
    }

    async fn set_rows_total(&mut self, key: &StepKey, total: i64) -> Result<(), DbError> {
        self.revive().await?;
        self.fenced(&key.plan, async |work| {
            state::set_rows_total(work, key, total).await
        })
        .await
    }

    async fn backfill_control(
        &mut self,
        plan: &str,
    ) -> Result<Option<crate::db::BackfillControl>, DbError> {
        if !state::relation_exists(&self.work, "phased.backfill_control").await? {
            return Ok(None);
        }
        let sql = "SELECT paused, max_rows_per_second, set_by, \
                   to_char(set_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') \
                   FROM phased.backfill_control WHERE plan = $1";
        Ok(self
            .work
            .query_opt(sql, &[&plan])
            .await?
            .map(|row| crate::db::BackfillControl {
                paused: row.get(0),
                max_rows_per_second: row.get(1),
                set_by: row.get(2),
                set_at: row.get(3),
            }))
    }

    /// Not fenced: an operator's `pause`, `resume` or `pace` holds no lease (it must reach a
    /// runner that holds one, from any machine), and records no work, only a wish the runner
    /// reads.
    async fn set_backfill_control(
        &mut self,
        plan: &str,
        change: crate::db::ControlChange,
        by: &str,
    ) -> Result<(), DbError> {
        use crate::db::ControlChange;
        let (sql, rate): (&str, Option<i64>) = match change {
            ControlChange::Pause | ControlChange::Resume => (
                "INSERT INTO phased.backfill_control (plan, paused, set_by, set_at) VALUES ($1, $2, $3, now()) \
                 ON CONFLICT (plan) DO UPDATE SET paused = EXCLUDED.paused, set_by = EXCLUDED.set_by, set_at = now()",
                None,
            ),
            ControlChange::Pace(rate) => (
                "INSERT INTO phased.backfill_control (plan, paused, max_rows_per_second, set_by, set_at) \
                 VALUES ($1, $2, $4, $3, now()) \
                 ON CONFLICT (plan) DO UPDATE SET max_rows_per_second = EXCLUDED.max_rows_per_second, \
                 set_by = EXCLUDED.set_by, set_at = now()",
                rate,
            ),
        };
        let paused = change == ControlChange::Pause;
        match change {
            ControlChange::Pace(_) => {
                self.work
                    .execute(sql, &[&plan, &paused, &by, &rate])
                    .await?
            }
            _ => self.work.execute(sql, &[&plan, &paused, &by]).await?,
        };
        Ok(())
    }

    async fn flags(&mut self) -> Result<Vec<FlagRecord>, DbError> {
        state::flags(&self.work).await
    }

    /// Fenced when a flag step sets it; `phased flags set` by hand holds no lease and is not.
    async fn set_flag(
        &mut self,
        name: &str,
        value: &str,
        plan: Option<&str>,
        step: Option<&StepKey>,
    ) -> Result<(), DbError> {
        if let Some(why) = step.and_then(|_| self.lost_reason()) {
            return Err(DbError::LeaseLost(why));
        }
        let fence = step.and_then(|k| self.fence(&k.plan));
        let work = &self.work;
        work.in_transaction(async {
            if fence.is_some() {
                lease::check_fence(work.client()?, fence.as_ref()).await?;
            }
            let sql = "INSERT INTO phased.flags (name, value, updated_at, plan) VALUES ($1, $2, now(), $3) \
                       ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, updated_at = now(), plan = EXCLUDED.plan";
            work.execute(sql, &[&name, &value, &plan]).await?;
            if let Some(key) = step {
                state::mark_done(work, key).await?;
            }
            Ok(())
        })
        .await
    }

    async fn restore_flag(
        &mut self,
        name: &str,
        previous: Option<&str>,
        step: &StepKey,
    ) -> Result<(), DbError> {
        if let Some(why) = self.lost_reason() {
            return Err(DbError::LeaseLost(why));
        }
        let fence = self.fence(&step.plan);
        let work = &self.work;
        work.in_transaction(async {
            if fence.is_some() {
                lease::check_fence(work.client()?, fence.as_ref()).await?;
            }
            match previous {
                Some(value) => {
                    let sql = "UPDATE phased.flags SET value = $2, updated_at = now(), plan = $3 WHERE name = $1";
                    work.execute(sql, &[&name, &value, &step.plan]).await?;
                }
                None => {
                    let sql = "DELETE FROM phased.flags WHERE name = $1";
                    work.execute(sql, &[&name]).await?;
                }
            }
            state::mark(work, step, StepStatus::RolledBack).await
        })
        .await
    }

    async fn version_state(&mut self) -> Result<VersionState, DbError> {
        if let Some(versions) = &self.dry_versions {
            return Ok(versions.clone());
        }
        self.read_versions().await
    }

    async fn stamp_versions(
        &mut self,
        applied: &[(String, String)],
        heads: &[String],
    ) -> Result<(), DbError> {
        self.replace_versions(applied, heads).await
    }
}

impl Lease for PgTarget {
    async fn acquire_lease(&mut self, plan: &str) -> Result<Option<LeaseHolder>, DbError> {
        if self.work.recorder().is_some() {
            return Ok(None); // a dry run changes nothing, so it needs no lease
        }
        if self.leases.contains_key(plan) {
            return Ok(None);
        }
        let conn = self.connection().await?;
        match lease::try_acquire(&conn, plan).await? {
            None => {
                let sql = "SELECT pg_backend_pid()";
                let pid: i32 = conn
                    .query_one(sql, &[])
                    .await
                    .map_err(|e| sql_error(e, sql))?
                    .get(0);
                let generation = lease::bump_generation(&conn, plan).await?;
                let conn = std::sync::Arc::new(conn);
                let heartbeat = tokio::spawn(heartbeat(
                    conn.clone(),
                    plan.to_string(),
                    self.lease_lost.clone(),
                    self.canceller(),
                ));
                self.leases.insert(
                    plan.to_string(),
                    HeldLease {
                        conn,
                        pid,
                        generation,
                        heartbeat,
                    },
                );
                Ok(None)
            }
            Some(holder) => Ok(Some(holder)),
        }
    }

    fn lease_lost(&self) -> Option<String> {
        self.lost_reason()
    }

    async fn lease_holder(&mut self, plan: &str) -> Result<Option<LeaseHolder>, DbError> {
        if self.leases.contains_key(plan) {
            return Ok(Some(LeaseHolder {
                description: "this process".to_string(),
            }));
        }
        lease::holder(self.work.client()?, plan).await
    }

    async fn release_lease(&mut self, plan: &str) -> Result<(), DbError> {
        if let Some(held) = self.leases.remove(plan) {
            held.heartbeat.abort();
            // A lock session that is gone took the advisory lock with it: nothing is left to
            // release. (Its loss during the run was the fence's business: every write since
            // proved the generation, so the work done is this runner's.)
            if held.conn.is_closed() {
                return Ok(());
            }
            match lease::release(&held.conn, plan).await {
                Err(_) if held.conn.is_closed() => {}
                other => other?,
            }
        }
        Ok(())
    }
}

impl Catalog for PgTarget {
    async fn blockers(
        &mut self,
        table: &str,
        mode: super::LockMode,
    ) -> Result<Vec<super::Blocker>, DbError> {
        let ours: Vec<i32> = self.leases.values().map(|held| held.pid).collect();
        blockers::find(&self.work, table, mode, &ours).await
    }

    async fn backfill_key(&mut self, table: &str, key: &[String]) -> Result<Vec<String>, DbError> {
        backfill::resolve_key(&self.work, table, key).await
    }

    async fn backfill_remaining(&mut self, batch: &BatchRequest<'_>) -> Result<i64, DbError> {
        let types = self.key_types_of(batch).await?;
        backfill::count_remaining(&self.work, batch, &types).await
    }

    async fn column_types(
        &mut self,
        table: &str,
        columns: &[String],
    ) -> Result<Vec<String>, DbError> {
        backfill::key_types(&self.work, table, columns).await
    }

    async fn schema_snapshot(&mut self) -> Result<Vec<String>, DbError> {
        snapshot::snapshot(self.work.client()?).await
    }

    async fn table_facts(&mut self, table: &str) -> Result<crate::ops::TableFacts, DbError> {
        facts::table_facts(&self.work, table).await
    }

    async fn replica_lag(&mut self) -> Result<Option<Duration>, DbError> {
        backfill::replica_lag(&self.work).await
    }

    async fn start_probe(
        &mut self,
        plan: &str,
        table: &str,
        key_columns: &[String],
    ) -> Result<Option<crate::db::probe::Probe>, DbError> {
        if self.work.recorder().is_some() {
            return Ok(None);
        }
        let pid = self.work_pid().await.ok();
        let session = self.watching_session().await.map_err(|e| {
            DbError::Unexpected(format!("no session for the backfill's probe: {e}"))
        })?;
        probe::start(session, plan, table, key_columns, pid)
            .await
            .map(Some)
    }

    async fn check_conversion(
        &mut self,
        check: &super::conversion_check::ConversionCheck<'_>,
    ) -> Result<super::conversion_check::Conversion, DbError> {
        conversion_check::check(self.work.client()?, check).await
    }

    async fn query_bool(&mut self, sql: &str) -> Result<bool, DbError> {
        let row = self.work.query_opt(sql, &[]).await?;
        let row = row.ok_or_else(|| DbError::Unexpected(format!("`{sql}` returned no row")))?;
        row.try_get::<_, Option<bool>>(0)
            .map(|v| v.unwrap_or(false))
            .map_err(|_| DbError::Unexpected(format!("`{sql}` did not return a boolean")))
    }

    async fn schema_copy(&mut self) -> Result<Option<Self>, DbError> {
        Ok(None)
    }
}

impl Backups for PgTarget {
    async fn check_backup_tools(&mut self) -> Result<(), BackupError> {
        backup::check_tools(self.work.client()?).await
    }

    async fn write_backup(
        &mut self,
        file: &std::path::Path,
        tables: &[String],
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), BackupError> {
        // The step connection may have been dropped since it was last used (a terminated
        // session): opened again here, like before a step's state write.
        self.revive().await?;
        let selection = backup::selection(self.work.client()?, tables).await?;
        backup::dump(&self.url, file, &selection, progress).await?;
        backup::list(file).await.map(|_| ())
    }

    /// Fenced: a verified backup's record lets its phase start, so a runner that lost the
    /// plan's lease must not write one.
    async fn record_backup(&mut self, record: &BackupRecord) -> Result<i64, DbError> {
        if let Some(why) = self.lost_reason() {
            return Err(DbError::LeaseLost(why));
        }
        // Written after `pg_dump`, which may have taken long enough for the idle step
        // connection to be dropped: opened again first.
        self.revive().await?;
        let fence = self.fence(&record.plan);
        let client = self.work.client()?;
        if fence.is_none() {
            return backup::record(client, record).await;
        }
        client
            .batch_execute("BEGIN")
            .await
            .map_err(|e| sql_error(e, "BEGIN"))?;
        let recorded = async {
            lease::check_fence(client, fence.as_ref()).await?;
            backup::record(client, record).await
        }
        .await;
        let end = if recorded.is_ok() {
            "COMMIT"
        } else {
            "ROLLBACK"
        };
        let ended = client
            .batch_execute(end)
            .await
            .map_err(|e| sql_error(e, end));
        let id = recorded?;
        ended?;
        Ok(id)
    }

    async fn backups(&mut self, plan: Option<&str>) -> Result<Vec<BackupRecord>, DbError> {
        backup::backups(self.work.client()?, plan).await
    }

    /// Not fenced: forgetting a pruned backup's record records no work, and a rerun prunes
    /// again whatever is left.
    async fn forget_backup(&mut self, id: i64) -> Result<(), DbError> {
        backup::forget(self.work.client()?, id).await
    }

    /// Not fenced: a restore replaces the state itself (the lease generations with it) and
    /// takes no plan's lease; the note only says that it happened.
    async fn record_restore(&mut self, note: &RestoreNote) -> Result<(), DbError> {
        backup::record_restore(self.work.client()?, note).await
    }

    async fn last_restore(&mut self) -> Result<Option<RestoreNote>, DbError> {
        backup::last_restore(self.work.client()?).await
    }
}

impl Executor for PgTarget {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn describe(&self) -> String {
        redact(&self.url)
    }

    fn recorder(&self) -> Option<&crate::db::recorder::Recorder> {
        self.work.recorder()
    }

    fn canceller(&self) -> Option<crate::db::cancel::Canceller> {
        match (&self.pool, self.work_pid, self.work.recorder()) {
            (Some(pool), Some(_), None) => Some(crate::db::cancel::Canceller::Postgres {
                pool: pool.clone(),
                pid: self.shared_pid.clone(),
            }),
            _ => None,
        }
    }

    async fn apply(
        &mut self,
        key: &StepKey,
        units: &[Unit],
        timeouts: Timeouts,
        status: StepStatus,
        progress: &mut dyn FnMut(&IndexProgress),
    ) -> Result<(), DbError> {
        self.apply_units(key, units, timeouts, status, progress)
            .await
    }

    async fn backfill_batch(&mut self, batch: &BatchRequest<'_>) -> Result<BatchOutcome, DbError> {
        let types = self.key_types_of(batch).await?;
        if let Some(why) = self.lost_reason() {
            return Err(DbError::LeaseLost(why));
        }
        let fence = self.fence(&batch.key.plan);
        backfill::run_batch(&mut self.work, batch, &types, fence.as_ref()).await
    }

    async fn run_migration(
        &mut self,
        run: &MigrationRun<'_>,
        progress: &mut dyn FnMut(&IndexProgress),
    ) -> Result<(), DbError> {
        self.run_one_migration(run, progress).await?;
        if self.work.recorder().is_some() {
            // Recorded, not sent: the versions the next step of the dry run reads are the ones
            // this migration would have left.
            let mut versions = match self.dry_versions.take() {
                Some(v) => v,
                None => self.read_versions().await?,
            };
            if run.up {
                versions.applied.push(crate::db::AppliedMigration {
                    revision: run.revision.to_string(),
                    checksum: run.checksum.to_string(),
                    applied_at: String::new(),
                });
            } else {
                versions.applied.retain(|a| a.revision != run.revision);
            }
            versions.heads = run.heads_after.to_vec();
            self.dry_versions = Some(versions);
        }
        Ok(())
    }
}
