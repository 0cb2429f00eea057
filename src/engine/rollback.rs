//! `phased rollback`: undoes the done steps of the phases after `--to` (of all phases without
//! it), newest first, each through its inverse, under the plan's lease. Each undone step is
//! recorded `rolled_back` (in the inverse's own transaction where it has one), so an interrupted
//! rollback resumes where it stopped and a later `phased run` does the steps again.

use std::collections::HashSet;
use std::time::Instant;

use super::events::{Event, Reporter};
use super::lock_policy::{self, blocked_by, Attempts};
use super::runner::{find_drift, key_of, load_records, millis, step_id, timeouts_for, Records};
use super::{command, EngineError};
use crate::db::render::{render_step, render_step_down};
use crate::db::{Database, DbError, Dialect, LockMode, StepStatus, TableLock, Unit};
use crate::plan::{LoadedPlan, PhaseKind, Plan, Step, StepRef};

/// How far to roll back.
#[derive(Debug, Clone, Default)]
pub struct RollbackOptions {
    /// Keep this phase and the ones before it; undo the ones after. All phases when None.
    pub to: Option<String>,
}

/// How one step is undone.
#[derive(Debug, Clone, PartialEq)]
pub enum Inverse {
    /// Nothing to run: the step left nothing behind (a failed atomic step, a backfill into
    /// columns this plan added, which go with their `add_column`).
    Nothing(String),
    /// SQL units.
    Units(Vec<Unit>),
    /// Put a flag back to the value it had (remove it when it had none).
    Flag { name: String },
    /// Run the command step's `down`.
    Command(Vec<String>),
    /// Downgrade the versioned migrations to the revisions recorded before the step ran.
    Migrations,
    /// No inverse: rollback stops here.
    Irreversible(String),
}

impl Inverse {
    /// A one-line description for events and dry runs.
    pub fn describe(&self) -> String {
        match self {
            Inverse::Nothing(why) => format!("nothing to undo ({why})"),
            Inverse::Units(units) => units
                .iter()
                .map(Unit::sql_text)
                .collect::<Vec<_>>()
                .join("; "),
            Inverse::Flag { name } => format!("put flag `{name}` back to its previous value"),
            Inverse::Command(argv) => format!("run {}", argv.join(" ")),
            Inverse::Migrations => {
                "downgrade the migrations to the revisions recorded before the step".to_string()
            }
            Inverse::Irreversible(why) => format!("irreversible: {why}"),
        }
    }
}

/// The columns (table, column) and tables this plan creates: a backfill into them needs no undo.
fn added_by_plan(plan: &Plan) -> (HashSet<(String, String)>, HashSet<String>) {
    let mut columns = HashSet::new();
    let mut tables = HashSet::new();
    for phase in plan.phases() {
        for step in phase.steps() {
            match step {
                Step::AddColumn(c) => {
                    columns.insert((c.table.clone(), c.name.clone()));
                }
                Step::CreateTable(t) => {
                    tables.insert(t.name.clone());
                }
                _ => {}
            }
        }
    }
    (columns, tables)
}

/// The inverse of a step in the state it was left in. Pure: no database needed.
pub fn inverse_of(plan: &Plan, def: &Step, status: StepStatus, dialect: Dialect) -> Inverse {
    let done = status == StepStatus::Done;
    // A failed or interrupted step whose work is one transaction left nothing behind.
    let atomic = matches!(
        render_step(def, dialect).as_deref(),
        Ok([Unit::Transaction(_)] | [Unit::RebuildTable { .. }])
    );
    if !done && (atomic || matches!(def, Step::Flag(_))) {
        return Inverse::Nothing("its transaction never committed".to_string());
    }
    match def {
        Step::Backfill(b) => {
            let (columns, tables) = added_by_plan(plan);
            let into_new = tables.contains(&b.table)
                || b.set
                    .keys()
                    .all(|c| columns.contains(&(b.table.clone(), c.clone())));
            if into_new {
                return Inverse::Nothing(
                    "it filled columns this plan added, which go with their add_column".to_string(),
                );
            }
            match &b.down {
                Some(sql) => Inverse::Units(vec![Unit::Transaction(vec![sql.clone()])]),
                None => Inverse::Irreversible(
                    "it changed pre-existing columns and has no `down` SQL to restore them"
                        .to_string(),
                ),
            }
        }
        Step::Flag(f) => Inverse::Flag {
            name: f.name.clone(),
        },
        // Partly applied or done, the downgrade goes back to where the step started.
        Step::Migrations(_) => Inverse::Migrations,
        Step::Command(c) if !done => Inverse::Nothing(format!(
            "`{}` failed; its `down` only runs for a command that succeeded",
            c.run.join(" ")
        )),
        Step::Command(c) => match &c.down {
            Some(argv) if !argv.is_empty() => Inverse::Command(argv.clone()),
            _ => Inverse::Irreversible("the command step has no `down` to undo it".to_string()),
        },
        Step::DropDualWrite(d) => {
            let recreate = plan
                .phases()
                .flat_map(|p| p.steps())
                .filter(|s| matches!(s, Step::DualWrite(w) if w.table == d.table))
                .last();
            match recreate.map(|s| render_step(s, dialect)) {
                Some(Ok(units)) => Inverse::Units(units),
                _ => Inverse::Irreversible(format!(
                    "the plan has no `dual_write` for `{}` to re-create",
                    d.table
                )),
            }
        }
        other => match render_step_down(other, dialect) {
            Ok(units) => Inverse::Units(units),
            Err(e) => Inverse::Irreversible(e.0),
        },
    }
}

/// Steps of the plan that cannot be undone on any target, outside contract phases (which are
/// undone by restoring a backup): what `validate` warns about.
pub fn irreversible_steps(plan: &Plan) -> Vec<(StepRef, String)> {
    plan.step_refs()
        .into_iter()
        .filter(|(s, _)| plan.phases.value[s.phase_index].value.kind() != PhaseKind::Contract)
        .filter_map(
            |(s, def)| match inverse_of(plan, def, StepStatus::Done, Dialect::Postgres) {
                Inverse::Irreversible(why) => Some((s, why)),
                _ => None,
            },
        )
        .collect()
}

/// The locks an inverse takes that application traffic would queue behind: a transactional
/// inverse (`DROP COLUMN`, `DROP CONSTRAINT`, `DROP TABLE`, `DROP TRIGGER`, a SQLite rebuild)
/// asks for ACCESS EXCLUSIVE (or SHARE ROW EXCLUSIVE) on the step's table; a `CONCURRENTLY`
/// drop takes none worth a look.
fn inverse_locks(def: &Step, units: &[Unit]) -> Vec<TableLock> {
    let transactional = units
        .iter()
        .any(|u| matches!(u, Unit::Transaction(_) | Unit::RebuildTable { .. }));
    let table = match def {
        Step::CreateTable(t) => Some(t.name.as_str()),
        other => other.table(),
    };
    match (transactional, table) {
        (true, Some(table)) => vec![TableLock {
            table: table.to_string(),
            mode: LockMode::AccessExclusive,
        }],
        _ => Vec::new(),
    }
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
        let inverse = inverse_of(plan, def, status, target.dialect());
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
                let needed = inverse_locks(def, units);
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
                                    table: blocked.lock.table.clone(),
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
                    match target
                        .apply(&key, units, timeouts, StepStatus::RolledBack)
                        .await
                    {
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
            Inverse::Irreversible(_) => unreachable!("handled above"),
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
        outcome: "rolled_back".to_string(),
        elapsed_ms: millis(started.elapsed()),
    });
    Ok(undone)
}
