//! Why a run stopped, mapped to the documented exit codes by the CLI.

use crate::db::DbError;

/// A run that did not finish.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A step failed; its state is saved and a re-run resumes it.
    #[error("step {step} ({label}) failed: {error}")]
    StepFailed {
        step: String,
        label: String,
        error: String,
        sql: Option<String>,
        /// Steps completed by this run before the failure.
        completed: Vec<String>,
    },
    /// A done step's definition changed since it ran.
    #[error(
        "drift: step {step} ({label}) is done, but its definition in the plan changed since it ran"
    )]
    Drift { step: String, label: String },
    /// A phase's gate (or the order of phases) does not allow it to start.
    #[error("{0}")]
    GateNotMet(String),
    /// Another runner holds the plan's lease.
    #[error("another runner is working on plan `{plan}`: {holder}")]
    LeaseHeld { plan: String, holder: String },
    /// Another runner still held the plan's lease when the wait (`--wait`) ran out.
    #[error(
        "gave up after waiting {} for plan `{plan}`: another runner still holds its lease ({holder}); {progress}",
        crate::plan::PlanDuration(*waited)
    )]
    LeaseWaitTimedOut {
        plan: String,
        holder: String,
        progress: String,
        waited: std::time::Duration,
    },
    /// The command was used wrongly (unknown phase name…).
    #[error("{0}")]
    Usage(String),
    /// Rollback reached a step it cannot undo (or a completed contract phase) and stopped there.
    #[error("cannot roll back step {step} ({label}): {reason}")]
    Irreversible {
        step: String,
        label: String,
        reason: String,
        /// Steps undone by this rollback before it stopped.
        undone: Vec<String>,
    },
    /// A step's inverse failed; the step stays done and a re-run of the rollback retries it.
    #[error("undoing step {step} ({label}) failed: {error}")]
    UndoFailed {
        step: String,
        label: String,
        error: String,
        sql: Option<String>,
        undone: Vec<String>,
    },
    /// An operator's signal (Ctrl-C, SIGTERM) stopped the run at a safe point; `step` (id,
    /// label) is where a rerun resumes, when there is one left.
    #[error("interrupted ({signal}){}", step.as_ref().map(|(id, label)| format!(" at step {id} ({label})")).unwrap_or_default())]
    Interrupted {
        signal: &'static str,
        step: Option<(String, String)>,
        /// Where exactly (a backfill's rows, what was cancelled).
        detail: Option<String>,
    },
    /// This runner lost the plan's lease while it ran (its lock session ended, another runner
    /// took the lease over): it stopped and committed nothing more.
    #[error(
        "the lease was lost: {0}; the runner holding it now carries on, or run `phased run` again"
    )]
    LeaseLost(String),
    /// The database failed outside a step (state tables, lease).
    #[error(transparent)]
    Target(#[from] DbError),
    /// The backup a phase must be preceded by could not be taken; the phase did not start.
    #[error("backup before phase `{phase}` failed: {message}")]
    Backup {
        phase: String,
        message: String,
        /// What to fix.
        hint: Option<String>,
    },
}
