//! What the engine's parts share about a plan's recorded state: the records by step, a step's
//! key and id, drift, the timeouts a step runs under. Its own module so that the runner, the
//! gate, backups, rollback, status and migrations use it without calling each other.

use std::collections::HashMap;
use std::time::Duration;

use super::events::StepId;
use super::EngineError;
use crate::db::{Database, DbError, StepKey, StepRecord, StepStatus, Timeouts};
use crate::plan::{Plan, Step, StepRef};

/// The recorded state of every step, by (phase, index).
pub(crate) type Records = HashMap<(String, i32), StepRecord>;

pub(crate) async fn load_records<T: Database>(
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
        (record.status == StepStatus::Done && !step.matches_checksum(&record.checksum)).then(|| {
            EngineError::Drift {
                step: step.id(),
                label: def.label(),
            }
        })
    })
}

/// Milliseconds, for events.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The timeouts a step runs under: its own overrides, else the plan's defaults.
pub(crate) fn timeouts_for(plan: &Plan, def: &Step) -> Timeouts {
    Timeouts {
        lock_timeout: def.lock_timeout().unwrap_or(plan.defaults.lock_timeout).0,
        statement_timeout: def
            .statement_timeout()
            .unwrap_or(plan.defaults.statement_timeout)
            .0,
        index_wait: def
            .index_wait_timeout()
            .unwrap_or(plan.defaults.index_wait_timeout)
            .0,
    }
}
