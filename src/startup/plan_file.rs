//! [`PlanFile`]: an application (or its init container) runs a phased plan when it starts.

use std::path::Path;
use std::time::Duration;

use super::Error;
use crate::db::open::{open, Open};
use crate::db::DatabaseUrl;
use crate::engine::lease_wait::Wait;
use crate::engine::{Event, Reporter, RunOptions};
use crate::plan::LoadedPlan;

/// A plan file, validated, to run in startup mode: the way `phased run PLAN --wait` does.
///
/// Another process running the same plan holds its lease; this one waits for it (bounded by
/// [`PlanFile::wait_timeout`], 10 minutes by default), then resumes the plan from its recorded
/// state — usually to find every step done. Its `migrations` steps refuse revisions with
/// destructive statements they do not opt into, like [`Migrator`](crate::Migrator).
///
/// A plan's `contract` phase is destructive by design (its gates are what protect it): an
/// application that runs its plan on every start usually stops before it, with
/// [`PlanFile::until`]. Progress goes out as `tracing` events (target `phased`).
///
/// ```no_run
/// # async fn start() -> Result<(), phased::Error> {
/// let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite://app.db".into());
/// let run = phased::PlanFile::load("deploy/accounts-email.yaml")?
///     .until("backfill")
///     .run(&url)
///     .await?;
/// println!("{} steps run", run.completed.len());
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct PlanFile {
    loaded: LoadedPlan,
    until: Option<String>,
    wait_timeout: Duration,
}

/// What [`PlanFile::run`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PlanRun {
    /// The steps this run completed, as `phase#N label`; empty when they were done already.
    pub completed: Vec<String>,
    /// How long it waited for another process's lease.
    pub waited: Duration,
}

impl PlanFile {
    /// Reads and validates a plan file (relative paths in it resolve against its folder). An
    /// invalid plan is [`Error::Plan`] with every finding, located.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, Error> {
        let loaded = crate::plan::load(path.as_ref())
            .map_err(|report| Error::Plan(report.render_plain()))?;
        Ok(Self {
            loaded,
            until: None,
            wait_timeout: Wait::DEFAULT_TIMEOUT,
        })
    }

    /// The plan's id (its state and lease are keyed by it).
    pub fn id(&self) -> &str {
        self.loaded.plan.id()
    }

    /// Runs the phases up to and including `phase` only.
    pub fn until(mut self, phase: impl Into<String>) -> Self {
        self.until = Some(phase.into());
        self
    }

    /// How long `run` waits for another process that holds the plan's lease (10 minutes by
    /// default); `Duration::ZERO` does not wait ([`Error::LeaseHeld`]).
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.wait_timeout = timeout;
        self
    }

    /// Runs (or resumes) the plan on the database at `url`; a missing SQLite file is created.
    pub async fn run(&self, url: &str) -> Result<PlanRun, Error> {
        let parsed = DatabaseUrl::parse(url).map_err(Error::Url)?;
        let mut db = open(
            &parsed,
            &format!("phased/{}", self.loaded.plan.id()),
            Open::Create,
        )
        .await?;
        let options = RunOptions {
            until: self.until.clone(),
            wait: (!self.wait_timeout.is_zero()).then_some(Wait {
                timeout: self.wait_timeout,
            }),
            refuse_destructive: true,
            ..RunOptions::default()
        };
        let mut reporter = TracingReporter::default();
        crate::with_target!(&mut db, t => crate::engine::run(t, &self.loaded, &options, &mut reporter).await)?;
        Ok(PlanRun {
            completed: reporter.completed,
            waited: reporter.waited,
        })
    }
}

/// A run's events as `tracing` events; keeps what [`PlanRun`] reports.
#[derive(Default)]
struct TracingReporter {
    completed: Vec<String>,
    waited: Duration,
}

impl Reporter for TracingReporter {
    fn emit(&mut self, event: &Event) {
        match event {
            Event::LeaseWait {
                key,
                holder,
                progress,
                waited_ms,
                timeout_ms,
            } => tracing::info!(
                lease = %key,
                holder = %holder,
                progress = %progress,
                waited_ms,
                timeout_ms,
                "another process is running the plan; waiting for it"
            ),
            Event::LeaseAcquired { key, waited_ms } => {
                self.waited = Duration::from_millis(*waited_ms);
                tracing::info!(lease = %key, waited_ms, "took the lease after waiting");
            }
            Event::StepEnd { step, elapsed_ms } => {
                self.completed
                    .push(format!("{}#{} {}", step.phase, step.step, step.label));
                tracing::info!(
                    phase = %step.phase,
                    step = step.step,
                    elapsed_ms,
                    "done: {}",
                    step.label
                );
            }
            Event::StepRetry {
                step,
                attempt,
                error,
                wait_ms,
                ..
            } => tracing::warn!(
                phase = %step.phase,
                step = step.step,
                attempt,
                wait_ms,
                "{} failed ({error}); retrying",
                step.label
            ),
            Event::StepFailed { step, error, .. } => tracing::warn!(
                phase = %step.phase,
                step = step.step,
                "{} failed: {error}",
                step.label
            ),
            other => {
                if let Ok(json) = serde_json::to_string(other) {
                    tracing::debug!(event = %json, "phased event");
                }
            }
        }
    }
}
