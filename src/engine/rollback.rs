//! `phased rollback`: undoes the done steps of the phases after `--to` (of all phases without
//! it), newest first, each through its inverse, under the plan's lease. Each undone step is
//! recorded `rolled_back` (in the inverse's own transaction where it has one), so an interrupted
//! rollback resumes where it stopped and a later `phased run` does the steps again.

use std::time::Instant;

use super::events::{Event, Outcome, Reporter};
use super::lock_policy::{self, blocked_by, Attempts};
use super::records::{find_drift, key_of, load_records, millis, step_id, timeouts_for, Records};
use super::{backfill, command, EngineError};
use crate::db::{Database, DbError, LockMode, StepStatus};
use crate::ops::{inverse_of, put_back, Dialect, Inverse, Recorded, Remembered};
use crate::plan::{LoadedPlan, PhaseKind, Step, StepRef};

/// How far to roll back.
#[derive(Debug, Clone, Default)]
pub struct RollbackOptions {
    /// Keep this phase and the ones before it; undo the ones after. All phases when None.
    pub to: Option<String>,
}

/// Rolls back a plan. Returns the steps undone, newest first.
pub async fn rollback<T: Database>(
    target: &mut T,
    loaded: &LoadedPlan,
    options: &RollbackOptions,
    reporter: &mut dyn Reporter,
) -> Result<Vec<String>, EngineError> {
    let plan = &loaded.plan;
    let start = match &options.to {
        None => 0,
        Some(name) => {
            plan.phase_index(name).ok_or_else(|| {
                let names: Vec<&str> = plan.phases().map(|p| p.name()).collect();
                EngineError::Usage(format!(
                    "plan `{}` has no phase `{name}`; its phases are: {}",
                    plan.id(),
                    names.join(", ")
                ))
            })? + 1
        }
    };
    target.ensure_state().await?;
    if let Some(holder) = target.acquire_lease(plan.id()).await? {
        return Err(EngineError::LeaseHeld {
            plan: plan.id().to_string(),
            holder: holder.description,
        });
    }
    let result = rollback_locked(target, loaded, start, options, reporter).await;
    let released = target.release_lease(plan.id()).await;
    let undone = result?;
    released?;
    Ok(undone)
}

fn status_of(records: &Records, step: &StepRef) -> StepStatus {
    records
        .get(&(step.phase.clone(), step.index as i32))
        .map(|r| r.status)
        .unwrap_or(StepStatus::Pending)
}

async fn rollback_locked<T: Database>(
    target: &mut T,
    loaded: &LoadedPlan,
    start: usize,
    options: &RollbackOptions,
    reporter: &mut dyn Reporter,
) -> Result<Vec<String>, EngineError> {
    let plan = &loaded.plan;
    let started = Instant::now();
    let records = load_records(target, plan).await?;
    if let Some(drift) = find_drift(plan, &records) {
        return Err(drift);
    }
    let steps = plan.step_refs();

    // What a completed contract phase removed is gone: only a backup brings it back.
    for (index, phase) in plan.phases().enumerate().skip(start) {
        let phase_steps: Vec<_> = steps
            .iter()
            .filter(|(s, _)| s.phase_index == index)
            .collect();
        let complete = phase_steps
            .iter()
            .all(|(s, _)| status_of(&records, s) == StepStatus::Done);
        if phase.kind() == PhaseKind::Contract && complete {
            let (last, def) = phase_steps.last().ok_or_else(|| {
                EngineError::Usage(format!("phase `{}` has no steps", phase.name()))
            })?;
            return Err(EngineError::Irreversible {
                step: last.id(),
                label: def.label(),
                reason: format!(
                    "phase `{}` is a completed contract phase, and rollback never goes past one: what it \
                     dropped cannot be rebuilt from the plan. Restore the backup taken before it instead: \
                     `phased backups {}` lists them, `phased restore BACKUP` restores one",
                    phase.name(),
                    loaded.file
                ),
                undone: Vec::new(),
            });
        }
    }

    reporter.emit(&Event::RollbackStart {
        plan: plan.id().to_string(),
        database: target.describe(),
        to: options.to.clone(),
        // The phases with something to undo.
        phases: plan
            .phases()
            .enumerate()
            .skip(start)
            .filter(|(i, _)| {
                steps.iter().any(|(s, _)| {
                    s.phase_index == *i
                        && !matches!(
                            status_of(&records, s),
                            StepStatus::Pending | StepStatus::RolledBack
                        )
                })
            })
            .map(|(_, p)| p.name().to_string())
            .collect(),
    });
    let mut undone = Vec::new();
    for (step, def) in steps.iter().rev().filter(|(s, _)| s.phase_index >= start) {
        let status = status_of(&records, step);
        if matches!(status, StepStatus::Pending | StepStatus::RolledBack) {
            continue;
        }
        let id = step_id(step, def);
        let key = key_of(plan, step);
        let checkpoint = records
            .get(&(step.phase.clone(), step.index as i32))
            .and_then(|r| r.checkpoint.as_deref());
        // A step that did not finish but committed a part its inverse cannot take back (a
        // `change_type` swap whose foreign keys were not validated yet) says so and stops
        // the rollback, rather than report nothing to undo.
        if status != StepStatus::Done && def.op().committed_part(checkpoint, None).is_some() {
            let facts = match def.op().facts_of() {
                Some(table) => target.table_facts(table.as_str()).await.ok(),
                None => None,
            };
            let reason = def
                .op()
                .committed_part(checkpoint, facts.as_ref())
                .unwrap_or_default();
            return Err(EngineError::Irreversible {
                step: step.id(),
                label: def.label(),
                reason,
                undone,
            });
        }
        let inverse = match inverse_of(plan, def, status, target.dialect()) {
            Inverse::Recorded(what) => {
                put_back_recorded(&what, checkpoint, status, target.dialect())
            }
            other => other,
        };
        if let Inverse::Irreversible(reason) = &inverse {
            return Err(EngineError::Irreversible {
                step: step.id(),
                label: def.label(),
                reason: reason.clone(),
                undone,
            });
        }
        reporter.emit(&Event::StepUndo {
            step: id.clone(),
            inverse: inverse.describe(),
        });
        let step_started = Instant::now();
        let fail = |error: DbError, undone: &Vec<String>| EngineError::UndoFailed {
            step: step.id(),
            label: def.label(),
            sql: error.sql().map(str::to_string),
            error: error.to_string(),
            undone: undone.clone(),
        };
        match &inverse {
            Inverse::Nothing(_) => {
                target.set_step_status(&key, StepStatus::RolledBack).await?;
            }
            Inverse::Units(units) => {
                let timeouts = timeouts_for(plan, def);
                let needed = def.op().inverse_locks(units);
                let mut attempts = Attempts::new(plan.defaults.retry);
                loop {
                    let attempt = attempts.begin();
                    // Look before queueing, as a run does: an inverse that queues behind a
                    // long reader would make every query on the table queue behind it.
                    if let Some(blocked) = lock_policy::look(target, &needed).await? {
                        match attempts.wait() {
                            Some(wait) => {
                                reporter.emit(&Event::StepWaiting {
                                    step: id.clone(),
                                    attempt,
                                    table: blocked.lock.table.to_string(),
                                    lock: blocked.lock.mode.to_string(),
                                    blockers: blocked.lines(),
                                    wait_ms: millis(wait),
                                });
                                tokio::time::sleep(wait).await;
                                continue;
                            }
                            None => {
                                let error = format!(
                                    "{}{}; run again once they are gone",
                                    blocked.message(),
                                    attempts.gave_up()
                                );
                                reporter.emit(&Event::StepFailed {
                                    step: id.clone(),
                                    error: error.clone(),
                                    sql: None,
                                });
                                return Err(EngineError::UndoFailed {
                                    step: step.id(),
                                    label: def.label(),
                                    error,
                                    sql: None,
                                    undone,
                                });
                            }
                        }
                    }
                    let mut progress = |p: &crate::db::IndexProgress| {
                        reporter.emit(&Event::IndexProgress {
                            step: id.clone(),
                            progress: p.clone(),
                        })
                    };
                    let applied = target
                        .apply(&key, units, timeouts, StepStatus::RolledBack, &mut progress)
                        .await;
                    match applied {
                        Ok(()) => break,
                        Err(e) => {
                            let blockers = if e.is_retryable() {
                                lock_policy::who_was_in_the_way(
                                    target,
                                    &needed,
                                    def.table(),
                                    LockMode::AccessExclusive,
                                )
                                .await
                            } else {
                                Vec::new()
                            };
                            if let Some(wait) = attempts.retry_after(&e) {
                                reporter.emit(&Event::StepRetry {
                                    step: id.clone(),
                                    attempt,
                                    error: format!("{e}{}", blocked_by(&blockers)),
                                    wait_ms: millis(wait),
                                    blockers,
                                });
                                tokio::time::sleep(wait).await;
                                continue;
                            }
                            reporter.emit(&Event::StepFailed {
                                step: id.clone(),
                                error: format!("{e}{}", blocked_by(&blockers)),
                                sql: e.sql().map(str::to_string),
                            });
                            return Err(fail(e, &undone));
                        }
                    }
                }
            }
            Inverse::Backfill(walk) => {
                // While the walk goes the step is not done: `rollback` again resumes the walk,
                // `run` fills the rows again (from the start: it never resumes from where the
                // walk stopped).
                target
                    .fail_step(
                        &key,
                        "rolling back: its `down` is being walked in batches; `phased rollback` resumes the walk, `phased run` fills the rows again",
                    )
                    .await?;
                let timeouts = timeouts_for(plan, def);
                let mut checkpoint = None;
                let mut attempts = Attempts::new(plan.defaults.retry);
                loop {
                    let attempt = attempts.begin();
                    let before = checkpoint.clone();
                    let walked = backfill::run(
                        target,
                        &key,
                        walk,
                        &walk.key_from_plan(plan),
                        timeouts,
                        &mut checkpoint,
                        None,
                        &id,
                        reporter,
                        backfill::Direction::Down,
                        None,
                    )
                    .await;
                    let Err(e) = walked else { break };
                    if e.is_retryable() && checkpoint != before {
                        attempts.made_progress();
                    }
                    if let Some(wait) = attempts.retry_after(&e) {
                        reporter.emit(&Event::StepRetry {
                            step: id.clone(),
                            attempt,
                            error: e.to_string(),
                            wait_ms: millis(wait),
                            blockers: Vec::new(),
                        });
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    reporter.emit(&Event::StepFailed {
                        step: id.clone(),
                        error: e.to_string(),
                        sql: e.sql().map(str::to_string),
                    });
                    return Err(fail(e, &undone));
                }
            }
            Inverse::Flag { name } => {
                let record = records.get(&(step.phase.clone(), step.index as i32));
                let remembered = record
                    .and_then(|r| r.checkpoint.as_deref())
                    .and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok());
                let Some(remembered) = remembered else {
                    return Err(EngineError::Irreversible {
                        step: step.id(),
                        label: def.label(),
                        reason: format!(
                            "the value flag `{name}` had before this step was not recorded; \
                             set it by hand with `phased flags set {name} VALUE`"
                        ),
                        undone,
                    });
                };
                let previous = remembered
                    .get("previous")
                    .and_then(|v| v.as_str())
                    .map(str::to_string);
                target
                    .restore_flag(name, previous.as_deref(), &key)
                    .await
                    .map_err(|e| fail(e, &undone))?;
            }
            Inverse::Command(argv) => {
                let Step::Command(c) = def else {
                    return Err(EngineError::Usage(
                        "command inverse of a non-command step".into(),
                    ));
                };
                if let Err(e) = command::run_argv(argv, c, &loaded.base_dir, reporter).await {
                    reporter.emit(&Event::StepFailed {
                        step: id.clone(),
                        error: e.to_string(),
                        sql: None,
                    });
                    return Err(fail(e, &undone));
                }
                target.set_step_status(&key, StepStatus::RolledBack).await?;
            }
            Inverse::Migrations => {
                let Step::Migrations(m) = def else {
                    return Err(EngineError::Usage(
                        "migrations inverse of another step".into(),
                    ));
                };
                let checkpoint = records
                    .get(&(step.phase.clone(), step.index as i32))
                    .and_then(|r| r.checkpoint.as_deref());
                let policy = plan.defaults.retry;
                if let Err(e) = super::migrations::rollback_step(
                    target,
                    &loaded.base_dir,
                    m,
                    checkpoint,
                    timeouts_for(plan, def),
                    Some(&policy),
                )
                .await
                {
                    reporter.emit(&Event::StepFailed {
                        step: id.clone(),
                        error: e.to_string(),
                        sql: None,
                    });
                    return Err(EngineError::UndoFailed {
                        step: step.id(),
                        label: def.label(),
                        error: e.to_string(),
                        sql: None,
                        undone,
                    });
                }
                target.set_step_status(&key, StepStatus::RolledBack).await?;
            }
            Inverse::Irreversible(_) | Inverse::Recorded(_) => {
                unreachable!("handled above")
            }
        }
        // (Rolling back cleared its checkpoint in the same statement: a backfill done again
        // starts from the beginning; a flag records its previous value anew.)
        undone.push(format!("{} {}", step.id(), def.label()));
        reporter.emit(&Event::StepUndone {
            step: id,
            elapsed_ms: millis(step_started.elapsed()),
        });
    }
    reporter.emit(&Event::RunEnd {
        outcome: Outcome::RolledBack,
        remaining: Vec::new(),
        elapsed_ms: millis(started.elapsed()),
    });
    Ok(undone)
}

/// The units that put back what a step recorded in its checkpoint before it ran. A step that
/// recorded nothing and did not finish dropped nothing (the record comes first); a done step
/// without a record ran before phased recorded definitions.
fn put_back_recorded(
    what: &Remembered,
    checkpoint: Option<&str>,
    status: StepStatus,
    dialect: Dialect,
) -> Inverse {
    match Recorded::from_checkpoint(checkpoint) {
        Some(recorded) => match put_back(what, &recorded, dialect) {
            Ok(units) if units.is_empty() => Inverse::Nothing(format!(
                "{} was not there when the step ran",
                what.describe()
            )),
            Ok(units) => Inverse::Units(units),
            Err(why) => Inverse::Irreversible(why),
        },
        None if status != StepStatus::Done => Inverse::Nothing(format!(
            "it recorded nothing, so it changed nothing of {}",
            what.describe()
        )),
        None => Inverse::Irreversible(format!(
            "{} was not recorded in the step's state (the step ran before phased recorded \
             what it drops); only a backup brings it back (`phased restore`)",
            what.describe()
        )),
    }
}
