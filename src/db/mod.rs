//! The databases phased deploys to. Only this module speaks SQL; the engine drives it through [`Database`] and its parts.

pub mod backfill_key;
pub mod backup;
pub mod cancel;
pub mod conversion_check;
pub mod error;
pub mod fence;
pub mod index_build;
pub mod lock;
pub mod open;
pub mod postgres;
pub mod probe;
pub mod recorder;
pub mod scratch;
pub mod sqlite;
pub mod state_schema;
pub mod state_sql;
pub mod url;
pub mod versions_sql;

pub use crate::ops::{Dialect, LockMode, TableLock, Unit};
pub use error::DbError;
pub use index_build::IndexProgress;
pub use lock::Blocker;
pub use url::DatabaseUrl;

use std::path::Path;
use std::time::Duration;

use backup::{BackupError, BackupRecord, RestoreNote};

/// Status of one step as stored in the target's state tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Running,
    Done,
    Failed,
    RolledBack,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Done => "done",
            StepStatus::Failed => "failed",
            StepStatus::RolledBack => "rolled_back",
        }
    }

    pub fn parse(text: &str) -> Self {
        match text {
            "running" => StepStatus::Running,
            "done" => StepStatus::Done,
            "failed" => StepStatus::Failed,
            "rolled_back" => StepStatus::RolledBack,
            _ => StepStatus::Pending,
        }
    }
}

/// Identifies a step's state row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepKey {
    pub plan: String,
    pub phase: String,
    /// 0-based index in the phase.
    pub index: i32,
}

/// One step's recorded state.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StepRecord {
    pub phase: String,
    pub index: i32,
    pub kind: String,
    pub label: String,
    pub checksum: String,
    pub status: StepStatus,
    pub attempts: i32,
    /// RFC 3339, UTC.
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub last_error: Option<String>,
    /// Backfill checkpoint: JSON array of the last key's values.
    pub checkpoint: Option<String>,
    pub rows_done: i64,
    pub rows_total: Option<i64>,
    /// Backfill rate (rows per second) as of its last committed batch.
    pub rows_per_second: Option<f64>,
    /// Where a concurrent index build (or drop) of the step stands, as JSON
    /// ([`IndexProgress`]), written while it runs (PostgreSQL).
    pub progress: Option<String>,
}

/// What a step starting is recorded with.
#[derive(Debug, Clone)]
pub struct StepStart<'a> {
    pub key: &'a StepKey,
    pub kind: &'a str,
    pub label: &'a str,
    pub checksum: &'a str,
}

/// Timeouts a unit of work runs under.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timeouts {
    pub lock_timeout: Duration,
    /// Zero: none.
    pub statement_timeout: Duration,
    /// How long a `CONCURRENTLY` statement may wait, in total, for older transactions to finish
    /// (`index_wait_timeout`). Zero: no limit.
    pub index_wait: Duration,
}

/// Who holds a plan's single-runner lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    pub description: String,
}

/// A backfill's next batch: which rows, what to set, where the last batch stopped.
#[derive(Debug, Clone)]
pub struct BatchRequest<'a> {
    pub key: &'a StepKey,
    pub table: &'a str,
    pub key_columns: &'a [String],
    pub set: &'a [(String, String)],
    pub predicate: Option<&'a str>,
    /// JSON array of the last processed key, or None to start at the beginning.
    pub after: Option<&'a str>,
    pub limit: u64,
    pub timeouts: Timeouts,
    /// The backfill's rate so far, recorded with the checkpoint for `phased status`.
    pub rows_per_second: f64,
    /// The key columns' types as the plan declares them (a table the plan creates), for a dry
    /// run that cannot look them up; empty when the plan does not say.
    pub key_types_hint: &'a [String],
    /// A rollback's walk of the backfill's `down`: its checkpoint is kept apart from the
    /// backfill's own (see `state_sql::backfill_checkpoint`).
    pub down: bool,
    /// The pace the backfill runs at and why (JSON), recorded with the checkpoint in the
    /// step's `progress` for `phased status`.
    pub pace: Option<&'a str>,
}

/// What one committed batch did.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchOutcome {
    pub rows: u64,
    /// JSON array of the batch's last key; None when no rows were left.
    pub last_key: Option<String>,
    /// How long the batch held its row locks: from its UPDATE to its commit. What
    /// `batch_size: auto` steers toward `target_batch_time`, with `flushed` counted only up to
    /// half of it (`engine::backfill::steered_time`).
    pub held: std::time::Duration,
    /// PostgreSQL: how much of `held` the COMMIT took after the UPDATE had answered, the
    /// flush of the batch's WAL to the disk. Zero on SQLite, whose commit holds the
    /// database's one write lock: there all of `held` is the batch's.
    pub flushed: std::time::Duration,
    /// SQLite: how long the batch waited for the write lock (another writer held it); zero on
    /// PostgreSQL, whose probe sees lock waits instead.
    pub waited: std::time::Duration,
}

impl BatchOutcome {
    /// A batch that found no row left: the walk is done (or, in a dry run, not walked).
    pub fn nothing_left() -> Self {
        Self {
            rows: 0,
            last_key: None,
            held: std::time::Duration::ZERO,
            flushed: std::time::Duration::ZERO,
            waited: std::time::Duration::ZERO,
        }
    }
}

/// An operator's hand on a plan's backfills, from any machine (`phased pause|resume|pace`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BackfillControl {
    /// Batches wait until `phased resume`.
    pub paused: bool,
    /// Overrides the steps' `max_rows_per_second` (None: the plan's own pace).
    pub max_rows_per_second: Option<i64>,
    /// Who set it (user@host) and when (RFC 3339, UTC).
    pub set_by: String,
    pub set_at: String,
}

/// What `pause`, `resume` and `pace` change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlChange {
    Pause,
    Resume,
    /// `Some(n)`: at most n rows a second; `None`: back to the plan's pace.
    Pace(Option<i64>),
}

/// A flag in the flag store.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FlagRecord {
    pub name: String,
    pub value: String,
    pub updated_at: String,
    pub plan: Option<String>,
}

/// A versioned migration recorded as applied.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AppliedMigration {
    pub revision: String,
    /// The file's checksum when it was applied (line endings normalised).
    pub checksum: String,
    /// RFC 3339, UTC.
    pub applied_at: String,
}

/// What the version tables hold: every applied revision, and the current heads.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct VersionState {
    pub applied: Vec<AppliedMigration>,
    pub heads: Vec<String>,
}

/// One versioned migration to run and record (or undo and forget).
#[derive(Debug, Clone)]
pub struct MigrationRun<'a> {
    pub revision: &'a str,
    pub checksum: &'a str,
    /// True to apply and record the revision, false to undo it and forget it.
    pub up: bool,
    /// The SQL of this direction for the target's dialect, as written in the file.
    pub script: &'a str,
    /// False: the script runs statement by statement outside any transaction, and is recorded
    /// right after (a failure in between leaves it unrecorded; such scripts must be re-runnable).
    pub transactional: bool,
    /// The version heads once this migration is recorded.
    pub heads_after: &'a [String],
    pub timeouts: Timeouts,
    /// The plan step running it, whose state records the progress of a concurrent index build.
    pub step: Option<&'a StepKey>,
}

/// Phased's own state in the target: steps, their checkpoints, flags. Every write that
/// belongs with a unit of work is made in that unit's transaction by the [`Executor`].
#[allow(async_fn_in_trait)]
pub trait StateStore {
    /// Creates or upgrades the state tables.
    async fn ensure_state(&mut self) -> Result<(), DbError>;

    /// Every recorded step of a plan (none when the state tables do not exist yet).
    async fn load_steps(&mut self, plan: &str) -> Result<Vec<StepRecord>, DbError>;

    /// Records an attempt starting: status running, attempts + 1.
    async fn begin_step(&mut self, step: &StepStart<'_>) -> Result<(), DbError>;

    /// Records a failed attempt.
    async fn fail_step(&mut self, key: &StepKey, error: &str) -> Result<(), DbError>;

    /// Records a step as done (for work that could not share its transaction).
    async fn finish_step(&mut self, key: &StepKey) -> Result<(), DbError>;

    /// Sets a step's status directly (rollback bookkeeping).
    async fn set_step_status(&mut self, key: &StepKey, status: StepStatus) -> Result<(), DbError>;

    /// Sets a step's checkpoint (a backfill's last key, a flag's previous value); `None` also
    /// clears the progress recorded with it, so the step starts over when it runs again.
    async fn set_checkpoint(
        &mut self,
        key: &StepKey,
        checkpoint: Option<&str>,
    ) -> Result<(), DbError>;

    /// Records the expected total of a backfill.
    async fn set_rows_total(&mut self, key: &StepKey, total: i64) -> Result<(), DbError>;

    async fn flags(&mut self) -> Result<Vec<FlagRecord>, DbError>;

    /// The operator's hand on the plan's backfills, if one was ever set (none before the state
    /// tables exist).
    async fn backfill_control(&mut self, plan: &str) -> Result<Option<BackfillControl>, DbError>;

    /// Records an operator's `pause`, `resume` or `pace` for the plan's backfills, by `by`.
    async fn set_backfill_control(
        &mut self,
        plan: &str,
        change: ControlChange,
        by: &str,
    ) -> Result<(), DbError>;

    /// Sets a flag and, when a step is given, marks it done in the same transaction.
    async fn set_flag(
        &mut self,
        name: &str,
        value: &str,
        plan: Option<&str>,
        step: Option<&StepKey>,
    ) -> Result<(), DbError>;

    /// Puts a flag back to its previous value (removes it when it had none) and marks the flag
    /// step rolled back, in one transaction.
    async fn restore_flag(
        &mut self,
        name: &str,
        previous: Option<&str>,
        step: &StepKey,
    ) -> Result<(), DbError>;

    /// The applied versioned migrations and the version heads (empty before the state tables exist).
    async fn version_state(&mut self) -> Result<VersionState, DbError>;

    /// Replaces the version records without running anything (`phased db stamp`): `applied` is
    /// (revision, checksum) pairs.
    async fn stamp_versions(
        &mut self,
        applied: &[(String, String)],
        heads: &[String],
    ) -> Result<(), DbError>;
}

/// The single-runner lease of a plan (PostgreSQL: a session advisory lock; SQLite: a lock row).
#[allow(async_fn_in_trait)]
pub trait Lease {
    /// Takes the plan's single-runner lease, or says who holds it.
    async fn acquire_lease(&mut self, plan: &str) -> Result<Option<LeaseHolder>, DbError>;

    async fn release_lease(&mut self, plan: &str) -> Result<(), DbError>;

    /// Why a lease this target held was lost while it ran (its lock session ended, another
    /// runner took it over), once that is known; None while it holds.
    fn lease_lost(&self) -> Option<String>;

    /// Who holds the plan's lease right now, without taking it: a live runner, or None.
    async fn lease_holder(&mut self, plan: &str) -> Result<Option<LeaseHolder>, DbError>;
}

/// Look-ups in the database's catalog and activity: only reads.
#[allow(async_fn_in_trait)]
pub trait Catalog {
    /// Other sessions holding, or already queued for, a lock on `table` that conflicts with
    /// `mode` (PostgreSQL: `pg_locks` + `pg_stat_activity`). Empty when the way is clear, when
    /// the table does not exist, and on SQLite, which cannot tell who holds its lock.
    async fn blockers(&mut self, table: &str, mode: LockMode) -> Result<Vec<Blocker>, DbError>;

    /// The columns a backfill walks. A `key` named in the plan is checked: its columns exist,
    /// are NOT NULL and a unique index covers them. Without one, the primary key (SQLite: the
    /// rowid when there is none); PostgreSQL refuses a table without a primary key.
    async fn backfill_key(&mut self, table: &str, key: &[String]) -> Result<Vec<String>, DbError>;

    /// Rows a backfill still has to visit after `batch.after` and matching its predicate
    /// (the progress total). One scan per attempt, never per batch.
    async fn backfill_remaining(&mut self, batch: &BatchRequest<'_>) -> Result<i64, DbError>;

    /// The declared types of some columns of a table, in the order given (dry runs show the
    /// casts a backfill's bound keys get).
    async fn column_types(
        &mut self,
        table: &str,
        columns: &[String],
    ) -> Result<Vec<String>, DbError>;

    /// A table as the catalog describes it now: columns, indexes, constraints, the foreign keys
    /// that point at it (see `ops::facts`). An absent table has none.
    async fn table_facts(&mut self, table: &str) -> Result<crate::ops::TableFacts, DbError>;

    /// The user schema as sorted, comparable lines (tables, columns, indexes, constraints,
    /// triggers); phased's own state is left out.
    async fn schema_snapshot(&mut self) -> Result<Vec<String>, DbError>;

    /// The largest replay lag among streaming replicas, or None when there are none
    /// (always None on SQLite).
    async fn replica_lag(&mut self) -> Result<Option<Duration>, DbError>;

    /// Starts watching the workload's health on `table` from a second session, for `plan`'s
    /// backfill walking it by `key_columns` under `throttle: auto` (PostgreSQL: a probe read's
    /// and a probe commit's latency, other sessions' activity and the lock waits around the
    /// step connection; see [`probe`]). None where there is no
    /// second session to watch from: SQLite, whose batches report their own lock waits, and a
    /// dry run.
    async fn start_probe(
        &mut self,
        plan: &str,
        table: &str,
        key_columns: &[String],
    ) -> Result<Option<probe::Probe>, DbError>;

    /// Whether an expression converts every existing row of a table, read-only and within
    /// the check's deadline (`phased verify` asks it of the real target; see
    /// [`conversion_check`]).
    async fn check_conversion(
        &mut self,
        check: &conversion_check::ConversionCheck<'_>,
    ) -> Result<conversion_check::Conversion, DbError>;

    /// Evaluates a query that must return one boolean.
    async fn query_bool(&mut self, sql: &str) -> Result<bool, DbError>;

    /// A copy of this database's schema without its rows or phased's state, apart from it, on
    /// which a run rehearses its pending steps before it sends anything (`engine::rehearsal`).
    /// SQLite: in memory, no file written. None where no copy is that cheap (PostgreSQL, whose
    /// copy needs `pg_dump` and a new database) and in a dry run.
    async fn schema_copy(&mut self) -> Result<Option<Self>, DbError>
    where
        Self: Sized;
}

/// Writing, recording and listing backups (`pg_dump -Fc`; SQLite's online backup API).
#[allow(async_fn_in_trait)]
pub trait Backups {
    /// Checks, before anything runs, that a backup can be written (PostgreSQL: `pg_dump` and
    /// `pg_restore` are there and not older than the server).
    async fn check_backup_tools(&mut self) -> Result<(), BackupError>;

    /// Writes a backup of the database (PostgreSQL: or only `tables`, with phased's state) to
    /// `file` and verifies it reads back; `progress` gets the bytes written so far.
    async fn write_backup(
        &mut self,
        file: &Path,
        tables: &[String],
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), BackupError>;

    /// Records a verified backup in the state; returns its id.
    async fn record_backup(&mut self, backup: &BackupRecord) -> Result<i64, DbError>;

    /// The recorded backups of a plan (of every plan when `None`), newest first.
    async fn backups(&mut self, plan: Option<&str>) -> Result<Vec<BackupRecord>, DbError>;

    /// Deletes a backup's record (the engine deletes its file).
    async fn forget_backup(&mut self, id: i64) -> Result<(), DbError>;

    /// Notes in the state that the database was restored from a backup.
    async fn record_restore(&mut self, note: &RestoreNote) -> Result<(), DbError>;

    /// The last restore noted in the state.
    async fn last_restore(&mut self) -> Result<Option<RestoreNote>, DbError>;
}

/// Runs a step's work: units (each transaction also writes the step's new status), backfill
/// batches (each committed with its checkpoint), versioned migrations (each with its record).
/// In a dry run it records instead of sending (see [`recorder`]).
#[allow(async_fn_in_trait)]
pub trait Executor {
    fn dialect(&self) -> Dialect;

    /// Where this target points, with any password removed.
    fn describe(&self) -> String;

    /// The recording of a dry run (`phased plan`), when this is one.
    fn recorder(&self) -> Option<&recorder::Recorder>;

    /// A handle that cancels the statement running on the step connection, from another task
    /// (none in a dry run).
    fn canceller(&self) -> Option<cancel::Canceller>;

    /// Runs a step's units in order. The last transactional unit also sets the step's status to
    /// `status` (done, or rolled back when the units are an inverse), in the same transaction;
    /// when the last unit cannot be transactional the status is written right after it. A
    /// concurrent index build or drop reports where it stands to `progress` while it runs (and
    /// records it in the step's state).
    async fn apply(
        &mut self,
        key: &StepKey,
        units: &[Unit],
        timeouts: Timeouts,
        status: StepStatus,
        progress: &mut dyn FnMut(&IndexProgress),
    ) -> Result<(), DbError>;

    /// Runs one backfill batch and commits it with the checkpoint.
    async fn backfill_batch(&mut self, batch: &BatchRequest<'_>) -> Result<BatchOutcome, DbError>;

    /// Runs one migration's script under the lock timeout and records it (or, going down,
    /// forgets it) together with the new version heads, in one transaction; a non-transactional
    /// script runs first and is recorded right after; its concurrent index builds report to
    /// `progress`.
    async fn run_migration(
        &mut self,
        run: &MigrationRun<'_>,
        progress: &mut dyn FnMut(&IndexProgress),
    ) -> Result<(), DbError>;
}

/// Everything the engine needs from a database, split by concern. One implementation per
/// dialect (`postgres/`, `sqlite/`).
pub trait Database: StateStore + Lease + Catalog + Backups + Executor {}

impl<T: StateStore + Lease + Catalog + Backups + Executor> Database for T {}

/// The database traits, for code that calls them on a concrete target (`use phased::db::prelude::*`).
pub mod prelude {
    pub use super::{Backups, Catalog, Database, Executor, Lease, StateStore};
}
