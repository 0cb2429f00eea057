//! The backfill loop: keyset batches committed with their checkpoint, sized toward a target
//! batch time, paced by the workload's health (`throttle: auto`, see `pace`) or the plan's
//! fixed knobs, and held by the operator, replica lag and a throttle file.
//!
//! Memory stays flat: the loop holds one key (the checkpoint) at a time, never a list of keys;
//! each batch finds its own upper bound in the database and updates the rows in between.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::events::{Event, Reporter, StepId};
use super::interrupt::Interrupt;
use super::pace::{self, Controller, Limits, PaceReport, Signals, Trend};
use crate::db::probe::{Probe, ProbeWindow, BASELINE_SAMPLES, BUSY_BASELINE_SAMPLES};
use crate::db::{BackfillControl, BatchRequest, Database, DbError, Dialect, StepKey, Timeouts};
use crate::ops::backfill::Throttle;
use crate::plan::{Backfill, BatchSize};

/// Batch size bounds for `batch_size: auto`.
pub const AUTO_START: u64 = 1_000;
pub const AUTO_MIN: u64 = 10;
pub const AUTO_MAX: u64 = 100_000;

/// How often progress events are emitted (and a paused backfill re-announces why).
const REPORT_EVERY: Duration = Duration::from_millis(500);
/// How often a paused backfill looks again at the throttle file.
const FILE_POLL: Duration = Duration::from_millis(200);
/// How often the operator's control (`phased pause|resume|pace`) is read: a pause from another
/// machine takes effect before the next batch, within this.
const CONTROL_POLL: Duration = Duration::from_millis(500);
/// How often the replica lag is read: before a batch at most this often, and while paused on it.
const LAG_POLL: Duration = Duration::from_secs(1);
/// How often `throttle: auto` looks at the workload's health (at once on a lock wait).
const LOOK_EVERY: Duration = Duration::from_millis(250);
/// Probe latencies a look needs to judge the probe.
const LOOK_SAMPLES: usize = 5;
/// Probe reads a look needs when the probe makes no commits (about a second of them).
const READS_WITHOUT_COMMITS: usize = 40;
/// How long the probe's baseline may take before the backfill starts without one.
const BASELINE_PATIENCE: Duration = Duration::from_secs(3);
/// Next to a busy workload, the backfill pauses this long after its first batch to look at
/// the workload alone again (`Controller::rebaseline`), and then twice as long after each
/// look, up to `LOOK_ALONE_MOST`: a baseline taken in a bad moment is found out early, and a
/// long backfill pauses for about a second a minute (some 100 probes, 10 ms apart).
pub const LOOK_ALONE_FIRST: Duration = Duration::from_secs(5);
pub const LOOK_ALONE_MOST: Duration = Duration::from_secs(60);
/// What a look at the workload alone leaves out at its start: the workload's queue, built up
/// behind the last batch, drains.
const LOOK_ALONE_SETTLE: Duration = Duration::from_millis(100);

/// The time from one look at the workload alone to the next, after one `after` apart.
pub fn next_look_alone(after: Duration) -> Duration {
    (after * 2).clamp(LOOK_ALONE_FIRST, LOOK_ALONE_MOST)
}

/// Sleeps `wait`, or less when the interrupt is raised: whether it was.
async fn sleep(interrupt: Option<&Interrupt>, wait: Duration) -> bool {
    match interrupt {
        Some(interrupt) => interrupt.sleep(wait).await,
        None => {
            tokio::time::sleep(wait).await;
            false
        }
    }
}

/// Whether the probes gathered before the first batch make a baseline: `BASELINE_SAMPLES`,
/// half as many when nobody else is at work (the pace is the full one there anyway), and
/// `BUSY_BASELINE_SAMPLES` next to a busy workload, whose tail is noisier.
pub fn baseline_complete(samples: usize, quiet: bool, busy: bool) -> bool {
    if quiet {
        samples >= BASELINE_SAMPLES / 2
    } else if busy {
        samples >= BUSY_BASELINE_SAMPLES
    } else {
        samples >= BASELINE_SAMPLES
    }
}

/// Next batch size after a batch of `size` rows took `took`, aiming at `target`.
/// Grows by at most 2× when fast; shrinks at once in proportion when slow (down to a tenth),
/// the way pt-online-schema-change's chunk-time does.
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

/// What `batch_size: auto` steers toward the batch time: the time a batch held its row locks,
/// with its commit's flush counted up to half the batch time. The batch time bounds the WAL a
/// batch puts ahead of an application's commit, and that WAL is the batch's work; the flush
/// is mostly the disk's own latency, which every commit pays whatever the batch. On a disk
/// whose flush alone took longer than the batch time, counting all of it shrank the batches
/// to the least size (10 rows, a flush each: 0.12× of the unthrottled speed, measured in
/// docs/benchmarks.md), which costs the workload more flushes, not less WAL. Counted up to
/// half, a fast disk's flush still counts whole (the same batches as before), and a slow
/// one's leaves each batch half the batch time of work.
pub fn steered_time(held: Duration, flushed: Duration, batch_time: Duration) -> Duration {
    let flushed = flushed.min(held);
    held - flushed + flushed.min(batch_time / 2)
}

/// The sleep after a batch of `rows` rows that took `took`: the fixed `pause`, or longer when
/// needed to keep under `max_rows_per_second` (0: no cap).
pub fn pause_after(
    rows: u64,
    took: Duration,
    pause: Duration,
    max_rows_per_second: u64,
) -> Duration {
    if max_rows_per_second == 0 {
        return pause;
    }
    let min_time = Duration::from_secs_f64(rows as f64 / max_rows_per_second as f64);
    pause.max(min_time.saturating_sub(took))
}

/// Why a backfill is paused between batches.
#[derive(Debug, Clone, PartialEq)]
pub enum PauseReason {
    /// The operator's throttle file exists.
    ThrottleFile(PathBuf),
    /// `phased pause PLAN`, from any machine, until `phased resume PLAN`.
    Operator { by: String, at: String },
    /// A streaming replica lags more than `max_replica_lag`.
    ReplicaLag { lag: Duration, max: Duration },
}

impl PauseReason {
    pub fn describe(&self) -> String {
        match self {
            PauseReason::ThrottleFile(path) => {
                format!(
                    "throttle file {} exists; remove it to resume",
                    path.display()
                )
            }
            PauseReason::Operator { by, at } => {
                format!("paused by {by} at {at} (`phased pause`); `phased resume PLAN` resumes it")
            }
            PauseReason::ReplicaLag { lag, max } => format!(
                "replica lag {:.1}s exceeds max_replica_lag {:.1}s",
                lag.as_secs_f64(),
                max.as_secs_f64()
            ),
        }
    }

    fn same_kind(&self, other: &PauseReason) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

/// Whether a replica's lag calls for a pause.
pub fn lag_exceeds(lag: Option<Duration>, max: Option<Duration>) -> Option<PauseReason> {
    match (lag, max) {
        (Some(lag), Some(max)) if lag > max => Some(PauseReason::ReplicaLag { lag, max }),
        _ => None,
    }
}

/// One attempt of a backfill step, with what it needs to report and throttle.
struct Walk<'a> {
    id: &'a StepId,
    step: &'a Backfill,
    throttle_file: Option<&'a Path>,
    total: u64,
    /// Rows done, including earlier runs and attempts (from the state).
    done: u64,
    /// Rows done by this attempt, and since when, for the rate.
    done_here: u64,
    started: Instant,
    size: u64,
    last_report: Option<Instant>,
    last_lag_check: Option<(Instant, Option<Duration>)>,
    /// The plan whose operator control (`phased pause|resume|pace`) applies, and when it was
    /// last read with what it said. None in a dry run.
    control_of: Option<&'a str>,
    control: Option<(Instant, Option<BackfillControl>)>,
    throttle: Throttle,
    /// `throttle: auto`'s controller and the probe feeding it (none on SQLite, in a dry run,
    /// or when no second session could be had).
    pace: Option<Controller>,
    probe: Option<Probe>,
    last_look: Instant,
    /// What the probe saw since the last look (its commits: since the pace last moved).
    seen: ProbeWindow,
    /// The longest a batch waited for SQLite's write lock since the last look.
    write_lock_wait: Duration,
    /// The batches since the last look: how many, their commits' flushes in all and the
    /// longest (for the debug log).
    flushes: (u32, Duration, Duration),
    last_pause: Duration,
    /// The rows-per-second cap in force at the last batch (0: none).
    cap: u64,
    /// When the backfill next pauses to look at the workload alone, and how long after the
    /// look before (None: it does not, see `Controller::looks_alone`).
    look_alone: Option<(Instant, Duration)>,
}

impl Walk<'_> {
    fn rate(&self) -> f64 {
        self.done_here as f64 / self.started.elapsed().as_secs_f64().max(0.001)
    }

    /// The pace now, and why.
    fn pace_report(&self) -> PaceReport {
        let cap = (self.cap > 0).then_some(self.cap);
        match (&self.pace, self.throttle) {
            (Some(c), _) => {
                let d = c.last();
                PaceReport {
                    throttle: "auto".to_string(),
                    batch_time_ms: pace::ms(c.batch_time()),
                    pause_ms: pace::ms(self.last_pause),
                    duty: c.duty(),
                    max_rows_per_second: cap,
                    trend: d.trend,
                    signal: d.signal.to_string(),
                    value: d.value,
                    reason: d.reason.clone(),
                }
            }
            (None, throttle) => {
                let (batch, pause, reason) = match throttle {
                    Throttle::Fixed {
                        target_batch_time,
                        pause,
                        ..
                    } => (
                        target_batch_time,
                        pause,
                        "fixed: the plan's target_batch_time, pause and max_rows_per_second",
                    ),
                    Throttle::Auto { .. } => (
                        Duration::ZERO,
                        Duration::ZERO,
                        "auto: no look at the workload in a dry run",
                    ),
                };
                PaceReport {
                    throttle: if matches!(throttle, Throttle::Fixed { .. }) {
                        "fixed"
                    } else {
                        "auto"
                    }
                    .to_string(),
                    batch_time_ms: pace::ms(batch),
                    pause_ms: pace::ms(pause.max(self.last_pause)),
                    duty: if batch.is_zero() {
                        1.0
                    } else {
                        batch.as_secs_f64() / (batch + pause).as_secs_f64()
                    },
                    max_rows_per_second: cap,
                    trend: Trend::Steady,
                    signal: "none".to_string(),
                    value: None,
                    reason: reason.to_string(),
                }
            }
        }
    }

    fn report(&mut self, reporter: &mut dyn Reporter, paused: Option<String>) {
        reporter.emit(&Event::BackfillProgress {
            step: self.id.clone(),
            rows_done: self.done,
            rows_total: Some(self.total.max(self.done)),
            batch_size: self.size,
            rows_per_second: if paused.is_some() { 0.0 } else { self.rate() },
            paused,
            pace: Some(self.pace_report()),
        });
        self.last_report = Some(Instant::now());
    }

    /// The pace as the state records it with the next checkpoint.
    fn pace_json(&self) -> String {
        serde_json::json!({ "pace": self.pace_report() }).to_string()
    }

    /// Waits for the probe's baseline (its first probes, before any batch).
    async fn take_baseline(&mut self) {
        let (Some(controller), Some(probe)) = (self.pace.as_mut(), self.probe.as_ref()) else {
            return;
        };
        let deadline = Instant::now() + BASELINE_PATIENCE;
        let enough = |p: &Probe| {
            let (in_flight, connections) = p.in_flight();
            baseline_complete(
                p.samples(),
                p.quiet(),
                pace::busy(in_flight, Some(connections)),
            )
        };
        while !enough(probe) && !probe.stopped() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut window = probe.take();
        tracing::debug!(
            probes = window.latencies.len(),
            commits = window.commit_latencies.len(),
            in_flight = window.mean_in_flight(),
            connections = window.connections,
            "backfill baseline"
        );
        controller.set_baseline(
            pace::p90(&mut window.latencies, BASELINE_SAMPLES / 2),
            pace::quantile(&mut window.commit_latencies, 0.95, BASELINE_SAMPLES / 2),
        );
        // No connection counted (0) is taken as not counted.
        controller.set_in_flight_baseline(window.mean_in_flight(), Some(window.connections));
        if controller.looks_alone() {
            self.look_alone = Some((Instant::now() + LOOK_ALONE_FIRST, LOOK_ALONE_FIRST));
        }
    }

    /// Next to a busy workload, when one is due: the batches pause while the probe looks at
    /// the workload alone, and what it reads becomes the baseline (never above the first).
    /// Shown as a pause, with its reason.
    async fn look_alone(&mut self, reporter: &mut dyn Reporter, interrupt: Option<&Interrupt>) {
        let Some((due, after)) = self.look_alone else {
            return;
        };
        if Instant::now() < due || self.probe.as_ref().is_none_or(Probe::stopped) {
            return;
        }
        self.report(
            reporter,
            Some("looking at the workload alone (a new baseline)".to_string()),
        );
        let mut interrupted = sleep(interrupt, LOOK_ALONE_SETTLE).await;
        if let Some(probe) = self.probe.as_ref() {
            // What came before is about the backfill's pace; the look uses none of it.
            probe.take();
            let deadline = Instant::now() + BASELINE_PATIENCE;
            while !interrupted
                && !baseline_complete(probe.samples(), false, true)
                && !probe.stopped()
                && Instant::now() < deadline
            {
                interrupted = sleep(interrupt, Duration::from_millis(5)).await;
            }
            let mut window = probe.take();
            if let (false, Some(controller)) = (interrupted, self.pace.as_mut()) {
                let moved = controller.rebaseline(
                    pace::p90(&mut window.latencies, BASELINE_SAMPLES / 2),
                    pace::quantile(&mut window.commit_latencies, 0.95, BASELINE_SAMPLES / 2),
                    window.mean_in_flight(),
                );
                tracing::debug!(
                    step = %self.id.label,
                    probes = window.latencies.len(),
                    commits = window.commit_latencies.len(),
                    in_flight = window.mean_in_flight(),
                    moved = moved.as_deref().unwrap_or("nothing"),
                    "backfill look alone"
                );
                if let Some(moved) = moved {
                    tracing::info!(step = %self.id.label, "backfill {moved}");
                }
            }
        }
        // The running samples were about the pace before the pause.
        self.seen = ProbeWindow::default();
        let next = next_look_alone(after);
        self.look_alone = Some((Instant::now() + next, next));
        self.last_look = Instant::now();
        self.report(reporter, None);
    }

    /// After a batch under `throttle: auto`: a look at the workload when one is due, and the
    /// pace it sets. True when the pace moved or its reason changed (a report is due at once).
    fn look(&mut self, waited: Duration) -> bool {
        let Some(controller) = self.pace.as_mut() else {
            return false;
        };
        self.write_lock_wait = self.write_lock_wait.max(waited);
        let probing = self.probe.as_ref().filter(|p| !p.stopped());
        // Lock waits and a stalled commit call for a look at once.
        let at_once = probing
            .is_some_and(|p| p.saw_lock_waits() || controller.stalled(p.slowest_commit()))
            || waited > pace::WRITE_LOCK_WAIT_LIMIT;
        if let Some(p) = probing {
            self.seen.absorb(p.take());
        }
        let seen = &mut self.seen;
        // The commits' tail needs more samples than a look's window: they gather from the
        // last move of the pace on (what came before was about another pace), unless the
        // database is idle or the probe makes no commits.
        let tail = if controller.commit_baseline().is_some() {
            seen.commit_latencies.len() >= pace::TAIL_SAMPLES
        } else {
            seen.latencies.len() >= READS_WITHOUT_COMMITS
        };
        let tail_ready = tail || (seen.activity_reads > 0 && seen.others_active == 0);
        let enough = probing.is_none() || (seen.latencies.len() >= LOOK_SAMPLES && tail_ready);
        if !(at_once || (self.last_look.elapsed() >= LOOK_EVERY && enough)) {
            return false;
        }
        let mut commits = seen.commit_latencies.clone();
        let signals = Signals {
            probe_p90: pace::p90(&mut seen.latencies, LOOK_SAMPLES),
            commit_p95: pace::quantile(&mut commits, 0.95, pace::TAIL_SAMPLES),
            commit_max: controller.commit_baseline().map(|_| seen.slowest_commit),
            others_active: (seen.activity_reads > 0).then_some(seen.others_active),
            in_flight: seen.mean_in_flight(),
            blocked_sessions: seen.blocked_sessions,
            blocking_sessions: seen.blocking_sessions,
            write_lock_wait: self.write_lock_wait,
        };
        tracing::debug!(
            step = %self.id.label,
            probe_p90_ms = signals.probe_p90.map(pace::ms),
            commit_p95_ms = signals.commit_p95.map(pace::ms),
            commit_max_ms = signals.commit_max.map(pace::ms),
            commits = seen.commit_latencies.len(),
            others_active = signals.others_active,
            in_flight = signals.in_flight,
            blocked = signals.blocked_sessions,
            blocking = signals.blocking_sessions,
            batches = self.flushes.0,
            flush_mean_ms = pace::ms(self.flushes.1) / f64::from(self.flushes.0.max(1)),
            flush_max_ms = pace::ms(self.flushes.2),
            size = self.size,
            "backfill look"
        );
        self.flushes = (0, Duration::ZERO, Duration::ZERO);
        let before = controller.last().clone();
        let decision = controller.decide(&signals);
        seen.settle(matches!(decision.trend, Trend::Up | Trend::Down));
        if decision.reason != before.reason && decision.trend == Trend::Down {
            tracing::info!(step = %self.id.label, "backfill {}", decision.reason);
        }
        // Every move is reported, so the events show each pace the backfill ran at.
        let turned = decision.trend != Trend::Steady || decision.reason != before.reason;
        self.write_lock_wait = Duration::ZERO;
        self.last_look = Instant::now();
        turned
    }

    /// The operator's control of the plan's backfills, read at most every `CONTROL_POLL`.
    async fn control<T: Database>(
        &mut self,
        target: &mut T,
    ) -> Result<Option<BackfillControl>, DbError> {
        let Some(plan) = self.control_of else {
            return Ok(None);
        };
        match &self.control {
            Some((at, control)) if at.elapsed() < CONTROL_POLL => Ok(control.clone()),
            _ => {
                let control = target.backfill_control(plan).await?;
                self.control = Some((Instant::now(), control.clone()));
                Ok(control)
            }
        }
    }

    /// The rows-per-second cap: the operator's `pace`, else the step's own (0: none).
    async fn max_rows_per_second<T: Database>(&mut self, target: &mut T) -> Result<u64, DbError> {
        Ok(
            match self
                .control(target)
                .await?
                .and_then(|c| c.max_rows_per_second)
            {
                Some(rate) => u64::try_from(rate).unwrap_or(0),
                None => match self.throttle {
                    Throttle::Fixed {
                        max_rows_per_second,
                        ..
                    } => max_rows_per_second,
                    Throttle::Auto { .. } => 0,
                },
            },
        )
    }

    async fn pause_reason<T: Database>(
        &mut self,
        target: &mut T,
    ) -> Result<Option<PauseReason>, DbError> {
        if let Some(control) = self.control(target).await?.filter(|c| c.paused) {
            return Ok(Some(PauseReason::Operator {
                by: control.set_by,
                at: control.set_at,
            }));
        }
        if let Some(file) = self.throttle_file {
            if file.exists() {
                return Ok(Some(PauseReason::ThrottleFile(file.to_path_buf())));
            }
        }
        let Some(max) = self.step.max_replica_lag.map(|d| d.0) else {
            return Ok(None);
        };
        let lag = match self.last_lag_check {
            Some((at, lag)) if at.elapsed() < LAG_POLL => lag,
            _ => {
                let lag = target.replica_lag().await?;
                self.last_lag_check = Some((Instant::now(), lag));
                lag
            }
        };
        Ok(lag_exceeds(lag, Some(max)))
    }

    /// Waits while the throttle file exists or a replica lags too much, saying why.
    async fn wait_while_throttled<T: Database>(
        &mut self,
        target: &mut T,
        reporter: &mut dyn Reporter,
        interrupt: Option<&Interrupt>,
    ) -> Result<(), DbError> {
        let mut announced: Option<PauseReason> = None;
        loop {
            let Some(reason) = self.pause_reason(target).await? else {
                if announced.is_some() {
                    self.report(reporter, None);
                }
                return Ok(());
            };
            let stale = self
                .last_report
                .is_none_or(|t| t.elapsed() >= REPORT_EVERY * 10);
            if announced.as_ref().is_none_or(|a| !a.same_kind(&reason)) || stale {
                self.report(reporter, Some(reason.describe()));
                announced = Some(reason.clone());
            }
            let poll = match reason {
                PauseReason::ThrottleFile(_) => FILE_POLL,
                PauseReason::Operator { .. } => CONTROL_POLL,
                PauseReason::ReplicaLag { .. } => LAG_POLL,
            };
            if sleep(interrupt, poll).await {
                return Ok(());
            }
        }
    }
}

/// How a walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walked {
    /// Every row visited; the step is recorded done (or rolled back, for a `down` walk).
    Done,
    /// The interrupt stopped it between batches; it resumes from its checkpoint.
    Stopped { rows_done: u64 },
}

/// Which way a backfill walks: filling (`run`), or undoing with its `down` (`rollback`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Down,
}

/// Runs (or resumes) a backfill. The checkpoint and rows done are read from the state at the
/// start of every attempt, so a retry or a run after a crash continues from the last batch the
/// database committed — never from a batch whose commit was lost on the way back. `checkpoint`
/// is kept up to date for the runner, which treats a moved checkpoint as progress.
#[allow(clippy::too_many_arguments)]
pub async fn run<T: Database>(
    target: &mut T,
    key: &StepKey,
    step: &Backfill,
    plan_key: &(Vec<String>, Vec<String>),
    timeouts: Timeouts,
    checkpoint: &mut Option<String>,
    throttle_file: Option<&Path>,
    id: &StepId,
    reporter: &mut dyn Reporter,
    direction: Direction,
    interrupt: Option<&Interrupt>,
) -> Result<Walked, DbError> {
    let interrupted = || interrupt.is_some_and(|i| i.signal().is_some());
    let down = direction == Direction::Down;
    let record = target
        .load_steps(&key.plan)
        .await?
        .into_iter()
        .find(|r| r.phase == key.phase && r.index == key.index);
    // Only a checkpoint of this walk's own direction is a place to resume from: a run never
    // resumes from where a rollback's walk stopped, nor the other way round.
    *checkpoint = crate::db::state_sql::backfill_position(
        record.as_ref().and_then(|r| r.checkpoint.as_deref()),
        down,
    );
    let foreign = record.as_ref().is_some_and(|r| r.checkpoint.is_some()) && checkpoint.is_none();
    if foreign {
        // The other direction's position and progress: this walk starts from the beginning.
        target.set_checkpoint(key, None).await?;
    }
    let rows_before = match (&record, &checkpoint) {
        (Some(r), Some(_)) => u64::try_from(r.rows_done).unwrap_or(0),
        _ => 0,
    };

    let dry = target.recorder().is_some();
    let walk: Vec<String> = step.key.iter().map(ToString::to_string).collect();
    let key_columns = match target.backfill_key(&step.table, &walk).await {
        Ok(columns) => columns,
        // A dry run of a plan that creates the table: the key as the plan declares it.
        Err(_) if dry => plan_key.0.clone(),
        Err(e) => return Err(e),
    };
    let key_types_hint = if key_columns == plan_key.0 {
        plan_key.1.clone()
    } else {
        Vec::new()
    };
    let set: Vec<(String, String)> = step
        .set
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let base = BatchRequest {
        key,
        table: &step.table,
        key_columns: &key_columns,
        set: &set,
        predicate: step.predicate.as_deref(),
        after: None,
        limit: 0,
        timeouts,
        rows_per_second: 0.0,
        key_types_hint: &key_types_hint,
        down,
        pace: None,
    };
    let remaining = match target
        .backfill_remaining(&BatchRequest {
            after: checkpoint.as_deref(),
            ..base.clone()
        })
        .await
    {
        Ok(n) => n,
        Err(_) if dry => 0,
        Err(e) => return Err(e),
    };
    let total = rows_before + u64::try_from(remaining).unwrap_or(0);
    target
        .set_rows_total(key, i64::try_from(total).unwrap_or(i64::MAX))
        .await?;

    let throttle = step.throttle();
    let limits = match target.dialect() {
        Dialect::Postgres => Limits::POSTGRES,
        Dialect::Sqlite => Limits::SQLITE,
    };
    let pace = match throttle {
        Throttle::Auto { max_latency_impact } if !dry => {
            Some(Controller::new(limits, max_latency_impact))
        }
        _ => None,
    };
    let probe = match &pace {
        Some(_) => match target
            .start_probe(&key.plan, &step.table, &key_columns)
            .await
        {
            Ok(probe) => probe,
            Err(e) => {
                tracing::warn!(error = %e, "cannot probe the workload; pacing on the batches alone");
                None
            }
        },
        None => None,
    };
    let mut walk = Walk {
        id,
        step,
        throttle_file,
        total,
        done: rows_before,
        done_here: 0,
        started: Instant::now(),
        size: match step.batch_size {
            BatchSize::Auto => AUTO_START,
            BatchSize::Fixed(n) => n.max(1),
        },
        last_report: None,
        last_lag_check: None,
        control_of: (!dry).then_some(key.plan.as_str()),
        control: None,
        throttle,
        pace,
        probe,
        last_look: Instant::now(),
        seen: ProbeWindow::default(),
        write_lock_wait: Duration::ZERO,
        flushes: (0, Duration::ZERO, Duration::ZERO),
        last_pause: Duration::ZERO,
        cap: 0,
        look_alone: None,
    };
    walk.take_baseline().await;
    walk.last_look = Instant::now();
    walk.report(reporter, None);
    loop {
        walk.wait_while_throttled(target, reporter, interrupt)
            .await?;
        walk.look_alone(reporter, interrupt).await;
        if interrupted() {
            walk.report(reporter, Some("interrupted".to_string()));
            return Ok(Walked::Stopped {
                rows_done: walk.done,
            });
        }
        let batch_started = Instant::now();
        let pace_json = walk.pace_json();
        let outcome = target
            .backfill_batch(&BatchRequest {
                after: checkpoint.as_deref(),
                limit: walk.size,
                rows_per_second: walk.rate(),
                pace: Some(&pace_json),
                ..base.clone()
            })
            .await?;
        let took = batch_started.elapsed();
        if dry {
            // A dry run shows one batch: every later one sends the same statements.
            if let Some(recorder) = target.recorder() {
                recorder.note(
                    "the batch above repeats, each after the last key of the one before, until a batch finds no rows; then:",
                );
            }
            break;
        }
        let Some(last) = outcome.last_key else {
            break;
        };
        *checkpoint = Some(last);
        walk.done += outcome.rows;
        walk.done_here += outcome.rows;
        let (n, all, longest) = walk.flushes;
        walk.flushes = (
            n.saturating_add(1),
            all.saturating_add(outcome.flushed),
            longest.max(outcome.flushed),
        );
        let turned = walk.look(outcome.waited);
        let (batch_time, pause) = match (&walk.pace, walk.throttle) {
            (Some(c), _) => (c.batch_time(), c.pause_after(took)),
            (
                None,
                Throttle::Fixed {
                    target_batch_time,
                    pause,
                    ..
                },
            ) => (target_batch_time, pause),
            (None, Throttle::Auto { .. }) => (limits.start_batch_time, Duration::ZERO),
        };
        if step.batch_size == BatchSize::Auto {
            // Steered by how long the batch held its row locks, not by the round trips
            // around it: those cost the application nothing, and counting them would shrink
            // short batches to nothing on a slow link. A slow flush counts only in part
            // (`steered_time`).
            let steered = steered_time(outcome.held, outcome.flushed, batch_time);
            walk.size = next_auto_size(walk.size, steered, batch_time);
        }
        walk.cap = walk.max_rows_per_second(target).await?;
        let pause = pause_after(outcome.rows, took, pause, walk.cap);
        walk.last_pause = pause;
        if turned || walk.last_report.is_none_or(|t| t.elapsed() >= REPORT_EVERY) {
            walk.report(reporter, None);
        }
        if !pause.is_zero() {
            sleep(interrupt, pause).await;
        }
    }
    walk.total = walk.done;
    walk.report(reporter, None);
    match direction {
        Direction::Forward => target.finish_step(key).await?,
        // Rolled back: the status write also forgets the walk's checkpoint.
        Direction::Down => {
            target
                .set_step_status(key, crate::db::StepStatus::RolledBack)
                .await?
        }
    }
    Ok(Walked::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_at_the_workload_alone_come_further_apart() {
        let s = Duration::from_secs;
        let mut after = LOOK_ALONE_FIRST;
        let mut gaps = Vec::new();
        for _ in 0..6 {
            after = next_look_alone(after);
            gaps.push(after.as_secs());
        }
        assert_eq!(gaps, [10, 20, 40, 60, 60, 60]);
        assert_eq!(next_look_alone(Duration::ZERO), s(5));
    }

    #[test]
    fn a_busy_workload_takes_a_longer_baseline() {
        // A light workload: 50 probes.
        assert!(!baseline_complete(49, false, false));
        assert!(baseline_complete(50, false, false));
        // Nobody else at work: half of them.
        assert!(baseline_complete(25, true, false));
        assert!(!baseline_complete(24, true, false));
        // A busy workload: as many commits as a steady pace is judged on.
        assert!(!baseline_complete(50, false, true));
        assert!(!baseline_complete(99, false, true));
        assert!(baseline_complete(100, false, true));
        // Busy is a share of the workload's connections in a transaction (10%), or one
        // transaction in flight when its connections were not counted.
        assert!(pace::busy(Some(1.3), Some(4)));
        assert!(!pace::busy(Some(0.08), Some(4)));
        assert!(pace::busy(Some(1.0), None));
        assert!(pace::busy(Some(1.0), Some(0)), "0 connections: not counted");
        assert!(!pace::busy(Some(0.5), None));
        assert!(!pace::busy(None, Some(4)));
    }

    #[test]
    fn a_slow_flush_counts_up_to_half_the_batch_time() {
        let ms = Duration::from_millis;
        let us = Duration::from_micros;
        // A fast disk's flush counts whole: the batch is steered as before.
        assert_eq!(steered_time(ms(2), us(400), ms(2)), ms(2));
        assert_eq!(steered_time(ms(2), ms(1), ms(2)), ms(2));
        // A slow one's only up to half the batch time: 1 ms of work and an 8 ms flush
        // is a batch on time, 10 rows and an 8 ms flush one at half of it.
        assert_eq!(steered_time(ms(9), ms(8), ms(2)), ms(2));
        assert_eq!(steered_time(us(8_200), ms(8), ms(2)), us(1_200));
        // The batch grows until its work fills the other half, then holds.
        assert_eq!(
            next_auto_size(10, steered_time(us(8_200), ms(8), ms(2)), ms(2)),
            16
        );
        assert_eq!(
            next_auto_size(100, steered_time(ms(9), ms(8), ms(2)), ms(2)),
            100
        );
        // SQLite reports no flush: all of the held time counts.
        assert_eq!(steered_time(ms(9), Duration::ZERO, ms(5)), ms(9));
        // A flush longer than the held time (clocks read apart) is the held time.
        assert_eq!(steered_time(ms(1), ms(3), ms(2)), ms(1));
    }

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
        assert_eq!(
            next_auto_size(AUTO_MAX, Duration::from_millis(1), target),
            AUTO_MAX
        );
    }

    #[test]
    fn rate_cap_stretches_the_pause() {
        let ms = Duration::from_millis;
        // 1000 rows at 1000 rows/s must take a second: 100ms of work, 900ms of sleep.
        assert_eq!(pause_after(1000, ms(100), ms(10), 1000), ms(900));
        // The fixed pause wins when it is longer than the cap needs.
        assert_eq!(pause_after(10, ms(100), ms(50), 1000), ms(50));
        // No cap: the fixed pause only.
        assert_eq!(pause_after(1000, ms(1), ms(5), 0), ms(5));
    }

    #[test]
    fn replica_lag_pauses_only_above_the_maximum() {
        let s = Duration::from_secs;
        assert_eq!(lag_exceeds(Some(s(3)), Some(s(10))), None);
        assert_eq!(lag_exceeds(None, Some(s(10))), None);
        assert_eq!(lag_exceeds(Some(s(30)), None), None);
        let reason = lag_exceeds(Some(s(12)), Some(s(10))).expect("pauses");
        assert_eq!(
            reason.describe(),
            "replica lag 12.0s exceeds max_replica_lag 10.0s"
        );
    }
}
