//! One policy for taking locks, used by `run`, `rollback` and versioned migrations alike:
//! every statement runs under the plan's `lock_timeout`; before an attempt phased looks for
//! sessions that hold (or wait for) a conflicting lock on the table and waits instead of
//! queueing behind them (a queued `ALTER TABLE` makes every later query on the table queue
//! behind it); a lock timeout, deadlock or serialization failure is retried after a jittered,
//! growing wait, within `retry.attempts`; and a failure names who was in the way.

use std::time::Duration;

use super::retry;
use crate::db::{Blocker, Database, DbError, LockMode, TableLock};
use crate::ops::TableName;
use crate::plan::RetryPolicy;

/// The attempts at one unit of work (a step, an inverse, a migration) under the policy.
#[derive(Debug, Clone)]
pub struct Attempts {
    policy: RetryPolicy,
    attempt: u32,
}

/// Sessions in the way of a lock, found by looking before queueing.
#[derive(Debug, Clone)]
pub struct Blocked {
    pub lock: TableLock,
    pub blockers: Vec<Blocker>,
}

impl Blocked {
    /// The blockers, one line each.
    pub fn lines(&self) -> Vec<String> {
        self.blockers.iter().map(ToString::to_string).collect()
    }

    /// Why the attempt was not made.
    pub fn message(&self) -> String {
        format!(
            "not attempted: {} other session(s) hold locks on `{}` that conflict with the {} lock this step needs; \
             queueing behind them would make application queries queue behind phased{}",
            self.blockers.len(),
            self.lock.table,
            self.lock.mode,
            blocked_by(&self.lines())
        )
    }
}

impl Attempts {
    pub fn new(policy: RetryPolicy) -> Self {
        Self { policy, attempt: 0 }
    }

    /// Starts the next attempt; returns its number (from 1).
    pub fn begin(&mut self) -> u32 {
        self.attempt += 1;
        self.attempt
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Progress was made (a backfill moved its checkpoint): the budget starts again, so hours
    /// of batches are not cut short by a few scattered lock timeouts.
    pub fn made_progress(&mut self) {
        self.attempt = 1;
    }

    /// How long to wait before trying again, or None when the budget is spent.
    pub fn wait(&self) -> Option<Duration> {
        (self.attempt < self.policy.attempts.max(1))
            .then(|| retry::backoff(&self.policy, self.attempt))
    }

    /// After a failed attempt: the wait before the next one, or None when the error is not
    /// worth retrying or the budget is spent.
    pub fn retry_after(&self, error: &DbError) -> Option<Duration> {
        if error.is_retryable() {
            self.wait()
        } else {
            None
        }
    }

    /// The line added to an error when the budget ran out.
    pub fn gave_up(&self) -> String {
        format!(
            "\ngave up after {} attempt(s) (retry.attempts)",
            self.attempt
        )
    }
}

/// Looks before queueing: the first of `needed` that other sessions stand in the way of, with
/// who they are. Only locks that application traffic would queue behind are worth a look.
pub async fn look<T: Database>(
    target: &mut T,
    needed: &[TableLock],
) -> Result<Option<Blocked>, DbError> {
    for lock in needed.iter().filter(|l| l.mode.queues_application()) {
        let found = target.blockers(&lock.table, lock.mode).await?;
        if !found.is_empty() {
            return Ok(Some(Blocked {
                lock: lock.clone(),
                blockers: found,
            }));
        }
    }
    Ok(None)
}

/// Who was in the way of a failed attempt (best effort: a failure to look must not hide the
/// real error). `needed` are the locks the work asked for; when it needs none worth a look
/// (a `CONCURRENTLY` build, a backfill's row locks), every session holding a lock on `table`
/// that conflicts with `fallback` is named.
pub async fn who_was_in_the_way<T: Database>(
    target: &mut T,
    needed: &[TableLock],
    table: Option<&TableName>,
    fallback: LockMode,
) -> Vec<String> {
    let report: Vec<TableLock> = if needed.is_empty() {
        table
            .map(|t| {
                vec![TableLock {
                    table: t.clone(),
                    mode: fallback,
                }]
            })
            .unwrap_or_default()
    } else {
        needed.to_vec()
    };
    let mut lines = Vec::new();
    for lock in report {
        if let Ok(found) = target.blockers(&lock.table, lock.mode).await {
            lines.extend(found.iter().map(ToString::to_string));
        }
    }
    lines
}

/// `\n  blocked by …` lines, for messages and the recorded last_error.
pub fn blocked_by(lines: &[String]) -> String {
    lines
        .iter()
        .map(|l| format!("\n  blocked by {l}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PlanDuration;

    fn policy(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            attempts,
            backoff: PlanDuration::from_millis(10),
            max_backoff: PlanDuration::from_millis(100),
        }
    }

    fn lock_timeout() -> DbError {
        DbError::Sql {
            message: "canceling statement due to lock timeout".into(),
            code: Some("55P03".into()),
            sql: "ALTER TABLE t ADD COLUMN c int".into(),
            retryable: true,
        }
    }

    #[test]
    fn retries_only_what_is_worth_it_within_the_budget() {
        let mut attempts = Attempts::new(policy(3));
        attempts.begin();
        assert!(attempts.retry_after(&lock_timeout()).is_some());
        let syntax = DbError::Sql {
            message: "syntax error".into(),
            code: Some("42601".into()),
            sql: "SELEC".into(),
            retryable: false,
        };
        assert!(attempts.retry_after(&syntax).is_none());
        attempts.begin();
        attempts.begin();
        assert!(attempts.retry_after(&lock_timeout()).is_none());
        assert!(attempts.gave_up().contains("3 attempt(s)"));
        attempts.made_progress();
        assert!(attempts.retry_after(&lock_timeout()).is_some());
    }
}
