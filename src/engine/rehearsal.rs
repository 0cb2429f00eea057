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

use super::records::key_of;
use super::EngineError;
use crate::db::{Database, StepStart, StepStatus, Timeouts};
use crate::plan::{Plan, Step, StepRef};

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
    let dialect = target.dialect();
    let mut copy = match target.schema_copy().await {
        Ok(Some(copy)) => copy,
        Ok(None) => return Ok(()),
        Err(e) => {
            tracing::debug!(error = %e, "no rehearsal before the run: the schema could not be copied; each step is checked at its turn");
            return Ok(());
        }
    };
    if let Err(e) = copy.ensure_state().await {
        tracing::debug!(error = %e, "no rehearsal before the run: the copy's state could not be made; each step is checked at its turn");
        return Ok(());
    }
    for (step, def) in pending.iter().map(|p| (&p.0, p.1)) {
        let stop = |why: String| {
            tracing::debug!(
                step = %step.id(),
                label = %def.label(),
                "the rehearsal before the run stops here ({why}); this step and the ones after it are checked at their turn"
            );
        };
        match def {
            // Rows and flags: nothing a later step's SQL depends on.
            Step::Backfill(_) | Step::Flag(_) => continue,
            Step::Command(_) => {
                stop("a program may change the schema in ways the rehearsal cannot know".into());
                return Ok(());
            }
            Step::Migrations(_) => {
                stop("versioned migrations are not rehearsed".into());
                return Ok(());
            }
            _ => {}
        }
        let op = def.op();
        let units = match op.facts_of() {
            Some(table) => {
                let facts = match copy.table_facts(table.as_str()).await {
                    Ok(facts) => facts,
                    Err(e) => {
                        stop(format!("reading `{table}` failed: {e}"));
                        return Ok(());
                    }
                };
                if !facts.exists {
                    stop(format!("no table `{table}` on the copy"));
                    return Ok(());
                }
                match op.units_with(dialect, &facts) {
                    Ok(units) => units,
                    Err(why) => {
                        return Err(EngineError::Usage(format!(
                            "step {} `{}` cannot run on {}: {why}; nothing was run",
                            step.id(),
                            def.label(),
                            dialect.as_str()
                        )))
                    }
                }
            }
            None => match op.units(dialect) {
                Ok(units) => units,
                Err(e) => {
                    stop(format!("it does not render: {e}"));
                    return Ok(());
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
            return Ok(());
        }
    }
    Ok(())
}
