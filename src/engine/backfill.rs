//! The backfill loop: keyset batches committed with their checkpoint, sized toward a target
//! batch time, throttled by pause, rows-per-second cap and a throttle file.

use std::path::Path;
use std::time::{Duration, Instant};

use super::events::{Event, Reporter, StepId};
use crate::plan::{Backfill, BatchSize};
use crate::target::{BatchRequest, StepKey, Target, TargetError, Timeouts};

/// Batch size bounds for `batch_size: auto`.
pub(crate) const AUTO_START: u64 = 1_000;
const AUTO_MIN: u64 = 10;
const AUTO_MAX: u64 = 100_000;

/// Next batch size after a batch of `size` rows took `took`, aiming at `target`.
/// Grows by at most 2× when fast; shrinks at once in proportion when slow.
pub fn next_auto_size(size: u64, took: Duration, target: Duration) -> u64 {
    let took = took.as_secs_f64().max(0.000_1);
    let ratio = target.as_secs_f64() / took;
    let factor = if ratio >= 1.0 {
        ratio.min(2.0)
    } else {
        ratio.max(0.1)
    };
    ((size as f64 * factor) as u64).clamp(AUTO_MIN, AUTO_MAX)
}

#[allow(clippy::too_many_arguments)]
pub async fn run<T: Target>(
    target: &mut T,
    key: &StepKey,
    step: &Backfill,
    timeouts: Timeouts,
    checkpoint: &mut Option<String>,
    throttle_file: Option<&Path>,
    id: &StepId,
    reporter: &mut dyn Reporter,
) -> Result<(), TargetError> {
    let key_columns = if step.key.is_empty() {
        target.primary_key(&step.table).await?
    } else {
        step.key.clone()
    };
    if key_columns.is_empty() {
        return Err(TargetError::Unexpected(format!(
            "table `{}` has no primary key to walk; name a unique, not-null column set with `key: [...]`",
            step.table
        )));
    }
    let set: Vec<(String, String)> = step
        .set
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let total = target
        .count_rows(&step.table, step.predicate.as_deref())
        .await?;
    let rows_before = checkpoint.as_ref().map(|_| 0).unwrap_or(0);
    target.set_rows_total(key, total).await?;
    let mut size = match step.batch_size {
        BatchSize::Auto => AUTO_START,
        BatchSize::Fixed(n) => n,
    };
    let mut done: u64 = rows_before;
    let started = Instant::now();
    let mut last_report = Instant::now() - Duration::from_secs(10);
    loop {
        if let Some(file) = throttle_file {
            let mut announced = false;
            while file.exists() {
                if !announced {
                    reporter.emit(&Event::BackfillProgress {
                        step: id.clone(),
                        rows_done: done,
                        rows_total: u64::try_from(total).ok(),
                        batch_size: size,
                        rows_per_second: 0.0,
                        paused: Some(format!("throttle file {} exists", file.display())),
                    });
                    announced = true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let batch_started = Instant::now();
        let outcome = target
            .backfill_batch(&BatchRequest {
                key,
                table: &step.table,
                key_columns: &key_columns,
                set: &set,
                predicate: step.predicate.as_deref(),
                after: checkpoint.as_deref(),
                limit: size,
                timeouts,
            })
            .await?;
        let took = batch_started.elapsed();
        let Some(last) = outcome.last_key else {
            break;
        };
        *checkpoint = Some(last);
        done += outcome.rows;
        let elapsed = started.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / elapsed;
        if last_report.elapsed() >= Duration::from_millis(500) {
            reporter.emit(&Event::BackfillProgress {
                step: id.clone(),
                rows_done: done,
                rows_total: u64::try_from(total).ok(),
                batch_size: size,
                rows_per_second: rate,
                paused: None,
            });
            last_report = Instant::now();
        }
        if step.batch_size == BatchSize::Auto {
            size = next_auto_size(size, took, step.target_batch_time.0);
        }
        let mut pause = step.pause.0;
        if step.max_rows_per_second > 0 {
            let min_time =
                Duration::from_secs_f64(outcome.rows as f64 / step.max_rows_per_second as f64);
            pause = pause.max(min_time.saturating_sub(took));
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    reporter.emit(&Event::BackfillProgress {
        step: id.clone(),
        rows_done: done,
        rows_total: u64::try_from(total).ok(),
        batch_size: size,
        rows_per_second: done as f64 / started.elapsed().as_secs_f64().max(0.001),
        paused: None,
    });
    target.finish_step(key).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_size_grows_when_fast_and_shrinks_when_slow() {
        let target = Duration::from_millis(200);
        assert_eq!(
            next_auto_size(1000, Duration::from_millis(50), target),
            2000
        );
        assert_eq!(
            next_auto_size(1000, Duration::from_millis(400), target),
            500
        );
        assert_eq!(next_auto_size(1000, Duration::from_secs(10), target), 100);
        assert_eq!(
            next_auto_size(20, Duration::from_secs(10), target),
            AUTO_MIN
        );
    }
}
