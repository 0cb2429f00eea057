//! `phased run`: phases in order, steps in order; done steps skipped, failed ones retried, drift
//! refused, all under the plan's single-runner lease.

use std::path::PathBuf;
use std::time::Instant;

use super::events::{Event, Outcome, Reporter};
use super::interrupt::Interrupt;
use super::lease_wait::{self, LeaseError, Wait, Watch};
use super::lock_policy::{self, blocked_by, Attempts};
use super::records::{find_drift, key_of, load_records, millis, step_id, timeouts_for, Records};
use super::{backfill, backup, command, gate, EngineError};
use crate::db::recorder::Entry;
use crate::db::{
    Database, DbError, IndexProgress, LockMode, StepKey, StepRecord, StepStart, StepStatus,
};
use crate::plan::{LoadedPlan, Phase, Plan, Step, StepRef};

/// Which phases to run, and how.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Run exactly this phase (earlier ones must be done).
    pub phase: Option<String>,
    /// Run up to and including this phase.
    pub until: Option<String>,
    /// While this file exists, backfills pause.
    pub throttle_file: Option<PathBuf>,
    /// Raised by an operator's signal: the run stops at the next safe point.
    pub interrupt: Option<Interrupt>,
    /// Startup mode: wait for the plan's lease (and a `migrations` step's folder lease) when
    /// another runner holds it, instead of failing at once.
    pub wait: Option<Wait>,
    /// Startup mode's safety rule: `migrations` steps refuse revisions with destructive
    /// statements they do not opt into.
    pub refuse_destructive: bool,
}

impl RunOptions {
    /// The signal that interrupted the run, once one has.
    fn interrupted(&self) -> Option<&'static str> {
        self.interrupt.as_ref().and_then(Interrupt::signal)
    }

    /// Sleeps `wait`, or less when interrupted meanwhile; true when interrupted.
    async fn sleep(&self, wait: std::time::Duration) -> bool {
        match &self.interrupt {
            Some(interrupt) => interrupt.sleep(wait).await,
            None => {
                tokio::time::sleep(wait).await;
                false
            }
        }
    }
}

/// Runs (or resumes) a plan.
pub async fn run<T: Database>(
    target: &mut T,
    loaded: &LoadedPlan,
    options: &RunOptions,
    reporter: &mut dyn Reporter,
) -> Result<(), EngineError> {
    let plan = &loaded.plan;
    let range = select_phases(plan, options)?;
    lease_wait::ensure_state(target, options.wait).await?;
    if target.recorder().is_some() {
        // A dry run changes nothing, so it takes no lease: it must work while a run is underway.
        return run_locked(target, loaded, range, options, reporter).await;
    }
    let mut waited_for = None;
    let acquired = lease_wait::acquire(
        target,
        plan.id(),
        options.wait,
        Watch::Plan(plan),
        options.interrupt.as_ref(),
        &mut |w| {
            waited_for = Some(w.key.clone());
            reporter.emit(&Event::LeaseWait {
                key: w.key.clone(),
                holder: w.holder.clone(),
                progress: w.progress.clone(),
                waited_ms: w.waited_ms,
                timeout_ms: w.timeout_ms,
            });
        },
    )
    .await;
    match acquired {
        Ok(waited) => {
            if let Some(key) = waited_for {
                reporter.emit(&Event::LeaseAcquired {
                    key,
                    waited_ms: millis(waited),
                });
            }
        }
        Err(LeaseError::Held { holder, .. }) => {
            return Err(EngineError::LeaseHeld {
                plan: plan.id().to_string(),
                holder,
            })
        }
        Err(LeaseError::TimedOut {
            holder,
            progress,
            waited,
            ..
        }) => {
            return Err(EngineError::LeaseWaitTimedOut {
                plan: plan.id().to_string(),
                holder,
                progress,
                waited,
            })
        }
        Err(LeaseError::Interrupted { signal, .. }) => {
            return Err(EngineError::Interrupted {
                signal,
                step: None,
                detail: Some("while waiting for the plan's lease".to_string()),
            })
        }
        Err(LeaseError::Db(e)) => return Err(e.into()),
    }
    let result = run_locked(target, loaded, range, options, reporter).await;
    let released = target.release_lease(plan.id()).await;
    result?;
    released?;
    Ok(())
}

/// The phases a run covers, as an index range into the plan.
fn select_phases(plan: &Plan, options: &RunOptions) -> Result<std::ops::Range<usize>, EngineError> {
    let index_of = |name: &str| {
        plan.phase_index(name).ok_or_else(|| {
            let names: Vec<&str> = plan.phases().map(Phase::name).collect();
            EngineError::Usage(format!(
                "plan `{}` has no phase `{name}`; its phases are: {}",
                plan.id(),
                names.join(", ")
            ))
        })
    };
    let count = plan.phases.value.len();
    match (&options.phase, &options.until) {
        (Some(_), Some(_)) => Err(EngineError::Usage(
            "--phase and --until cannot be used together".to_string(),
        )),
        (Some(p), None) => {
            let i = index_of(p)?;
            Ok(i..i + 1)
        }
        (None, Some(p)) => Ok(0..index_of(p)? + 1),
        (None, None) => Ok(0..count),
    }
}

fn is_done(records: &Records, step: &StepRef) -> bool {
    records
        .get(&(step.phase.clone(), step.index as i32))
        .is_some_and(|r| r.status == StepStatus::Done)
}

async fn run_locked<T: Database>(
    target: &mut T,
    loaded: &LoadedPlan,
    range: std::ops::Range<usize>,
    options: &RunOptions,
    reporter: &mut dyn Reporter,
) -> Result<(), EngineError> {
    let plan = &loaded.plan;
    let started = Instant::now();
    let records = load_records(target, plan).await?;
    let dry = target.recorder().cloned();
    if let Some(drift) = find_drift(plan, &records) {
        match &dry {
            Some(recorder) => {
                recorder.note(format!("WARNING: {drift}; `phased run` refuses to start."))
            }
            None => return Err(drift),
        }
    }
    let steps = plan.step_refs();

    // `--phase P` refuses while an earlier phase is not done.
    if let Some(pending) = steps
        .iter()
        .find(|(s, _)| s.phase_index < range.start && !is_done(&records, s))
    {
        let refusal = EngineError::GateNotMet(format!(
            "phase `{}` cannot start: the earlier phase `{}` is not done (step {} {} is {}); run it first",
            plan.phases.value[range.start].value.name(),
            pending.0.phase,
            pending.0.id(),
            pending.1.label(),
            records
                .get(&(pending.0.phase.clone(), pending.0.index as i32))
                .map(|r| r.status.as_str())
                .unwrap_or("pending"),
        ));
        match &dry {
            Some(recorder) => recorder.note(format!("NOTE: {refusal}")),
            None => return Err(refusal),
        }
    }

    // An operation the database cannot do is said before anything runs.
    if let Some((step, def, why)) = steps.iter().find_map(|(s, d)| {
        d.op()
            .unsupported_on(target.dialect())
            .map(|why| (s, d, why))
    }) {
        return Err(EngineError::Usage(format!(
            "step {} `{}` cannot run on {}: {why}",
            step.id(),
            def.label(),
            target.dialect().as_str()
        )));
    }

    // An operation that the catalog says cannot run here (SQLite refuses a rename of a NOT NULL
    // column without a default, a change of a column in a constraint, a view over a table
    // without a primary key) is said before anything runs too: first the first pending step on
    // each existing table, rendered from the catalog as it is now.
    if dry.is_none() {
        let mut touched: std::collections::HashSet<String> = std::collections::HashSet::new();
        for (s, d) in steps
            .iter()
            .filter(|(s, _)| range.contains(&s.phase_index) && !is_done(&records, s))
        {
            let op = d.op();
            if let Some(table) = op.facts_of() {
                let scheduled = plan.scheduled_at(s.phase_index, s.index).is_some();
                if !scheduled && !touched.contains(table.as_str()) {
                    let facts = target.table_facts(table.as_str()).await?;
                    if facts.exists {
                        if let Err(why) = op.units_with(target.dialect(), &facts) {
                            return Err(EngineError::Usage(format!(
                                "step {} `{}` cannot run on {}: {why}; nothing was run",
                                s.id(),
                                d.label(),
                                target.dialect().as_str()
                            )));
                        }
                    }
                }
            }
            if let Some(table) = op.table().or(op.facts_of()) {
                touched.insert(table.as_str().to_string());
            }
        }
        // Then the later steps, each as the steps before it leave its table: rehearsed on a
        // copy of the schema without rows (SQLite; see `rehearsal`).
        let pending: Vec<&(StepRef, &Step)> = steps
            .iter()
            .filter(|(s, _)| range.contains(&s.phase_index) && !is_done(&records, s))
            .collect();
        super::rehearsal::refuse_before_run(target, plan, &pending).await?;
    }

    // A phase preceded by a backup: check the tools and the folder before anything runs.
    if let Some(phase_index) = range.clone().filter(|_| dry.is_none()).find(|&i| {
        backup::wanted_before(plan, &plan.phases.value[i].value)
            && steps
                .iter()
                .any(|(s, _)| s.phase_index == i && !is_done(&records, s))
    }) {
        let name = plan.phases.value[phase_index].value.name();
        backup::preflight(target, loaded, name).await?;
    }

    reporter.emit(&Event::RunStart {
        plan: plan.id().to_string(),
        database: target.describe(),
        phases: plan.phases.value[range.clone()]
            .iter()
            .map(|p| p.value.name().to_string())
            .collect(),
    });
    let mut completed = Vec::new();
    let last_phase = range.end.saturating_sub(1);
    // A dry run of one phase goes through the earlier phases that are not done first, muted, so
    // that the phase starts from the state it would see (a `migrations` step from the revisions
    // the earlier ones reach).
    let dry_lead = match &dry {
        Some(_) => 0..range.start,
        None => 0..0,
    };
    let muted_until = range.start;
    for phase_index in dry_lead.chain(range) {
        if let Some(recorder) = &dry {
            recorder.set_muted(phase_index < muted_until);
        }
        let phase = &plan.phases.value[phase_index].value;
        let phase_steps: Vec<&(StepRef, &Step)> = steps
            .iter()
            .filter(|(s, _)| s.phase_index == phase_index)
            .collect();
        if let Some(recorder) = &dry {
            // What the run does before the phase's first step, which a dry run describes.
            let mut notes = Vec::new();
            if backup::wanted_before(plan, phase) {
                notes.push(format!(
                    "a verified backup is taken before this phase starts (backup.before), into {}",
                    plan.backup.dir.display()
                ));
            }
            for gate in &phase.gate {
                notes.push(format!(
                    "gate (checked before the phase starts): {}",
                    gate.value.describe()
                ));
            }
            recorder.push(Entry::Phase {
                name: phase.name().to_string(),
                kind: phase.kind().to_string(),
                notes,
            });
            for (step, def) in &phase_steps {
                let status = records
                    .get(&(step.phase.clone(), step.index as i32))
                    .map(|r| r.status)
                    .unwrap_or(StepStatus::Pending);
                recorder.push(Entry::Step {
                    id: step.id(),
                    label: def.label(),
                    status: status.as_str().to_string(),
                    line: step.line,
                });
                if status == StepStatus::Done {
                    continue;
                }
                let record = records.get(&(step.phase.clone(), step.index as i32));
                if let Err(failure) =
                    run_step(target, loaded, step, def, record, options, reporter).await
                {
                    let why = match failure {
                        StepFailure::Failed { error, .. } => error,
                        StepFailure::Engine(e) => e.to_string(),
                    };
                    recorder.note(format!("cannot be shown further: {why}"));
                }
            }
            continue;
        }
        if phase_steps.iter().all(|(s, _)| is_done(&records, s)) {
            reporter.emit(&Event::PhaseSkipped {
                phase: phase.name().to_string(),
                reason: "already done".to_string(),
            });
            continue;
        }
        gate::check_phase(target, plan, phase, reporter).await?;
        if backup::wanted_before(plan, phase) {
            let underway = phase_steps.iter().any(|(s, _)| {
                records
                    .get(&(s.phase.clone(), s.index as i32))
                    .is_some_and(|r| r.status != StepStatus::Pending)
            });
            backup::before_phase(target, loaded, phase, underway, reporter).await?;
        }
        let phase_started = Instant::now();
        reporter.emit(&Event::PhaseStart {
            phase: phase.name().to_string(),
            kind: phase.kind().to_string(),
            description: phase.description.clone(),
        });
        for (step, def) in phase_steps {
            let id = step_id(step, def);
            if is_done(&records, step) {
                reporter.emit(&Event::StepSkipped {
                    step: id,
                    reason: "already done".to_string(),
                });
                continue;
            }
            if let Some(signal) = options.interrupted() {
                return Err(EngineError::Interrupted {
                    signal,
                    step: Some((step.id(), def.label())),
                    detail: Some("before it started".to_string()),
                });
            }
            let step_started = Instant::now();
            let record = records.get(&(step.phase.clone(), step.index as i32));
            run_step(target, loaded, step, def, record, options, reporter)
                .await
                .map_err(|failure| match failure {
                    StepFailure::Failed { error, sql } => EngineError::StepFailed {
                        step: step.id(),
                        label: def.label(),
                        error,
                        sql,
                        completed: completed.clone(),
                    },
                    StepFailure::Engine(e) => e,
                })?;
            completed.push(format!("{} {}", step.id(), def.label()));
            reporter.emit(&Event::StepEnd {
                step: id,
                elapsed_ms: millis(step_started.elapsed()),
            });
        }
        reporter.emit(&Event::PhaseEnd {
            phase: phase.name().to_string(),
            elapsed_ms: millis(phase_started.elapsed()),
        });
    }
    // What this run did not cover and is not done: the phases after the range.
    let remaining: Vec<String> = plan
        .phases()
        .enumerate()
        .skip(last_phase + 1)
        .filter(|(i, _)| {
            steps
                .iter()
                .any(|(s, _)| s.phase_index == *i && !is_done(&records, s))
        })
        .map(|(_, p)| p.name().to_string())
        .collect();
    reporter.emit(&Event::RunEnd {
        outcome: if remaining.is_empty() {
            Outcome::Done
        } else {
            Outcome::Partial
        },
        remaining,
        elapsed_ms: millis(started.elapsed()),
    });
    Ok(())
}

/// How a step ended when it did not succeed.
pub(crate) enum StepFailure {
    /// The step failed (recorded in the state).
    Failed { error: String, sql: Option<String> },
    /// Something outside the step failed.
    Engine(EngineError),
}

impl From<DbError> for StepFailure {
    fn from(e: DbError) -> Self {
        StepFailure::Engine(EngineError::Target(e))
    }
}

/// Runs one step under the lock policy (`lock_policy`): look before queueing, `lock_timeout`,
/// bounded jittered retries on lock timeouts, deadlocks and serialization failures. Waits for
/// blockers use the same retry budget.
async fn run_step<T: Database>(
    target: &mut T,
    loaded: &LoadedPlan,
    step: &StepRef,
    def: &Step,
    record: Option<&StepRecord>,
    options: &RunOptions,
    reporter: &mut dyn Reporter,
) -> Result<(), StepFailure> {
    let plan = &loaded.plan;
    let key = key_of(plan, step);
    let label = def.label();
    let mut needed = def.op().locks();
    let mut attempts = Attempts::new(plan.defaults.retry);
    // A backfill resumes from its checkpoint, even across attempts.
    let mut checkpoint = record.and_then(|r| r.checkpoint.clone());
    loop {
        let attempt = attempts.begin();
        let begun = target
            .begin_step(&StepStart {
                key: &key,
                kind: def.kind_name(),
                label: &label,
                checksum: &step.checksum,
            })
            .await;
        if let Err(error) = begun {
            if let Some(why) = lost_lease(target, &error) {
                return Err(StepFailure::Engine(EngineError::LeaseLost(why)));
            }
            // The attempt could not even be recorded (SQLite busy under another writer, a
            // dropped connection): an attempt spent from the same budget, not the end of the run.
            let Some(wait) = attempts.retry_after(&error) else {
                return Err(error.into());
            };
            reporter.emit(&Event::StepRetry {
                step: step_id(step, def),
                attempt,
                error: error.to_string(),
                wait_ms: millis(wait),
                blockers: Vec::new(),
            });
            if options.sleep(wait).await {
                return Err(interrupted(target, options, step, def, &key, None).await);
            }
            continue;
        }
        reporter.emit(&Event::StepStart {
            step: step_id(step, def),
            attempt,
        });
        // The migrations still to apply, and so the tables to look at, are known only now.
        if let Step::Migrations(m) = def {
            needed = super::migrations::pending_locks(target, &loaded.base_dir, m).await;
        }
        // Some steps lock tables only the catalog names (the tables whose foreign keys
        // reference a column `change_type` swaps). When the facts cannot be read the attempt
        // itself fails on the same error, under the retry policy.
        if let Some(table) = def.op().facts_of().filter(|_| def.op().locks_need_facts()) {
            if let Ok(facts) = target.table_facts(table.as_str()).await {
                needed = def.op().locks_with(&facts);
            }
        }
        match (lock_policy::look(target, &needed).await?, target.recorder()) {
            (None, _) => {}
            (Some(blocked), Some(recorder)) => recorder.note(format!(
                "right now {} session(s) hold locks on `{}` that conflict with the {} lock this step needs: `phased run` would wait for them{}",
                blocked.blockers.len(),
                blocked.lock.table,
                blocked.lock.mode,
                blocked_by(&blocked.lines())
            )),
            (Some(blocked), None) => {
                let message = blocked.message();
                if let Some(wait) = attempts.wait() {
                    reporter.emit(&Event::StepWaiting {
                        step: step_id(step, def),
                        attempt,
                        table: blocked.lock.table.to_string(),
                        lock: blocked.lock.mode.to_string(),
                        blockers: blocked.lines(),
                        wait_ms: millis(wait),
                    });
                    target.fail_step(&key, &message).await?;
                    if options.sleep(wait).await {
                        return Err(interrupted(target, options, step, def, &key, None).await);
                    }
                    continue;
                }
                let mut message = format!(
                    "{message}{}; run again once they are gone",
                    attempts.gave_up()
                );
                if let Err(unrecorded) = target.fail_step(&key, &message).await {
                    message.push_str(&format!(
                        "\n(this failure could not be recorded in the state: {unrecorded})"
                    ));
                }
                reporter.emit(&Event::StepFailed {
                    step: step_id(step, def),
                    error: message.clone(),
                    sql: None,
                });
                return Err(StepFailure::Failed {
                    error: message,
                    sql: None,
                });
            }
        }
        let checkpoint_before = checkpoint.clone();
        let result = execute(
            target,
            loaded,
            step,
            def,
            &key,
            &mut checkpoint,
            options,
            reporter,
        )
        .await;
        let error = match result {
            Ok(Completion::Done) => return Ok(()),
            Ok(Completion::Stopped(detail)) => {
                return Err(interrupted(target, options, step, def, &key, Some(detail)).await)
            }
            // The lease is gone: nothing more may be written, not even the failure (the state
            // belongs to the runner that holds the lease now).
            Err(e) if lost_lease(target, &e).is_some() => {
                let why = lost_lease(target, &e).unwrap_or_default();
                return Err(StepFailure::Engine(EngineError::LeaseLost(why)));
            }
            Err(e) if options.interrupted().is_some() => {
                let detail = format!("its statement was cancelled: {e}");
                return Err(interrupted(target, options, step, def, &key, Some(detail)).await);
            }
            Err(e) => e,
        };
        let mut message = error.to_string();
        let mut lines = Vec::new();
        if error.is_retryable() {
            let fallback = match def {
                Step::Backfill(_) => LockMode::RowExclusive,
                _ => LockMode::AccessExclusive,
            };
            lines = lock_policy::who_was_in_the_way(target, &needed, def.table(), fallback).await;
            message.push_str(&blocked_by(&lines));
        }
        if error.is_connection_lost() {
            // The connection went with the batch in flight: resume from what the state says
            // was committed, read on the connection opened again.
            if let Ok(records) = target.load_steps(&key.plan).await {
                if let Some(r) = records
                    .iter()
                    .find(|r| r.phase == key.phase && r.index == key.index)
                {
                    checkpoint = r.checkpoint.clone();
                }
            }
        }
        if error.is_retryable() && checkpoint != checkpoint_before {
            attempts.made_progress();
        }
        if let Some(wait) = attempts.retry_after(&error) {
            reporter.emit(&Event::StepRetry {
                step: step_id(step, def),
                attempt,
                error: message.clone(),
                wait_ms: millis(wait),
                blockers: lines,
            });
            match target.fail_step(&key, &message).await {
                Ok(()) => {}
                Err(unrecorded) if unrecorded.lease_lost().is_some() => {
                    let why = unrecorded.lease_lost().unwrap_or_default().to_string();
                    return Err(StepFailure::Engine(EngineError::LeaseLost(why)));
                }
                // Busy still (SQLite, another process's write lock): the next attempt records
                // itself; the retry is not given up for want of a note.
                Err(unrecorded) if unrecorded.is_retryable() => {
                    tracing::warn!(error = %unrecorded, "could not record the failed attempt; retrying anyway");
                }
                Err(unrecorded) => {
                    // The connection that would record the failure is gone too: the step's own
                    // error is what the operator needs first.
                    message.push_str(&format!(
                        "\n(this failure could not be recorded in the state either: {unrecorded})"
                    ));
                    return Err(fail_unrecorded(reporter, step, def, message, &error));
                }
            }
            if options.sleep(wait).await {
                return Err(interrupted(target, options, step, def, &key, None).await);
            }
            continue;
        }
        if error.is_retryable() {
            message.push_str(&attempts.gave_up());
        }
        let sql = error.sql().map(str::to_string);
        let recorded = match &sql {
            Some(sql) => format!("{message}\nSQL: {sql}"),
            None => message.clone(),
        };
        if let Err(unrecorded) = record_failure(target, &key, &recorded).await {
            message.push_str(&format!(
                "\n(this failure could not be recorded in the state: {unrecorded})"
            ));
        }
        reporter.emit(&Event::StepFailed {
            step: step_id(step, def),
            error: message.clone(),
            sql: sql.clone(),
        });
        return Err(StepFailure::Failed {
            error: message,
            sql,
        });
    }
}

/// Why the lease was lost, when `error` says so or the lease's heartbeat saw it go.
fn lost_lease<T: Database>(target: &T, error: &DbError) -> Option<String> {
    error
        .lease_lost()
        .map(str::to_string)
        .or_else(|| target.lease_lost())
}

/// Records a failed attempt; a write that fails on a busy database (or a connection that had
/// to be opened again) is tried again a few times, since the step's failure must not go
/// unrecorded for want of the write lock.
async fn record_failure<T: Database>(
    target: &mut T,
    key: &StepKey,
    message: &str,
) -> Result<(), DbError> {
    let mut tries = 0;
    loop {
        match target.fail_step(key, message).await {
            Err(e) if e.is_retryable() && tries < 3 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100 * tries)).await;
            }
            other => return other,
        }
    }
}

/// How an attempt at a step ended when it did not fail.
enum Completion {
    Done,
    /// The interrupt stopped it at a safe point (a backfill between batches), with where.
    Stopped(String),
}

/// Records a step stopped by the interrupt (failed, with why and how to resume: a rerun
/// retries it, a backfill from its checkpoint) and returns the run's error.
async fn interrupted<T: Database>(
    target: &mut T,
    options: &RunOptions,
    step: &StepRef,
    def: &Step,
    key: &StepKey,
    detail: Option<String>,
) -> StepFailure {
    let signal = options.interrupted().unwrap_or("SIGINT");
    let note = format!(
        "interrupted by {signal}{}; `phased run` resumes here",
        detail
            .as_deref()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default()
    );
    // A cancel meant for the statement before may land on this write: one more try.
    if target.fail_step(key, &note).await.is_err() {
        let _ = target.fail_step(key, &note).await;
    }
    StepFailure::Engine(EngineError::Interrupted {
        signal,
        step: Some((step.id(), def.label())),
        detail,
    })
}

/// A step failure whose recording failed as well: the step's own error first, reported and
/// returned, with the recording's failure after it.
fn fail_unrecorded(
    reporter: &mut dyn Reporter,
    step: &StepRef,
    def: &Step,
    message: String,
    error: &DbError,
) -> StepFailure {
    let sql = error.sql().map(str::to_string);
    reporter.emit(&Event::StepFailed {
        step: step_id(step, def),
        error: message.clone(),
        sql: sql.clone(),
    });
    StepFailure::Failed {
        error: message,
        sql,
    }
}

/// One attempt at a step.
#[allow(clippy::too_many_arguments)]
async fn execute<T: Database>(
    target: &mut T,
    loaded: &LoadedPlan,
    step: &StepRef,
    def: &Step,
    key: &StepKey,
    checkpoint: &mut Option<String>,
    options: &RunOptions,
    reporter: &mut dyn Reporter,
) -> Result<Completion, DbError> {
    let plan = &loaded.plan;
    let timeouts = timeouts_for(plan, def);
    match def {
        Step::Backfill(b) => {
            let walked = backfill::run(
                target,
                key,
                b,
                &b.key_from_plan(plan),
                timeouts,
                checkpoint,
                options.throttle_file.as_deref(),
                &step_id(step, def),
                reporter,
                backfill::Direction::Forward,
                options.interrupt.as_ref(),
            )
            .await?;
            Ok(match walked {
                backfill::Walked::Done => Completion::Done,
                backfill::Walked::Stopped { rows_done } => Completion::Stopped(format!(
                    "the backfill stopped between batches after {rows_done} rows; it resumes from its checkpoint"
                )),
            })
        }
        Step::Flag(f) => {
            // The value it replaces is kept in the step's checkpoint: rollback puts it back.
            let previous = target
                .flags()
                .await?
                .into_iter()
                .find(|r| r.name == f.name)
                .map(|r| r.value);
            let remembered = serde_json::json!({ "previous": previous }).to_string();
            target.set_checkpoint(key, Some(&remembered)).await?;
            target
                .set_flag(&f.name, &f.value.0, Some(plan.id()), Some(key))
                .await?;
            Ok(Completion::Done)
        }
        Step::Command(c) => {
            match target.recorder() {
                Some(recorder) => recorder.note(format!(
                    "runs the program {} (no shell), from the plan's folder, within {}{}",
                    serde_json::to_string(&c.run).unwrap_or_default(),
                    c.timeout,
                    if c.env.is_empty() {
                        String::new()
                    } else {
                        format!(
                            ", with env {}",
                            c.env.keys().cloned().collect::<Vec<_>>().join(", ")
                        )
                    }
                )),
                None => {
                    let program = command::run(c, &loaded.base_dir, reporter);
                    match &options.interrupt {
                        // Dropping the program's future kills it (kill_on_drop).
                        Some(interrupt) => tokio::select! {
                            ran = program => ran?,
                            _ = interrupt.raised() => {
                                return Ok(Completion::Stopped(
                                    "its program was stopped; a rerun starts it again".to_string(),
                                ))
                            }
                        },
                        None => program.await?,
                    }
                }
            }
            target.finish_step(key).await?;
            Ok(Completion::Done)
        }
        Step::Migrations(m) => {
            // Both callbacks report; they are called one at a time.
            let reporter = std::cell::RefCell::new(&mut *reporter);
            let id = step_id(step, def);
            let mut progress = |p: &IndexProgress| {
                reporter.borrow_mut().emit(&Event::IndexProgress {
                    step: id.clone(),
                    progress: p.clone(),
                })
            };
            super::migrations::run_step(
                target,
                &loaded.base_dir,
                m,
                key,
                checkpoint,
                timeouts,
                options.wait,
                options.refuse_destructive,
                options.interrupt.as_ref(),
                &mut |w| {
                    reporter.borrow_mut().emit(&Event::LeaseWait {
                        key: w.key.clone(),
                        holder: w.holder.clone(),
                        progress: w.progress.clone(),
                        waited_ms: w.waited_ms,
                        timeout_ms: w.timeout_ms,
                    })
                },
                &mut progress,
            )
            .await?;
            Ok(Completion::Done)
        }
        _ => {
            // Operations whose SQL depends on the catalog render from it as it is now, and
            // from what an earlier attempt that committed part of the step recorded.
            let units = match def.op().facts_of() {
                Some(table) => {
                    let facts = target.table_facts(table.as_str()).await?;
                    def.op()
                        .units_resumed(target.dialect(), &facts, checkpoint.as_deref())
                }
                None => def.op().units(target.dialect()),
            }
            .map_err(|e| DbError::Unexpected(format!("{}: {e}", def.label())))?;
            let id = step_id(step, def);
            let mut progress = |p: &IndexProgress| {
                reporter.emit(&Event::IndexProgress {
                    step: id.clone(),
                    progress: p.clone(),
                })
            };
            target
                .apply(key, &units, timeouts, StepStatus::Done, &mut progress)
                .await?;
            Ok(Completion::Done)
        }
    }
}
