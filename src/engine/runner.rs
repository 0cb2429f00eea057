//! `phased run`: phases in order, steps in order; done steps skipped, failed ones retried, drift
//! refused, all under the plan's single-runner lease.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::events::{Event, Reporter, StepId};
use super::{backfill, backup, command, gate, retry, EngineError};
use crate::db::{
    Blocker, DbError, LockMode, StepKey, StepRecord, StepStart, StepStatus, TableLock, Target,
    Timeouts,
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
}

/// Runs (or resumes) a plan.
pub async fn run<T: Target>(
    target: &mut T,
    loaded: &LoadedPlan,
    options: &RunOptions,
    reporter: &mut dyn Reporter,
) -> Result<(), EngineError> {
    let plan = &loaded.plan;
    let range = select_phases(plan, options)?;
    target.ensure_state().await?;
    if let Some(holder) = target.acquire_lease(plan.id()).await? {
        return Err(EngineError::LeaseHeld {
            plan: plan.id().to_string(),
            holder: holder.description,
        });
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

/// The recorded state of every step, by (phase, index).
pub(crate) type Records = HashMap<(String, i32), StepRecord>;

pub(crate) async fn load_records<T: Target>(
    target: &mut T,
    plan: &Plan,
) -> Result<Records, DbError> {
    Ok(target
        .load_steps(plan.id())
        .await?
        .into_iter()
        .map(|r| ((r.phase.clone(), r.index), r))
        .collect())
}

pub(crate) fn key_of(plan: &Plan, step: &StepRef) -> StepKey {
    StepKey {
        plan: plan.id().to_string(),
        phase: step.phase.clone(),
        index: step.index as i32,
    }
}

pub(crate) fn step_id(step: &StepRef, def: &Step) -> StepId {
    StepId {
        phase: step.phase.clone(),
        step: step.index + 1,
        label: def.label(),
    }
}

/// A done step whose definition changed since it ran.
pub(crate) fn find_drift(plan: &Plan, records: &Records) -> Option<EngineError> {
    plan.step_refs().into_iter().find_map(|(step, def)| {
        let record = records.get(&(step.phase.clone(), step.index as i32))?;
        (record.status == StepStatus::Done && record.checksum != step.checksum).then(|| {
            EngineError::Drift {
                step: step.id(),
                label: def.label(),
            }
        })
    })
}

fn is_done(records: &Records, step: &StepRef) -> bool {
    records
        .get(&(step.phase.clone(), step.index as i32))
        .is_some_and(|r| r.status == StepStatus::Done)
}

async fn run_locked<T: Target>(
    target: &mut T,
    loaded: &LoadedPlan,
    range: std::ops::Range<usize>,
    options: &RunOptions,
    reporter: &mut dyn Reporter,
) -> Result<(), EngineError> {
    let plan = &loaded.plan;
    let started = Instant::now();
    let records = load_records(target, plan).await?;
    if let Some(drift) = find_drift(plan, &records) {
        return Err(drift);
    }
    let steps = plan.step_refs();

    // `--phase P` refuses while an earlier phase is not done.
    if let Some(pending) = steps
        .iter()
        .find(|(s, _)| s.phase_index < range.start && !is_done(&records, s))
    {
        return Err(EngineError::GateNotMet(format!(
            "phase `{}` cannot start: the earlier phase `{}` is not done (step {} {} is {}); run it first",
            plan.phases.value[range.start].value.name(),
            pending.0.phase,
            pending.0.id(),
            pending.1.label(),
            records
                .get(&(pending.0.phase.clone(), pending.0.index as i32))
                .map(|r| r.status.as_str())
                .unwrap_or("pending"),
        )));
    }

    // A phase preceded by a backup: check the tools and the folder before anything runs.
    if let Some(phase_index) = range.clone().find(|&i| {
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
    for phase_index in range {
        let phase = &plan.phases.value[phase_index].value;
        let phase_steps: Vec<&(StepRef, &Step)> = steps
            .iter()
            .filter(|(s, _)| s.phase_index == phase_index)
            .collect();
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
    reporter.emit(&Event::RunEnd {
        outcome: format!("plan {} done", plan.id()),
        elapsed_ms: millis(started.elapsed()),
    });
    Ok(())
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
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

/// The timeouts a step runs under: its own overrides, else the plan's defaults.
pub(crate) fn timeouts_for(plan: &Plan, def: &Step) -> Timeouts {
    Timeouts {
        lock_timeout: def.lock_timeout().unwrap_or(plan.defaults.lock_timeout).0,
        statement_timeout: def
            .statement_timeout()
            .unwrap_or(plan.defaults.statement_timeout)
            .0,
    }
}

/// Runs one step with bounded retries on lock timeouts, deadlocks and serialization failures.
///
/// Before each attempt it looks before it queues: while other sessions hold locks on the step's
/// table that its statement would queue behind (and application queries would then queue behind
/// phased), it waits and looks again instead of attempting. Those waits use the same retry budget.
async fn run_step<T: Target>(
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
    let policy = plan.defaults.retry;
    let allowed = policy.attempts.max(1);
    let needed = def.op().locks();
    let mut attempt = 0u32;
    // A backfill resumes from its checkpoint, even across attempts.
    let mut checkpoint = record.and_then(|r| r.checkpoint.clone());
    loop {
        attempt += 1;
        target
            .begin_step(&StepStart {
                key: &key,
                kind: def.kind_name(),
                label: &label,
                checksum: &step.checksum,
            })
            .await?;
        reporter.emit(&Event::StepStart {
            step: step_id(step, def),
            attempt,
        });
        if let Some((lock, blockers)) = first_blocked(target, &needed).await? {
            let lines: Vec<String> = blockers.iter().map(ToString::to_string).collect();
            let message = format!(
                "not attempted: {} other session(s) hold locks on `{}` that conflict with the {} lock this step needs; \
                 queueing behind them would make application queries queue behind phased{}",
                blockers.len(),
                lock.table,
                lock.mode,
                blocked_by(&lines)
            );
            if attempt < allowed {
                let wait = retry::backoff(&policy, attempt);
                reporter.emit(&Event::StepWaiting {
                    step: step_id(step, def),
                    attempt,
                    table: lock.table.to_string(),
                    lock: lock.mode.to_string(),
                    blockers: lines,
                    wait_ms: millis(wait),
                });
                target.fail_step(&key, &message).await?;
                tokio::time::sleep(wait).await;
                continue;
            }
            let message = format!(
                "{message}\ngave up after {attempt} attempt(s) (retry.attempts); run again once they are gone"
            );
            target.fail_step(&key, &message).await?;
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
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let mut message = error.to_string();
        let mut lines = Vec::new();
        if error.is_retryable() {
            // Who was in the way (best effort: a failure to look must not hide the real error).
            for lock in locks_to_report(def, &needed) {
                if let Ok(found) = target.blockers(&lock.table, lock.mode).await {
                    lines.extend(found.iter().map(ToString::to_string));
                }
            }
            message.push_str(&blocked_by(&lines));
        }
        // A backfill that moved its checkpoint before failing made progress: its retry budget
        // starts again, so hours of batches are not cut short by a few scattered lock timeouts.
        if error.is_retryable() && checkpoint != checkpoint_before {
            attempt = 1;
        }
        if error.is_retryable() && attempt < allowed {
            let wait = retry::backoff(&policy, attempt);
            reporter.emit(&Event::StepRetry {
                step: step_id(step, def),
                attempt,
                error: message.clone(),
                wait_ms: millis(wait),
                blockers: lines,
            });
            target.fail_step(&key, &message).await?;
            tokio::time::sleep(wait).await;
            continue;
        }
        if error.is_retryable() {
            message.push_str(&format!(
                "\ngave up after {attempt} attempt(s) (retry.attempts)"
            ));
        }
        let sql = error.sql().map(str::to_string);
        let recorded = match &sql {
            Some(sql) => format!("{message}\nSQL: {sql}"),
            None => message.clone(),
        };
        target.fail_step(&key, &recorded).await?;
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

/// The first needed lock that other sessions stand in the way of, with who they are.
async fn first_blocked<T: Target>(
    target: &mut T,
    needed: &[TableLock],
) -> Result<Option<(TableLock, Vec<Blocker>)>, DbError> {
    for lock in needed {
        let found = target.blockers(&lock.table, lock.mode).await?;
        if !found.is_empty() {
            return Ok(Some((lock.clone(), found)));
        }
    }
    Ok(None)
}

/// The locks to name blockers for after a failed attempt: the needed ones; for a backfill, who
/// conflicts with its ROW EXCLUSIVE; for anything else on a table (a `CONCURRENTLY` index build
/// or drop, which waits for every transaction that holds a lock on the table), every holder.
fn locks_to_report(def: &Step, needed: &[TableLock]) -> Vec<TableLock> {
    if !needed.is_empty() {
        return needed.to_vec();
    }
    let mode = match def {
        Step::Backfill(_) => LockMode::RowExclusive,
        _ => LockMode::AccessExclusive,
    };
    def.table()
        .map(|table| {
            vec![TableLock {
                table: table.clone(),
                mode,
            }]
        })
        .unwrap_or_default()
}

/// `\nblocked by …` lines, for messages and the recorded last_error.
fn blocked_by(lines: &[String]) -> String {
    lines
        .iter()
        .map(|l| format!("\n  blocked by {l}"))
        .collect()
}

/// One attempt at a step.
#[allow(clippy::too_many_arguments)]
async fn execute<T: Target>(
    target: &mut T,
    loaded: &LoadedPlan,
    step: &StepRef,
    def: &Step,
    key: &StepKey,
    checkpoint: &mut Option<String>,
    options: &RunOptions,
    reporter: &mut dyn Reporter,
) -> Result<(), DbError> {
    let plan = &loaded.plan;
    let timeouts = timeouts_for(plan, def);
    match def {
        Step::Backfill(b) => {
            backfill::run(
                target,
                key,
                b,
                timeouts,
                checkpoint,
                options.throttle_file.as_deref(),
                &step_id(step, def),
                reporter,
            )
            .await
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
                .await
        }
        Step::Command(c) => {
            command::run(c, &loaded.base_dir, reporter).await?;
            target.finish_step(key).await
        }
        Step::Migrations(m) => {
            super::migrations::run_step(target, &loaded.base_dir, m, key, checkpoint, timeouts)
                .await
        }
        _ => {
            let units = def
                .op()
                .units(target.dialect())
                .map_err(|e| DbError::Unexpected(e.to_string()))?;
            target.apply(key, &units, timeouts).await
        }
    }
}
