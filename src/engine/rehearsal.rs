//! Before a run sends anything, its pending steps are rehearsed in order on a copy of the
//! target's schema without rows (`Catalog::schema_copy`: SQLite, in memory), so that a step the
//! catalog says cannot run there (SQLite: a rename of a NOT NULL column without a default, a
//! type change of a constrained column, a view over a table without a primary key) is refused
//! before the first step runs even when an earlier step of the same plan creates or changes its
//! table. Each step renders from the facts as the steps before it leave them, as it will in the
//! run.
//!
//! The rehearsal never blocks a run for any other reason: where it cannot follow the plan (a
//! step that fails on a schema without rows, a program or versioned migrations whose effect on
//! the schema it cannot know) it stops and says so in a debug log, and the steps after that
//! point are checked at their turn, as before. It runs no gate, program or backfill, takes no
//! backup, and touches neither the target nor its state or flags.
//!
//! `phased validate --dialect sqlite` rehearses the whole plan the same way on an empty
//! database ([`offline_refusal`]): what the plan's own steps make is all it can see, so steps
//! on tables the plan does not create are passed over.

use super::records::key_of;
use super::EngineError;
use crate::db::{Database, StepStart, StepStatus, Timeouts};
use crate::plan::{Plan, Step, StepRef};

/// A step the rehearsal found cannot run, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    pub step: StepRef,
    pub label: String,
    pub why: String,
}

/// What a rehearsal does with a step on a table the copy does not have.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Absent {
    /// Stop: before a run, the copy has every table the target has, so the step would fail
    /// (or something the rehearsal did not follow made the table).
    Stop,
    /// Pass it over: offline, the copy has only the tables the plan makes.
    PassOver,
}

/// Rehearses `pending` (in run order) on a schema copy of `target`: the refusal of the first step
/// that cannot run there, located and saying that nothing was run; Ok when none refuses, when
/// the rehearsal stops early, or when the target has no cheap copy (PostgreSQL).
pub(super) async fn refuse_before_run<T: Database>(
    target: &mut T,
    plan: &Plan,
    pending: &[&(StepRef, &Step)],
) -> Result<(), EngineError> {
    if pending.is_empty() {
        return Ok(());
    }
    let mut copy = match target.schema_copy().await {
        Ok(Some(copy)) => copy,
        Ok(None) => return Ok(()),
        Err(e) => {
            tracing::debug!(error = %e, "no rehearsal before the run: the schema could not be copied; each step is checked at its turn");
            return Ok(());
        }
    };
    let steps = pending.iter().map(|p| (&p.0, p.1));
    match rehearse(&mut copy, plan, steps, Absent::Stop).await {
        None => Ok(()),
        Some(refused) => Err(EngineError::Usage(format!(
            "step {} `{}` cannot run on {}: {}; nothing was run",
            refused.step.id(),
            refused.label,
            target.dialect().as_str(),
            refused.why
        ))),
    }
}

/// Rehearses every step of `plan` on `empty`, a database with no tables (`validate --dialect`,
/// which has no catalog): the first step that cannot run on a table the plan itself makes.
pub async fn offline_refusal<T: Database>(empty: &mut T, plan: &Plan) -> Option<Refused> {
    let steps = plan.step_refs();
    rehearse(
        empty,
        plan,
        steps.iter().map(|(s, d)| (s, *d)),
        Absent::PassOver,
    )
    .await
}

/// Applies `steps` in order on `copy`, each rendered from the copy's facts as the steps before
/// it left them; the first refusal, or None when there is none or the rehearsal stops.
async fn rehearse<'a, T: Database>(
    copy: &mut T,
    plan: &Plan,
    steps: impl Iterator<Item = (&'a StepRef, &'a Step)>,
    absent: Absent,
) -> Option<Refused> {
    let dialect = copy.dialect();
    if let Err(e) = copy.ensure_state().await {
        tracing::debug!(error = %e, "no rehearsal: the copy's state could not be made; each step is checked at its turn");
        return None;
    }
    for (step, def) in steps {
        let stop = |why: String| {
            tracing::debug!(
                step = %step.id(),
                label = %def.label(),
                "the rehearsal stops here ({why}); this step and the ones after it are checked at their turn"
            );
        };
        match def {
            // Rows and flags: nothing a later step's SQL depends on.
            Step::Backfill(_) | Step::Flag(_) => continue,
            Step::Command(_) => {
                stop("a program may change the schema in ways the rehearsal cannot know".into());
                return None;
            }
            Step::Migrations(_) => {
                stop("versioned migrations are not rehearsed".into());
                return None;
            }
            _ => {}
        }
        let op = def.op();
        if op.unsupported_on(dialect).is_some() {
            // Said on its own, before a run and by `validate --dialect`.
            stop("the database cannot run it at all".into());
            return None;
        }
        if absent == Absent::PassOver {
            if let Some(table) = op.table().or(op.facts_of()) {
                match copy.table_facts(table.as_str()).await {
                    Ok(facts) if facts.exists => {}
                    Ok(_) => continue,
                    Err(e) => {
                        stop(format!("reading `{table}` failed: {e}"));
                        return None;
                    }
                }
            }
        }
        let units = match op.facts_of() {
            Some(table) => {
                let facts = match copy.table_facts(table.as_str()).await {
                    Ok(facts) => facts,
                    Err(e) => {
                        stop(format!("reading `{table}` failed: {e}"));
                        return None;
                    }
                };
                if !facts.exists {
                    stop(format!("no table `{table}` on the copy"));
                    return None;
                }
                match op.units_with(dialect, &facts) {
                    Ok(units) => units,
                    Err(why) => {
                        return Some(Refused {
                            step: step.clone(),
                            label: def.label(),
                            why: why.to_string(),
                        })
                    }
                }
            }
            None => match op.units(dialect) {
                Ok(units) => units,
                Err(e) => {
                    stop(format!("it does not render: {e}"));
                    return None;
                }
            },
        };
        let key = key_of(plan, step);
        let begun = copy
            .begin_step(&StepStart {
                key: &key,
                kind: def.kind_name(),
                label: &def.label(),
                checksum: &step.checksum,
            })
            .await;
        let applied = match begun {
            Ok(()) => {
                copy.apply(
                    &key,
                    &units,
                    Timeouts::default(),
                    StepStatus::Done,
                    &mut |_| {},
                )
                .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = applied {
            stop(format!("it failed on the copy: {e}"));
            return None;
        }
    }
    None
}
