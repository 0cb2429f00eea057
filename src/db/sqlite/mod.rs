//! SQLite target, the embedded default: state in `phased_*` tables, `busy_timeout` in the part of
//! lock_timeout, every unit in a `BEGIN IMMEDIATE` transaction that also records the step.

mod backfill;
pub mod backup;
mod conversion_check;
mod facts;
mod lease;
mod rebuild;
mod remember;
mod snapshot;
mod state;
mod table_definition;
mod versions;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use super::backup::{BackupError, BackupRecord, RestoreNote};
use super::recorder::{effect_of_write, Effect, Recorder};
use super::{Backups, Catalog, Executor, Lease, MigrationRun, StateStore, VersionState};
use super::{
    BatchOutcome, BatchRequest, DbError, FlagRecord, LeaseHolder, StepKey, StepRecord, StepStart,
    StepStatus, Timeouts,
};
use super::{Dialect, Unit};

/// One SQLite database file.
pub struct SqliteTarget {
    conn: Connection,
    path: PathBuf,
    /// A dry run's recording: the connection is then a copy of the database in memory, whose
    /// every statement SQLite reports to it (see [`SqliteTarget::recording`]).
    recorder: Option<Recorder>,
    /// The generations of the leases this target holds, by plan: the fence each unit checks.
    fences: std::collections::HashMap<String, i64>,
}

/// Where SQLite's trace hook (a plain function) delivers the statements of a dry run. One dry
/// run per process at a time: `phased plan` is one.
static TRACE: std::sync::Mutex<Option<Recorder>> = std::sync::Mutex::new(None);

fn trace_event(event: rusqlite::trace::TraceEvent<'_>) {
    // A trigger's body reports itself as `-- trigger name` each time it fires: it is not a
    // statement phased sends.
    if let rusqlite::trace::TraceEvent::Stmt(statement, text) = event {
        if !text.trim_start().starts_with("--") {
            trace_statement(&statement.sql());
        }
    }
}

fn trace_statement(sql: &str) {
    let sink = TRACE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(recorder) = sink.as_ref() {
        let head = sql.trim_start().to_ascii_uppercase();
        let effect = if head.starts_with("SELECT") || head.starts_with("PRAGMA") {
            Effect::Read
        } else {
            effect_of_write(sql)
        };
        recorder.sql(sql, Vec::new(), effect);
    }
}

/// Maps a rusqlite error to a [`DbError`]; a busy or locked database is worth retrying.
pub(crate) fn sql_error(err: rusqlite::Error, sql: &str) -> DbError {
    let (code, retryable) = match &err {
        rusqlite::Error::SqliteFailure(e, _) => (
            Some(format!("{:?}", e.code)),
            matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ),
        ),
        _ => (None, false),
    };
    DbError::Sql {
        message: err.to_string(),
        code,
        sql: sql.to_string(),
        retryable,
    }
}

impl SqliteTarget {
    /// Opens (creating if needed) the database file.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_URI
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| DbError::Connect {
            target: format!("sqlite://{}", path.display()),
            message: e.to_string(),
        })?;
        conn.busy_timeout(Duration::from_secs(2))
            .map_err(|e| sql_error(e, "PRAGMA busy_timeout"))?;
        Ok(Self {
            conn,
            path: path.to_path_buf(),
            recorder: None,
            fences: Default::default(),
        })
    }

    /// A dry run's target. SQLite runs the step path for real, on an in-memory copy of
    /// `source` (SQLite's online backup API; an empty database without one), and reports each
    /// statement it runs to `recorder` as it starts: what `phased plan` prints is what SQLite
    /// was sent, and the database itself is not touched.
    pub fn recording(source: Option<&SqliteTarget>, recorder: Recorder) -> Result<Self, DbError> {
        let mut copy = Connection::open_in_memory().map_err(|e| sql_error(e, ":memory:"))?;
        if let Some(source) = source {
            let backup = rusqlite::backup::Backup::new(&source.conn, &mut copy)
                .map_err(|e| sql_error(e, "backup"))?;
            backup
                .run_to_completion(1024, Duration::ZERO, None)
                .map_err(|e| sql_error(e, "backup"))?;
        }
        *TRACE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(recorder.clone());
        copy.trace_v2(
            rusqlite::trace::TraceEventCodes::SQLITE_TRACE_STMT,
            Some(trace_event),
        );
        Ok(Self {
            conn: copy,
            path: source
                .map(|s| s.path.clone())
                .unwrap_or_else(|| PathBuf::from(":memory:")),
            recorder: Some(recorder),
            fences: Default::default(),
        })
    }

    /// The open connection (for the engine's tests and backups).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with_busy_timeout(&self, timeouts: Timeouts) -> Result<(), DbError> {
        let wait = if timeouts.lock_timeout.is_zero() {
            Duration::from_secs(2)
        } else {
            timeouts.lock_timeout
        };
        self.conn
            .busy_timeout(wait)
            .map_err(|e| sql_error(e, "PRAGMA busy_timeout"))
    }

    /// A script that must not run in one transaction (`transactional: false`): each statement
    /// commits on its own, followed by the count of statements done, so a retry after a busy
    /// error (or a rerun after a crash) resumes after the last one that completed instead of
    /// running the earlier ones twice.
    fn run_script(&mut self, key: &StepKey, script: &str) -> Result<(), DbError> {
        let statements = crate::migrations::statements::split(script);
        let done = state::script_progress(&self.conn, key)?;
        for (i, statement) in statements.iter().enumerate().skip(done) {
            lease::check_fence(&self.conn, self.fence(&key.plan).as_ref())?;
            self.conn
                .execute_batch(statement)
                .map_err(|e| sql_error(e, statement))?;
            let progress = crate::db::state_sql::script_progress(i + 1);
            self.fenced(&key.plan, |conn| {
                state::set_checkpoint(conn, key, Some(&progress))
            })?;
        }
        Ok(())
    }

    /// The fence a state write of `plan` checks (None without a lease: a dry run, a command
    /// that takes none).
    fn fence(&self, plan: &str) -> Option<(String, i64)> {
        self.fences.get(plan).map(|g| (plan.to_string(), *g))
    }

    /// A bookkeeping write that records work (an attempt starting or failing, a status, a
    /// checkpoint, a script's progress): with `plan`'s lease held, it is made in a `BEGIN
    /// IMMEDIATE` transaction that first proves the lease's generation; the transaction holds
    /// the database's write lock, so no runner can take the lease over between the proof and
    /// the write. Without a lease (a dry run, a command that takes none) it is made as it is.
    fn fenced<T>(
        &mut self,
        plan: &str,
        write: impl FnOnce(&Connection) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let Some(fence) = self.fence(plan) else {
            return write(&self.conn);
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| sql_error(e, "BEGIN IMMEDIATE"))?;
        lease::check_fence(&tx, Some(&fence))?;
        let value = write(&tx)?;
        tx.commit().map_err(|e| sql_error(e, "COMMIT"))?;
        Ok(value)
    }

    /// Every lease this target holds, as fences: a versioned migration's record proves them
    /// all, since the version tables belong to no one plan.
    fn all_fences(&self) -> Vec<(String, i64)> {
        let mut fences: Vec<(String, i64)> =
            self.fences.iter().map(|(p, g)| (p.clone(), *g)).collect();
        fences.sort();
        fences
    }

    fn run_transaction(
        &mut self,
        statements: &[String],
        done: Option<(&StepKey, StepStatus)>,
        fence: Option<(String, i64)>,
    ) -> Result<(), DbError> {
        self.run_transaction_remembering(statements, done, fence, None, None)
    }

    /// [`Self::run_transaction`], first recording what the statements change in the step's
    /// checkpoint when `remember` says so (`Unit::Remember`), in the same transaction; and,
    /// after them, writing `checkpoint` as the step's checkpoint (`Unit::Checkpoint`).
    fn run_transaction_remembering(
        &mut self,
        statements: &[String],
        done: Option<(&StepKey, StepStatus)>,
        fence: Option<(String, i64)>,
        remember: Option<(&StepKey, &crate::ops::Remembered)>,
        checkpoint: Option<(&StepKey, &str)>,
    ) -> Result<(), DbError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| sql_error(e, "BEGIN IMMEDIATE"))?;
        lease::check_fence(&tx, fence.as_ref())?;
        if let Some((key, what)) = remember {
            remember::record(&tx, key, what)?;
        }
        for sql in statements {
            tx.execute_batch(sql).map_err(|e| sql_error(e, sql))?;
        }
        if let Some((key, checkpoint)) = checkpoint {
            state::set_checkpoint(&tx, key, Some(checkpoint))?;
        }
        if let Some((key, status)) = done {
            state::mark(&tx, key, status)?;
        }
        tx.commit().map_err(|e| sql_error(e, "COMMIT"))
    }

    /// Runs units in order; the last one, when transactional, records `status` in its
    /// transaction, otherwise it is recorded right after.
    fn apply_units(
        &mut self,
        key: &StepKey,
        units: &[Unit],
        timeouts: Timeouts,
        status: StepStatus,
    ) -> Result<(), DbError> {
        self.with_busy_timeout(timeouts)?;
        let last_tx = units
            .iter()
            .rposition(|u| {
                let u = match u {
                    Unit::Remember { then, .. } | Unit::Checkpoint { then, .. } => then,
                    other => other,
                };
                matches!(
                    u,
                    Unit::Transaction(_)
                        | Unit::RebuildTable { .. }
                        | Unit::DropColumn { .. }
                        | Unit::RenameIndex { .. }
                )
            })
            .filter(|&i| i + 1 == units.len());
        for (i, unit) in units.iter().enumerate() {
            let done = (Some(i) == last_tx).then_some((key, status));
            let unit = match unit {
                // Recorded in the change's own transaction when it is one; before a rebuild
                // otherwise (the rebuild reads the table's SQL afresh, and a rerun after it
                // committed finds the constraint gone and keeps this record).
                Unit::Remember { what, then } => match &**then {
                    Unit::Transaction(stmts) => {
                        let fence = self.fence(&key.plan);
                        self.run_transaction_remembering(
                            stmts,
                            done,
                            fence,
                            Some((key, what)),
                            None,
                        )?;
                        continue;
                    }
                    other => {
                        lease::check_fence(&self.conn, self.fence(&key.plan).as_ref())?;
                        remember::record(&self.conn, key, what)?;
                        other
                    }
                },
                // Written in the change's own transaction: both commit, or neither.
                Unit::Checkpoint { checkpoint, then } => match &**then {
                    Unit::Transaction(stmts) => {
                        let fence = self.fence(&key.plan);
                        self.run_transaction_remembering(
                            stmts,
                            done,
                            fence,
                            None,
                            Some((key, checkpoint.as_str())),
                        )?;
                        continue;
                    }
                    other => {
                        return Err(DbError::Unexpected(format!(
                            "cannot record a checkpoint with {}",
                            other.sql_text()
                        )))
                    }
                },
                other => other,
            };
            match unit {
                Unit::Transaction(stmts) => {
                    let fence = self.fence(&key.plan);
                    self.run_transaction(stmts, done, fence)?
                }
                Unit::DropColumn {
                    table,
                    column,
                    drop,
                } => {
                    let stmts = rebuild::drop_column_statements(&self.conn, table, column, drop)?;
                    let fence = self.fence(&key.plan);
                    self.run_transaction(&stmts, done, fence)?
                }
                Unit::RenameIndex { from, to } => {
                    let stmts = rebuild::rename_index_statements(&self.conn, from, to)?;
                    let fence = self.fence(&key.plan);
                    self.run_transaction(&stmts, done, fence)?
                }
                // A statement outside a transaction cannot prove the fence in its own; it is
                // checked right before, and the step's status after it is fenced.
                Unit::Standalone(sql) => {
                    lease::check_fence(&self.conn, self.fence(&key.plan).as_ref())?;
                    self.conn
                        .execute_batch(sql)
                        .map_err(|e| sql_error(e, sql))?
                }
                Unit::Script(script) => self.run_script(key, script)?,
                Unit::ConcurrentIndex { create, .. } => {
                    lease::check_fence(&self.conn, self.fence(&key.plan).as_ref())?;
                    self.conn
                        .execute_batch(create)
                        .map_err(|e| sql_error(e, create))?
                }
                Unit::RebuildTable { table, change } => {
                    // The rebuild records "done" in its own transaction; any other status is
                    // recorded right after it.
                    let in_tx = done
                        .filter(|(_, st)| *st == StepStatus::Done)
                        .map(|(k, _)| k);
                    let fence = self.fence(&key.plan);
                    rebuild::rebuild(&mut self.conn, table, change, in_tx, fence.as_ref())?;
                    if let Some((k, st)) = done.filter(|(_, st)| *st != StepStatus::Done) {
                        self.fenced(&k.plan, |conn| state::mark(conn, k, st))?;
                    }
                }
                Unit::Remember { then, .. } | Unit::Checkpoint { then, .. } => {
                    return Err(DbError::Unexpected(format!(
                        "cannot record before {}",
                        then.sql_text()
                    )))
                }
            }
        }
        if last_tx.is_none() {
            self.fenced(&key.plan, |conn| state::mark(conn, key, status))?;
        }
        Ok(())
    }
}

impl StateStore for SqliteTarget {
    async fn ensure_state(&mut self) -> Result<(), DbError> {
        state::ensure(&mut self.conn)
    }

    async fn load_steps(&mut self, plan: &str) -> Result<Vec<StepRecord>, DbError> {
        state::load_steps(&self.conn, plan)
    }

    // Every write below that records a runner's work goes through `fenced`: it proves the
    // plan's lease generation in its own transaction.

    async fn begin_step(&mut self, step: &StepStart<'_>) -> Result<(), DbError> {
        self.fenced(&step.key.plan, |conn| state::begin_step(conn, step))
    }

    async fn fail_step(&mut self, key: &StepKey, error: &str) -> Result<(), DbError> {
        self.fenced(&key.plan, |conn| state::fail_step(conn, key, error))
    }

    async fn finish_step(&mut self, key: &StepKey) -> Result<(), DbError> {
        self.fenced(&key.plan, |conn| state::mark_done(conn, key))
    }

    async fn set_step_status(&mut self, key: &StepKey, status: StepStatus) -> Result<(), DbError> {
        self.fenced(&key.plan, |conn| state::set_status(conn, key, status))
    }

    async fn set_checkpoint(
        &mut self,
        key: &StepKey,
        checkpoint: Option<&str>,
    ) -> Result<(), DbError> {
        self.fenced(&key.plan, |conn| {
            state::set_checkpoint(conn, key, checkpoint)
        })
    }

    async fn set_rows_total(&mut self, key: &StepKey, total: i64) -> Result<(), DbError> {
        self.fenced(&key.plan, |conn| state::set_rows_total(conn, key, total))
    }

    async fn backfill_control(
        &mut self,
        plan: &str,
    ) -> Result<Option<crate::db::BackfillControl>, DbError> {
        let exists = "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'phased_backfill_control'";
        let n: i64 = self
            .conn
            .query_row(exists, [], |r| r.get(0))
            .map_err(|e| sql_error(e, exists))?;
        if n == 0 {
            return Ok(None);
        }
        let sql = "SELECT paused, max_rows_per_second, set_by, set_at FROM phased_backfill_control WHERE plan = ?1";
        self.conn
            .query_row(sql, [plan], |r| {
                Ok(crate::db::BackfillControl {
                    paused: r.get::<_, i64>(0)? != 0,
                    max_rows_per_second: r.get(1)?,
                    set_by: r.get(2)?,
                    set_at: r.get(3)?,
                })
            })
            .optional()
            .map_err(|e| sql_error(e, sql))
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
        let now = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";
        let (sql, rate) = match change {
            ControlChange::Pause | ControlChange::Resume => (
                format!(
                    "INSERT INTO phased_backfill_control (plan, paused, set_by, set_at) VALUES (?1, ?2, ?3, {now}) \
                     ON CONFLICT (plan) DO UPDATE SET paused = excluded.paused, set_by = excluded.set_by, set_at = excluded.set_at"
                ),
                None,
            ),
            ControlChange::Pace(rate) => (
                format!(
                    "INSERT INTO phased_backfill_control (plan, paused, max_rows_per_second, set_by, set_at) \
                     VALUES (?1, ?2, ?4, ?3, {now}) \
                     ON CONFLICT (plan) DO UPDATE SET max_rows_per_second = excluded.max_rows_per_second, \
                     set_by = excluded.set_by, set_at = excluded.set_at"
                ),
                rate,
            ),
        };
        let paused = i64::from(change == ControlChange::Pause);
        let result = match change {
            ControlChange::Pace(_) => self
                .conn
                .execute(&sql, rusqlite::params![plan, paused, by, rate]),
            _ => self.conn.execute(&sql, rusqlite::params![plan, paused, by]),
        };
        result.map_err(|e| sql_error(e, &sql))?;
        Ok(())
    }

    async fn flags(&mut self) -> Result<Vec<FlagRecord>, DbError> {
        state::flags(&self.conn)
    }

    /// Fenced when a flag step sets it; `phased flags set` by hand holds no lease and is not.
    async fn set_flag(
        &mut self,
        name: &str,
        value: &str,
        plan: Option<&str>,
        step: Option<&StepKey>,
    ) -> Result<(), DbError> {
        let fence = step.and_then(|k| self.fence(&k.plan));
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| sql_error(e, "BEGIN IMMEDIATE"))?;
        lease::check_fence(&tx, fence.as_ref())?;
        let sql = "INSERT INTO phased_flags (name, value, updated_at, plan) \
                   VALUES (?1, ?2, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), ?3) \
                   ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at, plan = excluded.plan";
        tx.execute(sql, rusqlite::params![name, value, plan])
            .map_err(|e| sql_error(e, sql))?;
        if let Some(key) = step {
            state::mark_done(&tx, key)?;
        }
        tx.commit().map_err(|e| sql_error(e, "COMMIT"))
    }

    async fn restore_flag(
        &mut self,
        name: &str,
        previous: Option<&str>,
        step: &StepKey,
    ) -> Result<(), DbError> {
        let fence = self.fence(&step.plan);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| sql_error(e, "BEGIN IMMEDIATE"))?;
        lease::check_fence(&tx, fence.as_ref())?;
        match previous {
            Some(value) => {
                let sql = "UPDATE phased_flags SET value = ?2, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), plan = ?3 WHERE name = ?1";
                tx.execute(sql, rusqlite::params![name, value, step.plan])
                    .map_err(|e| sql_error(e, sql))?;
            }
            None => {
                let sql = "DELETE FROM phased_flags WHERE name = ?1";
                tx.execute(sql, [name]).map_err(|e| sql_error(e, sql))?;
            }
        }
        state::mark(&tx, step, StepStatus::RolledBack)?;
        tx.commit().map_err(|e| sql_error(e, "COMMIT"))
    }

    async fn version_state(&mut self) -> Result<VersionState, DbError> {
        self.read_versions()
    }

    async fn stamp_versions(
        &mut self,
        applied: &[(String, String)],
        heads: &[String],
    ) -> Result<(), DbError> {
        self.replace_versions(applied, heads)
    }
}

impl Lease for SqliteTarget {
    async fn acquire_lease(&mut self, plan: &str) -> Result<Option<LeaseHolder>, DbError> {
        match lease::try_acquire(&mut self.conn, plan)? {
            Ok(generation) => {
                self.fences.insert(plan.to_string(), generation);
                Ok(None)
            }
            Err(holder) => Ok(Some(holder)),
        }
    }

    fn lease_lost(&self) -> Option<String> {
        // A lease row is only taken over from a process that is gone; one taken over from a
        // runner of this process is seen by the fence of its next unit.
        None
    }

    async fn lease_holder(&mut self, plan: &str) -> Result<Option<LeaseHolder>, DbError> {
        lease::holder(&self.conn, plan)
    }

    async fn release_lease(&mut self, plan: &str) -> Result<(), DbError> {
        self.fences.remove(plan);
        lease::release(&self.conn, plan)
    }
}

impl Catalog for SqliteTarget {
    async fn blockers(
        &mut self,
        _table: &str,
        _mode: super::LockMode,
    ) -> Result<Vec<super::Blocker>, DbError> {
        // SQLite has one database-wide write lock and no way to ask who holds it; busy_timeout
        // bounds the wait instead.
        Ok(Vec::new())
    }

    async fn backfill_key(&mut self, table: &str, key: &[String]) -> Result<Vec<String>, DbError> {
        backfill::resolve_key(&self.conn, table, key)
    }

    async fn backfill_remaining(&mut self, batch: &BatchRequest<'_>) -> Result<i64, DbError> {
        self.with_busy_timeout(batch.timeouts)?;
        let result = backfill::count_remaining(&self.conn, batch);
        self.with_busy_timeout(Timeouts::default())?;
        result
    }

    async fn column_types(
        &mut self,
        table: &str,
        columns: &[String],
    ) -> Result<Vec<String>, DbError> {
        let sql = "SELECT type FROM pragma_table_info(?1) WHERE name = ?2";
        let mut types = Vec::with_capacity(columns.len());
        for column in columns {
            if column == "rowid" {
                types.push("integer".to_string());
                continue;
            }
            let ty: Option<String> = self
                .conn
                .query_row(sql, [crate::ops::name::base_name(table), column], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(|e| sql_error(e, sql))?;
            types.push(ty.ok_or_else(|| {
                DbError::Unexpected(format!("table `{table}` has no column `{column}`"))
            })?);
        }
        Ok(types)
    }

    async fn schema_snapshot(&mut self) -> Result<Vec<String>, DbError> {
        snapshot::snapshot(&self.conn)
    }

    async fn table_facts(&mut self, table: &str) -> Result<crate::ops::TableFacts, DbError> {
        facts::table_facts(&self.conn, table)
    }

    async fn replica_lag(&mut self) -> Result<Option<Duration>, DbError> {
        Ok(None)
    }

    /// No second session to probe from: each batch reports its own wait for the write lock.
    async fn start_probe(
        &mut self,
        _plan: &str,
        _table: &str,
        _key_columns: &[String],
    ) -> Result<Option<crate::db::probe::Probe>, DbError> {
        Ok(None)
    }

    async fn check_conversion(
        &mut self,
        check: &super::conversion_check::ConversionCheck<'_>,
    ) -> Result<super::conversion_check::Conversion, DbError> {
        conversion_check::check(&self.conn, check).await
    }

    async fn query_bool(&mut self, sql: &str) -> Result<bool, DbError> {
        let value: rusqlite::types::Value = self
            .conn
            .query_row(sql, [], |r| r.get(0))
            .map_err(|e| sql_error(e, sql))?;
        match value {
            rusqlite::types::Value::Integer(i) => Ok(i != 0),
            rusqlite::types::Value::Null => Ok(false),
            other => Err(DbError::Unexpected(format!(
                "`{sql}` did not return a boolean (got {other:?})"
            ))),
        }
    }

    async fn schema_copy(&mut self) -> Result<Option<Self>, DbError> {
        if self.recorder.is_some() {
            return Ok(None);
        }
        let statements = super::scratch::sqlite_schema_statements(&self.conn)?;
        let copy = Connection::open_in_memory().map_err(|e| sql_error(e, ":memory:"))?;
        super::scratch::sqlite_create_schema(&copy, &statements)?;
        Ok(Some(Self {
            conn: copy,
            path: PathBuf::from(":memory:"),
            recorder: None,
            fences: Default::default(),
        }))
    }
}

impl Backups for SqliteTarget {
    async fn check_backup_tools(&mut self) -> Result<(), BackupError> {
        Ok(())
    }

    async fn write_backup(
        &mut self,
        file: &Path,
        tables: &[String],
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), BackupError> {
        if !tables.is_empty() {
            tracing::warn!(
                "backup.tables applies to PostgreSQL only; the SQLite backup holds the whole database"
            );
        }
        backup::write(&self.conn, file, progress)
    }

    /// Fenced: a verified backup's record lets its phase start, so a runner that lost the
    /// plan's lease must not write one.
    async fn record_backup(&mut self, record: &BackupRecord) -> Result<i64, DbError> {
        self.fenced(&record.plan, |conn| backup::record(conn, record))
    }

    async fn backups(&mut self, plan: Option<&str>) -> Result<Vec<BackupRecord>, DbError> {
        backup::backups(&self.conn, plan)
    }

    /// Not fenced: forgetting a pruned backup's record records no work, and a rerun prunes
    /// again whatever is left.
    async fn forget_backup(&mut self, id: i64) -> Result<(), DbError> {
        backup::forget(&self.conn, id)
    }

    /// Not fenced: a restore replaces the state itself (the lease generations with it) and
    /// takes no plan's lease; the note only says that it happened.
    async fn record_restore(&mut self, note: &RestoreNote) -> Result<(), DbError> {
        backup::record_restore(&self.conn, note)
    }

    async fn last_restore(&mut self) -> Result<Option<RestoreNote>, DbError> {
        backup::last_restore(&self.conn)
    }
}

impl Executor for SqliteTarget {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn describe(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }

    fn recorder(&self) -> Option<&crate::db::recorder::Recorder> {
        self.recorder.as_ref()
    }

    fn canceller(&self) -> Option<crate::db::cancel::Canceller> {
        self.recorder
            .is_none()
            .then(|| crate::db::cancel::Canceller::Sqlite(self.conn.get_interrupt_handle()))
    }

    async fn apply(
        &mut self,
        key: &StepKey,
        units: &[Unit],
        timeouts: Timeouts,
        status: StepStatus,
        // SQLite has no concurrent build: nothing runs long enough to report on.
        _progress: &mut dyn FnMut(&crate::db::IndexProgress),
    ) -> Result<(), DbError> {
        self.apply_units(key, units, timeouts, status)
    }

    async fn backfill_batch(&mut self, batch: &BatchRequest<'_>) -> Result<BatchOutcome, DbError> {
        self.with_busy_timeout(batch.timeouts)?;
        let fence = self.fence(&batch.key.plan);
        let result = backfill::run_batch(&mut self.conn, batch, fence.as_ref());
        // The state writes that follow (a failed attempt's record, the next attempt's start)
        // wait with the default patience, not the batch's short lock_timeout.
        self.with_busy_timeout(Timeouts::default())?;
        result
    }

    async fn run_migration(
        &mut self,
        run: &MigrationRun<'_>,
        _progress: &mut dyn FnMut(&crate::db::IndexProgress),
    ) -> Result<(), DbError> {
        let fences = self.all_fences();
        self.run_one_migration(run, &fences)
    }
}
