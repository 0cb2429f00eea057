//! `phased status`: every phase and step with its recorded state.

use serde::Serialize;

use super::records::load_records;
use crate::db::backup::RestoreNote;
use crate::db::{Database, DbError, IndexProgress, StepStatus};
use crate::plan::Plan;

#[derive(Debug, Clone, Serialize)]
pub struct PlanStatus {
    pub plan: String,
    pub database: String,
    pub phases: Vec<PhaseStatus>,
    /// The database was restored from a backup (its state is the backup's).
    pub restored: Option<RestoreNote>,
    /// The runner holding the plan's lease right now (a live run), or None.
    pub runner: Option<String>,
    /// A step recorded `running` while no runner holds the lease: its run was interrupted or
    /// killed, and `phased run` resumes it.
    pub orphaned: bool,
    /// An operator's `phased pause|resume|pace` for the plan's backfills, if any was set.
    pub control: Option<crate::db::BackfillControl>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseStatus {
    pub name: String,
    pub kind: String,
    /// pending, running, done, failed, partial, rolled_back
    pub status: String,
    pub steps: Vec<StepStatusView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepStatusView {
    pub step: usize,
    pub label: String,
    pub kind: String,
    pub status: StepStatus,
    pub attempts: i32,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub last_error: Option<String>,
    /// The definition changed since the step was done.
    pub drift: bool,
    /// Rows the backfill wrote (rows a dual-write trigger filled meanwhile are not among them).
    pub rows_done: Option<i64>,
    pub rows_total: Option<i64>,
    /// Rows still to visit: 0 once the backfill is done, whatever the estimate at its start.
    pub rows_remaining: Option<i64>,
    pub checkpoint: Option<String>,
    /// A backfill's rate as of its last committed batch.
    pub rows_per_second: Option<f64>,
    /// Where a concurrent index build (or drop) of the step stands while it runs, or where it
    /// stopped when it failed (PostgreSQL).
    pub progress: Option<IndexProgress>,
    /// A backfill's pace and the signal that set it, as of its last committed batch (while it
    /// is not done).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pace: Option<super::pace::PaceReport>,
}

pub async fn status<T: Database>(target: &mut T, plan: &Plan) -> Result<PlanStatus, DbError> {
    let records = load_records(target, plan).await?;
    let mut phases = Vec::new();
    for (phase_index, phase) in plan.phases().enumerate() {
        let steps: Vec<StepStatusView> = plan
            .step_refs()
            .into_iter()
            .filter(|(s, _)| s.phase_index == phase_index)
            .map(|(s, def)| {
                let record = records.get(&(s.phase.clone(), s.index as i32));
                let is_backfill = def.kind_name() == "backfill";
                StepStatusView {
                    step: s.index + 1,
                    label: def.label(),
                    kind: def.kind_name().to_string(),
                    status: record.map(|r| r.status).unwrap_or(StepStatus::Pending),
                    attempts: record.map(|r| r.attempts).unwrap_or(0),
                    started_at: record.and_then(|r| r.started_at.clone()),
                    finished_at: record.and_then(|r| r.finished_at.clone()),
                    last_error: record.and_then(|r| r.last_error.clone()),
                    drift: record.is_some_and(|r| {
                        r.status == StepStatus::Done && !s.matches_checksum(&r.checksum)
                    }),
                    rows_done: record.filter(|_| is_backfill).map(|r| r.rows_done),
                    rows_total: record.filter(|_| is_backfill).and_then(|r| r.rows_total),
                    rows_remaining: record.filter(|_| is_backfill).map(|r| {
                        if r.status == StepStatus::Done {
                            0
                        } else {
                            r.rows_total.map_or(0, |t| (t - r.rows_done).max(0))
                        }
                    }),
                    checkpoint: record
                        .filter(|_| is_backfill)
                        .and_then(|r| r.checkpoint.clone()),
                    rows_per_second: record
                        .filter(|_| is_backfill)
                        .and_then(|r| r.rows_per_second),
                    progress: record
                        .filter(|r| r.status != StepStatus::Done)
                        .and_then(|r| r.progress.as_deref())
                        .and_then(|p| serde_json::from_str(p).ok()),
                    pace: record
                        .filter(|r| is_backfill && r.status != StepStatus::Done)
                        .and_then(|r| r.progress.as_deref())
                        .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
                        .and_then(|v| serde_json::from_value(v.get("pace")?.clone()).ok()),
                }
            })
            .collect();
        let all = |st: StepStatus| steps.iter().all(|s| s.status == st);
        let any = |st: StepStatus| steps.iter().any(|s| s.status == st);
        let status = if all(StepStatus::Done) {
            "done"
        } else if any(StepStatus::Failed) {
            "failed"
        } else if any(StepStatus::Running) {
            "running"
        } else if all(StepStatus::Pending) {
            "pending"
        } else if all(StepStatus::RolledBack) {
            "rolled_back"
        } else {
            "partial"
        };
        phases.push(PhaseStatus {
            name: phase.name().to_string(),
            kind: phase.kind().to_string(),
            status: status.to_string(),
            steps,
        });
    }
    let runner = target.lease_holder(plan.id()).await?.map(|h| h.description);
    let orphaned = runner.is_none()
        && phases
            .iter()
            .flat_map(|p| &p.steps)
            .any(|s| s.status == StepStatus::Running);
    Ok(PlanStatus {
        plan: plan.id().to_string(),
        database: target.describe(),
        phases,
        restored: target.last_restore().await?,
        runner,
        orphaned,
        control: target.backfill_control(plan.id()).await?,
    })
}
