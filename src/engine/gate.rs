//! Gates: conditions that must hold before a phase starts (`sql`, `flag`, `phase_done`, `wait`).

use std::time::{Duration, Instant};

use super::events::{Event, Reporter};
use super::records::load_records;
use super::EngineError;
use crate::db::{Database, DbError, StepStatus};
use crate::plan::{FlagGate, Gate, Phase, Plan};

/// One condition's result.
#[derive(Debug, Clone, PartialEq)]
pub struct GateOutcome {
    pub condition: String,
    pub ok: bool,
    pub detail: String,
}

/// Checks every gate of a phase; all must hold.
pub async fn evaluate<T: Database>(
    target: &mut T,
    plan: &Plan,
    phase: &Phase,
) -> Result<Vec<GateOutcome>, DbError> {
    let mut outcomes = Vec::new();
    for gate in &phase.gate {
        outcomes.push(evaluate_one(target, plan, &gate.value).await?);
    }
    Ok(outcomes)
}

async fn evaluate_one<T: Database>(
    target: &mut T,
    plan: &Plan,
    gate: &Gate,
) -> Result<GateOutcome, DbError> {
    match gate {
        Gate::Sql(sql) => sql_condition(target, sql).await,
        Gate::Flag(flag) => flag_condition(target, flag).await,
        Gate::PhaseDone(name) => phase_done(target, plan, name).await,
        Gate::Wait(wait) => {
            let deadline = Instant::now() + wait.timeout.0;
            loop {
                let outcome = if let Some(sql) = &wait.sql {
                    sql_condition(target, sql).await?
                } else if let Some(flag) = &wait.flag {
                    flag_condition(target, flag).await?
                } else if let Some(name) = &wait.phase_done {
                    phase_done(target, plan, name).await?
                } else {
                    return Err(DbError::Unexpected("a wait gate needs a condition".into()));
                };
                if outcome.ok || Instant::now() >= deadline {
                    return Ok(GateOutcome {
                        condition: gate.describe(),
                        ok: outcome.ok,
                        detail: outcome.detail,
                    });
                }
                let left = deadline.saturating_duration_since(Instant::now());
                tokio::time::sleep(wait.interval.0.min(left).max(Duration::from_millis(10))).await;
            }
        }
    }
}

async fn sql_condition<T: Database>(target: &mut T, sql: &str) -> Result<GateOutcome, DbError> {
    let (ok, detail) = match target.query_bool(sql).await {
        Ok(value) => (value, format!("returned {value}")),
        Err(e) => (false, format!("failed: {e}")),
    };
    Ok(GateOutcome {
        condition: Gate::Sql(sql.to_string()).describe(),
        ok,
        detail,
    })
}

async fn flag_condition<T: Database>(
    target: &mut T,
    flag: &FlagGate,
) -> Result<GateOutcome, DbError> {
    let current = target
        .flags()
        .await?
        .into_iter()
        .find(|f| f.name == flag.name)
        .map(|f| f.value);
    let ok = current.as_deref() == Some(flag.is.0.as_str());
    Ok(GateOutcome {
        condition: flag.describe(),
        ok,
        detail: match current {
            Some(v) => format!("it is {v}"),
            None => "it is not set".to_string(),
        },
    })
}

async fn phase_done<T: Database>(
    target: &mut T,
    plan: &Plan,
    name: &str,
) -> Result<GateOutcome, DbError> {
    let records = load_records(target, plan).await?;
    let phase = plan.phase(name);
    let total = phase.map(|p| p.steps.value.len()).unwrap_or(0);
    let done = (0..total)
        .filter(|i| {
            records
                .get(&(name.to_string(), *i as i32))
                .is_some_and(|r| r.status == StepStatus::Done)
        })
        .count();
    Ok(GateOutcome {
        condition: Gate::PhaseDone(name.to_string()).describe(),
        ok: phase.is_some() && done == total,
        detail: format!("{done} of {total} steps done"),
    })
}

/// Checks a phase's gate before it starts; reports each condition; GateNotMet when any fails.
pub async fn check_phase<T: Database>(
    target: &mut T,
    plan: &Plan,
    phase: &Phase,
    reporter: &mut dyn Reporter,
) -> Result<(), EngineError> {
    let outcomes = evaluate(target, plan, phase).await?;
    let mut failing = Vec::new();
    for outcome in outcomes {
        reporter.emit(&Event::GateResult {
            phase: phase.name().to_string(),
            condition: outcome.condition.clone(),
            ok: outcome.ok,
            detail: outcome.detail.clone(),
        });
        if !outcome.ok {
            failing.push(format!("{} ({})", outcome.condition, outcome.detail));
        }
    }
    if failing.is_empty() {
        Ok(())
    } else {
        Err(EngineError::GateNotMet(format!(
            "the gate of phase `{}` is not met: {}",
            phase.name(),
            failing.join("; ")
        )))
    }
}
