//! `phased verify`: on a scratch copy of the schema, run every phase before the first contract,
//! roll back to the start, and compare the schema with what it was: the automated form of "test
//! the upgrade and the downgrade". The scratch database itself is made and removed by the caller
//! (`db::scratch`).

use serde::Serialize;

use super::events::Reporter;
use super::rollback::{rollback, RollbackOptions};
use super::{run, EngineError, RunOptions};
use crate::db::conversion_check::{Conversion, ConversionCheck};
use crate::db::{Database, Dialect, StepStatus};
use crate::ops::{inverse_of, Inverse};
use crate::plan::{Command, LoadedPlan, PhaseKind, SqlStep, Step};

/// What verify found.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum VerifyOutcome {
    /// Up and back down left the schema as it was.
    Passed {
        phases: Vec<String>,
        steps_undone: usize,
    },
    /// Steps that cannot be undone (nothing was run).
    Irreversible { steps: Vec<IrreversibleStep> },
    /// The schema after rolling back differs from before.
    Differs {
        /// Lines of the schema before that are gone.
        missing: Vec<String>,
        /// Lines of the schema after that were not there before.
        extra: Vec<String>,
    },
    /// Running or rolling back failed.
    Failed { stage: String, error: String },
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct IrreversibleStep {
    pub step: String,
    pub label: String,
    pub reason: String,
}

impl VerifyOutcome {
    pub fn passed(&self) -> bool {
        matches!(self, VerifyOutcome::Passed { .. })
    }
}

/// The plan verify runs: command steps reach outside the database (flag services, deploy
/// hooks), so a rehearsal must not run them; each becomes a no-op with a no-op inverse.
fn rehearsal(loaded: &LoadedPlan) -> LoadedPlan {
    let mut copy = loaded.clone();
    for phase in copy.plan.phases.value.iter_mut() {
        for step in phase.value.steps.value.iter_mut() {
            if let Step::Command(Command { down: Some(_), .. }) = &step.value {
                step.value = Step::Sql(SqlStep {
                    up: Some("SELECT 1".to_string()),
                    down: Some("SELECT 1".to_string()),
                    transactional: true,
                    ..SqlStep::default()
                });
            }
        }
    }
    copy
}

/// Runs the rehearsal on `scratch`, which must hold a copy of the target's schema and no state.
pub async fn verify<T: Database>(
    scratch: &mut T,
    loaded: &LoadedPlan,
    reporter: &mut dyn Reporter,
) -> Result<VerifyOutcome, EngineError> {
    let plan = &loaded.plan;
    let first_contract = plan
        .phases()
        .position(|p| p.kind() == PhaseKind::Contract)
        .unwrap_or(plan.phases.value.len());
    let phases: Vec<String> = plan
        .phases()
        .take(first_contract)
        .map(|p| p.name().to_string())
        .collect();
    let irreversible: Vec<IrreversibleStep> = plan
        .step_refs()
        .into_iter()
        .filter(|(s, _)| s.phase_index < first_contract)
        .filter_map(
            |(s, def)| match inverse_of(plan, def, StepStatus::Done, scratch.dialect()) {
                Inverse::Irreversible(reason) => Some(IrreversibleStep {
                    step: s.id(),
                    label: def.label(),
                    reason,
                }),
                _ => None,
            },
        )
        .collect();
    if !irreversible.is_empty() {
        return Ok(VerifyOutcome::Irreversible {
            steps: irreversible,
        });
    }
    let Some(last) = phases.last().cloned() else {
        return Ok(VerifyOutcome::Passed {
            phases,
            steps_undone: 0,
        });
    };
    let rehearsal = rehearsal(loaded);
    let before = scratch.schema_snapshot().await?;
    let options = RunOptions {
        until: Some(last),
        ..RunOptions::default()
    };
    if let Err(e) = run(scratch, &rehearsal, &options, reporter).await {
        return Ok(VerifyOutcome::Failed {
            stage: "run".to_string(),
            error: e.to_string(),
        });
    }
    let undone = match rollback(scratch, &rehearsal, &RollbackOptions::default(), reporter).await {
        Ok(undone) => undone,
        Err(e) => {
            return Ok(VerifyOutcome::Failed {
                stage: "rollback".to_string(),
                error: e.to_string(),
            })
        }
    };
    let after = scratch.schema_snapshot().await?;
    if before == after {
        return Ok(VerifyOutcome::Passed {
            phases,
            steps_undone: undone.len(),
        });
    }
    let missing = before
        .iter()
        .filter(|l| !after.contains(l))
        .cloned()
        .collect();
    let extra = after
        .iter()
        .filter(|l| !before.contains(l))
        .cloned()
        .collect();
    Ok(VerifyOutcome::Differs { missing, extra })
}

/// How long the check of one step's `up` over the target's rows may take (narrowing to the
/// first failing row included); past it the check says it was cut short.
pub const DATA_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// One `change_type` or `add_column … up` checked against the rows the target holds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DataCheck {
    pub step: String,
    pub label: String,
    pub table: String,
    /// What is evaluated for each row.
    pub expression: String,
    #[serde(flatten)]
    pub found: Conversion,
}

impl DataCheck {
    /// Anything but "every row converts" is a warning.
    pub fn is_warning(&self) -> bool {
        !matches!(self.found, Conversion::Converts { .. })
    }
}

/// The value a step stores for each row, as the row-by-row expression the check evaluates:
/// PostgreSQL converts `up` to the column's type (the trigger's and the backfill's assignment;
/// an explicit `CAST` stands in for it), SQLite stores `up` as it comes.
fn stored_value(dialect: Dialect, up: &str, ty: &str) -> String {
    match dialect {
        Dialect::Postgres => format!("CAST(({up}) AS {ty})"),
        Dialect::Sqlite => format!("({up})"),
    }
}

/// Evaluates the `up` of each `change_type` and `add_column … up` of the plan over the rows
/// the **real** target holds now (read-only, each within [`DATA_CHECK_TIMEOUT`]): a value the
/// old application already wrote that `up` cannot convert will fail the backfill, and the same
/// value written again fails the old application's write. Steps on a table (or a column) that
/// is not there yet are skipped: the plan makes it, so it holds no old rows.
pub async fn check_data<T: Database>(
    target: &mut T,
    loaded: &LoadedPlan,
    timeout: std::time::Duration,
) -> Vec<DataCheck> {
    let dialect = target.dialect();
    let mut out = Vec::new();
    for (at, step) in loaded.plan.step_refs() {
        let (table, column, up, ty) = match step {
            Step::ChangeType(c) => (
                &c.table,
                Some(&c.column),
                c.up.clone()
                    .unwrap_or_else(|| format!("CAST({} AS {})", c.column.quoted(), c.ty)),
                &c.ty,
            ),
            Step::AddColumn(c) => match &c.up {
                Some(up) => (&c.table, None, up.clone(), &c.ty),
                None => continue,
            },
            _ => continue,
        };
        let facts = match target.table_facts(table.as_str()).await {
            Ok(f) => f,
            Err(e) => {
                out.push(DataCheck {
                    step: at.id(),
                    label: step.label(),
                    table: table.to_string(),
                    expression: up.clone(),
                    found: Conversion::Unchecked {
                        error: e.to_string(),
                    },
                });
                continue;
            }
        };
        if !facts.exists || column.is_some_and(|c| facts.column(c.as_str()).is_none()) {
            continue;
        }
        // Narrowing walks the table's key; without one the error alone is reported.
        let key: Vec<String> = target
            .backfill_key(table.as_str(), &[])
            .await
            .unwrap_or_default()
            .iter()
            .map(|k| match (dialect, k.as_str()) {
                (Dialect::Sqlite, "rowid") => k.clone(),
                _ => crate::ops::name::quote(k),
            })
            .collect();
        let expression = stored_value(dialect, &up, ty);
        let quoted = table.quoted();
        let check = ConversionCheck {
            table: &quoted,
            expr: &expression,
            key: &key,
            timeout,
        };
        let found =
            target
                .check_conversion(&check)
                .await
                .unwrap_or_else(|e| Conversion::Unchecked {
                    error: e.to_string(),
                });
        out.push(DataCheck {
            step: at.id(),
            label: step.label(),
            table: table.to_string(),
            expression,
            found,
        });
    }
    out
}
