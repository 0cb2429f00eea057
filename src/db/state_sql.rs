//! State bookkeeping that is the same for both dialects but for spelling: what a status write
//! clears with it, and how a script's progress is kept in the step's checkpoint.

use crate::db::Dialect;
use crate::db::StepStatus;

/// The statement that sets a step's status (`$4`/`?4`), keyed by plan, phase and index.
///
/// Rolling a step back also forgets its checkpoint and progress in the same statement, so a
/// rolled-back backfill (or script) starts from the beginning when it runs again, whatever
/// happens after this statement commits.
pub fn set_status(dialect: Dialect, status: StepStatus) -> &'static str {
    match (dialect, status) {
        (Dialect::Postgres, StepStatus::RolledBack) => {
            "UPDATE phased.steps SET status = $4, checkpoint = NULL, rows_done = 0, rows_total = NULL, updated_at = now() \
             WHERE plan = $1 AND phase = $2 AND step_index = $3"
        }
        (Dialect::Postgres, _) => {
            "UPDATE phased.steps SET status = $4, updated_at = now() \
             WHERE plan = $1 AND phase = $2 AND step_index = $3"
        }
        (Dialect::Sqlite, StepStatus::RolledBack) => {
            "UPDATE phased_steps SET status = ?4, checkpoint = NULL, rows_done = 0, rows_total = NULL, \
             updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE plan = ?1 AND phase = ?2 AND step_index = ?3"
        }
        (Dialect::Sqlite, _) => {
            "UPDATE phased_steps SET status = ?4, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
             WHERE plan = ?1 AND phase = ?2 AND step_index = ?3"
        }
    }
}

/// A script's checkpoint: how many of its statements completed.
pub fn script_progress(done: usize) -> String {
    serde_json::json!({ "statements_done": done }).to_string()
}

/// Reads a script's checkpoint (0 when there is none or it is not a script's).
pub fn parse_script_progress(checkpoint: Option<&str>) -> usize {
    checkpoint
        .and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok())
        .and_then(|v| v.get("statements_done").and_then(|n| n.as_u64()))
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0)
}

/// How a backfill batch's last key is kept in the step's checkpoint: the key's values as a
/// JSON array for the backfill itself, `{"down": [...]}` for the walk of its `down` during a
/// rollback — so that neither ever resumes from the other's position.
pub fn backfill_checkpoint(last_key: &str, down: bool) -> String {
    if down {
        format!("{{\"down\":{last_key}}}")
    } else {
        last_key.to_string()
    }
}

/// The last key (a JSON array) a backfill walk in this direction stopped at, if the checkpoint
/// is one of its own.
pub fn backfill_position(checkpoint: Option<&str>, down: bool) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(checkpoint?).ok()?;
    let key = if down {
        value.get("down")?.clone()
    } else {
        value
    };
    key.is_array().then(|| key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_progress_round_trips() {
        assert_eq!(parse_script_progress(Some(&script_progress(3))), 3);
        assert_eq!(parse_script_progress(None), 0);
        assert_eq!(parse_script_progress(Some("[\"17\"]")), 0);
    }

    #[test]
    fn rolling_back_forgets_the_checkpoint_in_the_same_statement() {
        for dialect in [Dialect::Postgres, Dialect::Sqlite] {
            let sql = set_status(dialect, StepStatus::RolledBack);
            assert!(sql.contains("checkpoint = NULL") && sql.contains("rows_done = 0"));
            assert!(!set_status(dialect, StepStatus::Failed).contains("checkpoint"));
        }
    }

    #[test]
    fn a_walk_resumes_only_from_its_own_checkpoint() {
        let forward = backfill_checkpoint(r#"["17"]"#, false);
        let down = backfill_checkpoint(r#"["17"]"#, true);
        assert_eq!(
            backfill_position(Some(&forward), false).as_deref(),
            Some(r#"["17"]"#)
        );
        assert_eq!(backfill_position(Some(&forward), true), None);
        assert_eq!(
            backfill_position(Some(&down), true).as_deref(),
            Some(r#"["17"]"#)
        );
        assert_eq!(backfill_position(Some(&down), false), None);
        assert_eq!(backfill_position(Some(&script_progress(2)), false), None);
        assert_eq!(backfill_position(None, false), None);
    }
}
