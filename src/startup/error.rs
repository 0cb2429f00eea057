//! The library's one error type: what went wrong, in terms an application can act on.

use std::time::Duration;

use crate::db::DbError;
use crate::engine::migrations::{Refusal, VersionError};
use crate::engine::EngineError;
use crate::migrations::MigrationError;

/// Why [`Migrator`](crate::Migrator) or [`PlanFile`](crate::PlanFile) did not finish.
///
/// Every variant says whether anything ran: the refusals (`Migrations`, `Plan`, `Drift`,
/// `Destructive`, `LeaseHeld`, `WaitTimedOut`) happen before anything is applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database URL is not usable (`postgres://…` or `sqlite://path` expected).
    #[error("invalid database URL: {0}")]
    Url(String),
    /// The migrations cannot be used: a malformed file, a duplicate or unknown revision, a
    /// target that names no revision, `head` while there are several heads.
    #[error("{0}")]
    Migrations(String),
    /// The plan file is invalid; the message is the rendered report (file, line, column).
    #[error("{0}")]
    Plan(String),
    /// The database cannot be reached, or failed outside a migration.
    #[error("{message}")]
    Database {
        message: String,
        /// The statement that failed, when there was one.
        sql: Option<String>,
    },
    /// Applied revisions whose file changed or disappeared since. Nothing was run.
    #[error("drift: applied migrations no longer match their files: {}", .0.join("; "))]
    Drift(Vec<String>),
    /// The startup safety rule refused revisions with destructive statements that they do not
    /// opt into with a `-- destructive: RULE` header line. Nothing was run.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Destructive(Vec<DestructiveStatement>),
    /// Another runner holds the lease and this one was told not to wait
    /// (`wait_timeout(Duration::ZERO)`). Nothing was run.
    #[error("another runner holds the lease {key}: {holder}")]
    LeaseHeld { key: String, holder: String },
    /// Another runner still held the lease when the wait ran out. Nothing was run.
    #[error(
        "gave up after waiting {} for the lease {key}: still held by {holder}; {progress}",
        crate::plan::PlanDuration(*waited)
    )]
    WaitTimedOut {
        key: String,
        holder: String,
        /// How far the holder had got.
        progress: String,
        /// The wait timeout.
        waited: Duration,
    },
    /// A migration failed; the ones before it stay applied and recorded, it is not.
    #[error("upgrade of {revision} failed: {message}")]
    MigrationFailed {
        revision: String,
        message: String,
        sql: Option<String>,
        /// Revisions applied by this call before the failure.
        applied: Vec<String>,
    },
    /// A plan step failed; its state is saved and the next run resumes it.
    #[error("step {step} failed: {message}")]
    StepFailed {
        step: String,
        message: String,
        sql: Option<String>,
    },
    /// A phase's gate does not hold (or an earlier phase is not done). Nothing of it ran.
    #[error("{0}")]
    GateNotMet(String),
    /// A plan run stopped for another reason (drift of a done step, a failed backup, …).
    #[error("{0}")]
    Run(String),
}

/// One statement refused by the startup safety rule.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DestructiveStatement {
    pub revision: String,
    /// The revision's file (for embedded revisions: `<folder>/<file name>`).
    pub file: String,
    /// The rule, as the opt-in header names it: `drop-table`, `drop-column`, `drop-index`,
    /// `drop-object`, `truncate`, `rename`, `change-type`, `set-not-null`.
    pub rule: &'static str,
    /// The statement, comments removed, on one line.
    pub statement: String,
}

impl std::fmt::Display for DestructiveStatement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "revision {} ({}) is refused at startup by rule {}: `{}`; if it is meant, add `-- destructive: {}` to its header",
            self.revision, self.file, self.rule, self.statement, self.rule
        )
    }
}

impl From<&Refusal> for DestructiveStatement {
    fn from(r: &Refusal) -> Self {
        Self {
            revision: r.revision.clone(),
            file: r.file.clone(),
            rule: r.rule.name(),
            statement: r.statement.clone(),
        }
    }
}

impl From<DbError> for Error {
    fn from(e: DbError) -> Self {
        Error::Database {
            sql: e.sql().map(str::to_string),
            message: e.to_string(),
        }
    }
}

impl From<MigrationError> for Error {
    fn from(e: MigrationError) -> Self {
        Error::Migrations(e.to_string())
    }
}

impl From<VersionError> for Error {
    fn from(e: VersionError) -> Self {
        match e {
            VersionError::Migrations(e) => e.into(),
            VersionError::Drift(items) => {
                Error::Drift(items.iter().map(ToString::to_string).collect())
            }
            VersionError::LeaseHeld { key, holder } => Error::LeaseHeld { key, holder },
            VersionError::WaitTimedOut {
                key,
                holder,
                progress,
                waited,
            } => Error::WaitTimedOut {
                key,
                holder,
                progress,
                waited,
            },
            VersionError::Destructive(refusals) => {
                Error::Destructive(refusals.iter().map(Into::into).collect())
            }
            VersionError::Failed {
                revision,
                error,
                completed,
                ..
            } => Error::MigrationFailed {
                revision,
                sql: error.sql().map(str::to_string),
                message: error.to_string(),
                applied: completed
                    .iter()
                    .map(|c| c.rsplit(' ').next().unwrap_or(c).to_string())
                    .collect(),
            },
            VersionError::Target(e) => e.into(),
        }
    }
}

impl From<EngineError> for Error {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::StepFailed {
                step,
                label,
                error,
                sql,
                ..
            } => Error::StepFailed {
                step: format!("{step} {label}"),
                message: error,
                sql,
            },
            EngineError::GateNotMet(message) => Error::GateNotMet(message),
            EngineError::LeaseHeld { plan, holder } => Error::LeaseHeld { key: plan, holder },
            EngineError::LeaseWaitTimedOut {
                plan,
                holder,
                progress,
                waited,
            } => Error::WaitTimedOut {
                key: plan,
                holder,
                progress,
                waited,
            },
            EngineError::Target(e) => e.into(),
            other => Error::Run(other.to_string()),
        }
    }
}
