//! Exponential backoff with full jitter, bounded by the plan's retry policy.

use std::time::Duration;

use rand::Rng;

use crate::plan::RetryPolicy;

/// How long to wait before attempt `attempt + 1` (attempt counts from 1): a random time between
/// zero and `min(max_backoff, backoff · 2^(attempt-1))`.
pub fn backoff(policy: &RetryPolicy, attempt: u32) -> Duration {
    let ceiling = ceiling(policy, attempt);
    let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(rand::rng().random_range(0..=ms))
}

/// The upper bound of the wait after `attempt`.
pub fn ceiling(policy: &RetryPolicy, attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let base = policy.backoff.0.saturating_mul(1u32 << exp);
    base.min(policy.max_backoff.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PlanDuration;

    #[test]
    fn grows_then_caps() {
        let policy = RetryPolicy {
            attempts: 10,
            backoff: PlanDuration::from_millis(100),
            max_backoff: PlanDuration::from_millis(1000),
        };
        assert_eq!(ceiling(&policy, 1), Duration::from_millis(100));
        assert_eq!(ceiling(&policy, 2), Duration::from_millis(200));
        assert_eq!(ceiling(&policy, 4), Duration::from_millis(800));
        assert_eq!(ceiling(&policy, 5), Duration::from_millis(1000));
        assert_eq!(ceiling(&policy, 40), Duration::from_millis(1000));
        for attempt in 1..8 {
            assert!(backoff(&policy, attempt) <= ceiling(&policy, attempt));
        }
    }
}
