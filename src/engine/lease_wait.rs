//! Taking a single-runner lease, or — in startup mode — waiting for it.
//!
//! When five replicas of an application start at once, one of them gets the lease and applies
//! what is missing; the others must not fail (an orchestrator would restart them in a loop), so
//! they poll for the lease, report what the holder has done so far while they wait, and carry on
//! once they have it: by then the work is done and they find nothing to do. The wait is bounded.
//! A holder that dies frees the lease without help: its PostgreSQL session ends, and an SQLite
//! lease row whose process is gone is taken over (`db/sqlite/lease.rs`).

use std::time::{Duration, Instant};

use serde::Serialize;

use super::interrupt::Interrupt;
use super::migrations::applied;
use crate::db::{Database, DbError, StepStatus};
use crate::migrations::History;
use crate::plan::Plan;

/// How long a runner waits for a lease another runner holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    pub timeout: Duration,
}

impl Wait {
    /// `--wait` without `--wait-timeout`, and the library's default.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
}

impl Default for Wait {
    fn default() -> Self {
        Self {
            timeout: Self::DEFAULT_TIMEOUT,
        }
    }
}

/// Between two attempts: short at first (a holder that only finds nothing to do is gone in a
/// few milliseconds), then at most this.
const MAX_PAUSE: Duration = Duration::from_millis(500);
const FIRST_PAUSE: Duration = Duration::from_millis(25);
/// A waiter reports when the holder's progress changes, and at least this often.
const REPORT_EVERY: Duration = Duration::from_secs(10);
/// Without `--wait`, how long SQLite's "database is busy" (another process committing) is tried
/// again before it is reported: it says nothing about the lease.
const BUSY_PATIENCE: Duration = Duration::from_secs(30);

/// What the holder of the lease works on, so a waiter can say how far it got.
#[derive(Debug, Clone, Copy)]
pub enum Watch<'a> {
    /// A migrations folder: the revisions applied so far.
    Migrations(&'a History),
    /// A plan: its steps' states.
    Plan(&'a Plan),
}

/// One report while waiting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Waiting {
    /// The lease: `db:<folder>` or a plan id.
    pub key: String,
    /// Who holds it, as the database tells.
    pub holder: String,
    /// How far the holder got (read from the state it writes as it goes).
    pub progress: String,
    pub waited_ms: u64,
    pub timeout_ms: u64,
}

/// Why the lease was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another runner holds it, and this one does not wait.
    #[error("{key} is held by {holder}")]
    Held { key: String, holder: String },
    /// Another runner still held it when the wait ran out (`waited`: the timeout).
    #[error(
        "gave up after waiting {} for {key}: still held by {holder}; {progress}",
        crate::plan::PlanDuration(*waited)
    )]
    TimedOut {
        key: String,
        holder: String,
        progress: String,
        waited: Duration,
    },
    /// An operator's signal (`phased run`'s SIGINT/SIGTERM) stopped the wait.
    #[error("interrupted ({signal}) while waiting for {key}")]
    Interrupted { key: String, signal: &'static str },
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Takes the lease `key` (the state tables must exist: [`ensure_state`]). Without `wait`, a held lease is
/// [`LeaseError::Held`] at once. With it, the attempt is repeated until the lease is free or
/// `wait.timeout` has passed, calling `on_wait` when the holder's progress changes (and every
/// 10 seconds); SQLite's "database is busy" while another process writes counts as held. An
/// `interrupt` raised meanwhile ends the wait at once.
/// Returns how long it waited (zero when the lease was free at once).
pub async fn acquire<T: Database>(
    target: &mut T,
    key: &str,
    wait: Option<Wait>,
    watch: Watch<'_>,
    interrupt: Option<&Interrupt>,
    on_wait: &mut dyn FnMut(&Waiting),
) -> Result<Duration, LeaseError> {
    let started = Instant::now();
    let mut pause = FIRST_PAUSE;
    let mut last: Option<(String, String, Instant)> = None;
    let mut held = false;
    loop {
        let holder = match target.acquire_lease(key).await {
            Ok(None) => {
                return Ok(if held {
                    started.elapsed()
                } else {
                    Duration::ZERO
                })
            }
            Ok(Some(holder)) => holder.description,
            Err(e) if wait.is_some() && e.is_retryable() => {
                "another process writing to the database (SQLite cannot say which)".to_string()
            }
            // Without a wait, SQLite's "database is busy" is not a failure of this run: when a
            // live runner holds the lease (read without the write lock) it is that runner's
            // lease, exit 4 naming it; otherwise another writer is committing and the attempt
            // is repeated, for a bounded time.
            Err(e) if e.is_retryable() => match target.lease_holder(key).await {
                Ok(Some(holder)) => holder.description,
                _ if started.elapsed() < BUSY_PATIENCE => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_PAUSE);
                    continue;
                }
                _ => return Err(e.into()),
            },
            Err(e) => return Err(e.into()),
        };
        held = true;
        let Some(wait) = wait else {
            return Err(LeaseError::Held {
                key: key.to_string(),
                holder,
            });
        };
        let progress = progress(target, watch).await;
        let waited = started.elapsed();
        if waited >= wait.timeout {
            return Err(LeaseError::TimedOut {
                key: key.to_string(),
                holder,
                progress,
                waited: wait.timeout,
            });
        }
        let due = match &last {
            None => true,
            Some((h, p, at)) => *h != holder || *p != progress || at.elapsed() >= REPORT_EVERY,
        };
        if due {
            on_wait(&Waiting {
                key: key.to_string(),
                holder: holder.clone(),
                progress: progress.clone(),
                waited_ms: super::records::millis(waited),
                timeout_ms: super::records::millis(wait.timeout),
            });
            last = Some((holder, progress, Instant::now()));
        }
        let nap = pause.min(wait.timeout.saturating_sub(waited));
        match interrupt {
            Some(interrupt) => {
                if interrupt.sleep(nap).await {
                    return Err(LeaseError::Interrupted {
                        key: key.to_string(),
                        signal: interrupt.signal().unwrap_or("SIGINT"),
                    });
                }
            }
            None => tokio::time::sleep(nap).await,
        }
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// Creates or upgrades the state tables. SQLite's "database is busy" (another process creating
/// them, or committing) is tried again, within the wait's timeout (without one, for a while).
pub async fn ensure_state<T: Database>(target: &mut T, wait: Option<Wait>) -> Result<(), DbError> {
    let started = Instant::now();
    let mut pause = FIRST_PAUSE;
    loop {
        match target.ensure_state().await {
            Err(e)
                if e.is_retryable()
                    && started.elapsed() < wait.map_or(BUSY_PATIENCE, |w| w.timeout) =>
            {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
            other => return other,
        }
    }
}

/// How far the holder got, read from the state it records as it goes.
async fn progress<T: Database>(target: &mut T, watch: Watch<'_>) -> String {
    match watch {
        Watch::Migrations(history) => match target.version_state().await {
            Ok(state) => {
                let applied = applied(&state);
                let known = history
                    .in_order()
                    .filter(|m| applied.contains(&m.revision))
                    .count();
                let total = history.in_order().count();
                // From the applied set, not `state.heads` (a second read that a commit in
                // between could make disagree with the count).
                let heads = history.heads_of(&applied);
                let heads = if heads.is_empty() {
                    "<base>".to_string()
                } else {
                    heads.join(", ")
                };
                format!("{known} of the folder's {total} revisions applied, at {heads}")
            }
            Err(e) => format!("its progress cannot be read ({e})"),
        },
        Watch::Plan(plan) => match target.load_steps(plan.id()).await {
            Ok(records) => {
                let total = plan.step_refs().len();
                let done = records
                    .iter()
                    .filter(|r| r.status == StepStatus::Done)
                    .count();
                let mut text = format!("{done} of the plan's {total} steps done");
                if let Some(r) = records.iter().find(|r| r.status == StepStatus::Running) {
                    text.push_str(&format!(
                        "; running {}#{} {} (attempt {})",
                        r.phase,
                        r.index + 1,
                        r.label,
                        r.attempts
                    ));
                    if r.rows_done > 0 || r.rows_total.is_some() {
                        text.push_str(&format!(
                            ", {}{} rows",
                            r.rows_done,
                            r.rows_total.map(|t| format!("/{t}")).unwrap_or_default()
                        ));
                    }
                }
                text
            }
            Err(e) => format!("its progress cannot be read ({e})"),
        },
    }
}
