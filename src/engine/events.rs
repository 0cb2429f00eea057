//! What a run reports as it goes. One stream of events feeds the human output (bars and lines),
//! the NDJSON output (`--format json`) and any report file.

use serde::Serialize;

/// How a command ended: one documented set for `run`, `rollback` and `restore`
/// (docs/ci.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// `run`: every phase of the plan is done.
    Done,
    /// `run --phase`/`--until`: the phases asked for are done; later ones remain.
    Partial,
    /// `rollback`: the steps after `--to` are undone.
    RolledBack,
    /// `restore`: the database is the backup's.
    Restored,
}

/// A step as named in events.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StepId {
    pub phase: String,
    /// 1-based position in its phase.
    pub step: usize,
    /// e.g. `add_column accounts.email_lower`
    pub label: String,
}

/// One thing that happened during a run. Serialized as `{"event": "<name>", …}`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    RunStart {
        plan: String,
        database: String,
        phases: Vec<String>,
    },
    /// Startup mode (`--wait`): another runner holds the lease `key` (a plan id, or
    /// `db:<folder>` for a `migrations` step); this one waits. Repeated when the holder's
    /// progress changes, and every 10 seconds.
    LeaseWait {
        key: String,
        holder: String,
        /// How far the holder got, read from the state it records.
        progress: String,
        waited_ms: u64,
        timeout_ms: u64,
    },
    /// The lease was taken after waiting for it.
    LeaseAcquired {
        key: String,
        waited_ms: u64,
    },
    PhaseStart {
        phase: String,
        kind: String,
        description: Option<String>,
    },
    PhaseSkipped {
        phase: String,
        reason: String,
    },
    PhaseEnd {
        phase: String,
        elapsed_ms: u64,
    },
    GateResult {
        phase: String,
        condition: String,
        ok: bool,
        detail: String,
    },
    StepStart {
        #[serde(flatten)]
        step: StepId,
        attempt: u32,
    },
    StepSkipped {
        #[serde(flatten)]
        step: StepId,
        reason: String,
    },
    StepRetry {
        #[serde(flatten)]
        step: StepId,
        attempt: u32,
        error: String,
        wait_ms: u64,
        /// The sessions holding conflicting locks when the attempt failed (PostgreSQL).
        blockers: Vec<String>,
    },
    /// Look before you queue: other sessions hold locks the step's statement would queue behind
    /// (making application queries queue behind it in turn), so phased waits without asking.
    StepWaiting {
        #[serde(flatten)]
        step: StepId,
        attempt: u32,
        table: String,
        lock: String,
        blockers: Vec<String>,
        wait_ms: u64,
    },
    StepEnd {
        #[serde(flatten)]
        step: StepId,
        elapsed_ms: u64,
    },
    StepFailed {
        #[serde(flatten)]
        step: StepId,
        error: String,
        sql: Option<String>,
    },
    /// Where a concurrent index build (or drop) stands: PostgreSQL's phase, blocks or tuples
    /// done, an ETA, and the older transactions it waits for (which it outlasts up to
    /// `index_wait_timeout`). Sent when the phase or the sessions waited for change, and about
    /// once a second meanwhile.
    IndexProgress {
        #[serde(flatten)]
        step: StepId,
        progress: crate::db::IndexProgress,
    },
    BackfillProgress {
        #[serde(flatten)]
        step: StepId,
        rows_done: u64,
        rows_total: Option<u64>,
        batch_size: u64,
        rows_per_second: f64,
        paused: Option<String>,
        /// The pace and the signal that set it (none in a dry run).
        pace: Option<super::pace::PaceReport>,
    },
    Log {
        level: String,
        message: String,
    },
    /// The end of a run, rollback or restore that did what was asked.
    RunEnd {
        outcome: Outcome,
        /// The plan's phases still to run (a run of some of them: `--phase`, `--until`).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        remaining: Vec<String>,
        elapsed_ms: u64,
    },
    /// `phased rollback` starts: the phases after `to` (all when None) are undone.
    RollbackStart {
        plan: String,
        database: String,
        to: Option<String>,
        phases: Vec<String>,
    },
    /// A step's inverse starts (`inverse` says what it does).
    StepUndo {
        #[serde(flatten)]
        step: StepId,
        inverse: String,
    },
    /// A step was undone and recorded as rolled back.
    StepUndone {
        #[serde(flatten)]
        step: StepId,
        elapsed_ms: u64,
    },
    /// A backup before a phase starts being written.
    BackupStart {
        phase: String,
        path: String,
    },
    /// Bytes of the backup written so far.
    BackupProgress {
        phase: String,
        bytes: u64,
    },
    /// The backup is written, verified and recorded.
    BackupDone {
        phase: String,
        path: String,
        size_bytes: u64,
        sha256: String,
        duration_ms: u64,
        verified: bool,
    },
    /// The backup could not be written or verified; the phase does not start.
    BackupFailed {
        phase: String,
        error: String,
    },
    /// An old backup was deleted to honour `backup.keep`.
    BackupPruned {
        path: String,
    },
}

/// Receives a run's events.
pub trait Reporter {
    fn emit(&mut self, event: &Event);
}

/// Discards events (tests, and commands that only want the result).
pub struct Silent;

impl Reporter for Silent {
    fn emit(&mut self, _event: &Event) {}
}

/// Keeps every event (tests).
#[derive(Default)]
pub struct Recorder(pub Vec<Event>);

impl Reporter for Recorder {
    fn emit(&mut self, event: &Event) {
        self.0.push(event.clone());
    }
}
