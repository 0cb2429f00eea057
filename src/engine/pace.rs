//! The adaptive pace of a backfill (`throttle: auto`, the default): after each look at the
//! workload's health the backfill works a larger share of the time when the workload is
//! unaffected, and a smaller share at once when it suffers — multiplicative decrease sized to
//! the overshoot (as LEDBAT's), and a way back that returns fast to where the last cut came
//! from (as CUBIC's), the way congestion control shares a link. Pure: it takes the
//! signals of one look and returns the next pace and the reason, so its decisions are tested
//! on recorded sequences (`tests` below) without a database.
//!
//! The pace is two numbers: the batch time (how long a batch holds its row locks, what
//! `batch_size: auto` aims at) and the duty cycle (the share of time spent in batches; the
//! pause after a batch is `took × (1 − duty) / duty`). Both have floors, and the pause a
//! ceiling, so a backfill under a suffering workload crawls but never stops.
//!
//! Of the two, the batch time is what a workload feels most: a batch's WAL reaches the disk
//! with the next commit, and an application commit that comes just after a large batch waits
//! for all of it (measured in docs/benchmarks.md: 2 ms batches back to back doubled the
//! workload's p99, 50 ms batches made it ten times worse). So the look that matters most on
//! PostgreSQL is the probe *commit*'s latency, and a database where no other session is at
//! work gets the full pace at once, whatever the probes say (they only measure the backfill
//! against itself there).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A probe commit's baseline under this counts as this: below a millisecond, scheduler noise
/// on a busy host is larger than anything an application notices.
pub const BASELINE_FLOOR: Duration = Duration::from_millis(1);
/// A probe commit may also take this much longer than its baseline, when that is more than
/// the budget's factor allows: a millisecond or two is a disk's own jitter for a commit. Next
/// to a light workload 2 ms batches back to back took the probe commits' p95 from 0.6–0.9 ms
/// to 1.6–2.0 ms and the workload's p99 to 1.5–1.7×; judged by 1.5 × alone, the backfill
/// halved its pace every few seconds for that, at no gain to the workload (docs/benchmarks.md).
/// A 1 ms slack, builds alternating: p99 1.16–1.41× against 1.25–1.89×, at 0.18–0.29× of the
/// unthrottled speed against 0.39–0.47× (the light goal is 2× and 0.40×).
/// Not next to a busy workload (`BUSY_SHARE`): a workload whose connections are busy amplifies
/// a slower commit through its own queue (measured at half the machine's capacity: commits
/// 1.1 → 2.1 ms within the slack, the workload's p99 12×).
pub const COMMIT_SLACK: Duration = Duration::from_micros(1500);
/// The same for the probe read, whose baseline is a few tenths of a millisecond: measured next
/// to a light workload (docs/benchmarks.md), any second busy process took it from 0.3 ms to
/// 2 ms with the workload's p99 unchanged, since an application's tail is its commits.
pub const READ_BASELINE_FLOOR: Duration = Duration::from_millis(2);
/// A batch that waited longer than this for SQLite's write lock met another writer.
pub const WRITE_LOCK_WAIT_LIMIT: Duration = Duration::from_millis(2);
/// Duty cycle added after a healthy look (additive increase) …
const DUTY_STEP: f64 = 0.1;
/// … doubled by each healthy look in a row, up to this many times (0.1, 0.2, 0.4, 0.8), next
/// to a workload that is not busy: the way back after trouble that came and went takes three
/// or four looks, not eight (each look waits for `TAIL_SAMPLES` probe commits, about a second).
const MAX_STEPS_DOUBLED: u32 = 3;
/// … and the factor applied to duty and batch time after a bad one (multiplicative decrease):
/// lock waits, a stalled commit, transactions piling up, or a latency twice its limit …
const BACK_OFF: f64 = 0.5;
/// … and the least one, for a latency just over its limit (`Controller::latency_back_off`).
const SMALL_BACK_OFF: f64 = 0.9;
/// A workload with fewer transactions in flight than this before the first batch counts as
/// this: one more or less in flight is noise for a light workload, not queueing.
pub const IN_FLIGHT_FLOOR: f64 = 1.0;
/// A workload is busy when its connections were in a transaction at least this share of the
/// time before the first batch (its transactions in flight ÷ its connections): then a request
/// that finds its connection taken waits for it, and that queue grows much faster than the
/// server's own latency. Measured (docs/benchmarks.md): pgbench at 200 tx/s on 4 connections,
/// 1–3%; at half the machine's capacity, 18–40%. Without a count of the connections, one
/// transaction in flight (`IN_FLIGHT_FLOOR`) is busy.
pub const BUSY_SHARE: f64 = 0.1;
/// Probe commits needed to judge their tail (p95, the third slowest of 50): about a second
/// of them. Over 20 (the second slowest) the p95 of a steady pace crossed a 1.5 ms threshold
/// in a third of the looks and held a backfill at a tenth of its speed for nothing: the
/// workload's p99 was the same as at full pace (docs/benchmarks.md).
pub const TAIL_SAMPLES: usize = 50;
/// A probe commit slower than this many times its baseline (and than `STALL_FLOOR`) is a
/// stalled WAL flush: the disk stopped, and every application commit of the moment waited as
/// long. One such commit is enough to slow down, at once: its p95 would not show it (one in
/// fifty), and on this kind of virtual disk stalls come in runs, where the backfill's WAL in
/// the queue is what turns the workload's waits of a few milliseconds into a hundred
/// (measured in docs/benchmarks.md: at the same disk pressure, p99 3–7 ms without a
/// backfill, 10–107 ms with one).
pub const STALL_FACTOR: f64 = 10.0;
/// The shortest probe commit that counts as a stall, whatever its baseline.
pub const STALL_FLOOR: Duration = Duration::from_millis(20);
/// A cut after a healthy look lowers the way back's mark (`Controller::cut_from`) to this
/// share of it, unless the pace was above that (CUBIC's fast convergence, with its 0.85):
/// trouble that comes and goes, healthy looks between, leaves the mark near the pace before
/// it, and a workload that can bear less than the mark brings it down to what it bears in a
/// few cuts. Measured next to a light workload while the disk stalled every few seconds
/// (docs/benchmarks.md, 2026-12-08): with the mark set where each cut came from, five cuts
/// between healthy looks took it from 1.0 to 0.19, and the pace then climbed a tenth a look
/// for 15 s, the workload's p99 unchanged (1.00× its own paused seconds).
const MARK_DECAY: f64 = 0.85;
/// Batch time growth after a healthy look.
const BATCH_GROWTH: f64 = 1.25;

/// A workload whose connections queue its requests: `in_flight` transactions (their mean) on
/// `connections` (None: not counted) are busy at `BUSY_SHARE` of them, or without a count at
/// one in flight (`IN_FLIGHT_FLOOR`).
pub fn busy(in_flight: Option<f64>, connections: Option<u32>) -> bool {
    let Some(n) = in_flight else {
        return false;
    };
    match connections.filter(|&c| c > 0) {
        Some(c) => (n / f64::from(c)).clamp(0.0, 1.0) >= BUSY_SHARE,
        None => n >= IN_FLIGHT_FLOOR,
    }
}

/// Bounds of the pace on one dialect.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub min_batch_time: Duration,
    pub start_batch_time: Duration,
    pub max_batch_time: Duration,
    /// The longest batch while other sessions are at work (or nobody knows): what a commit
    /// of theirs may find ahead of it in the WAL. `max_batch_time` is for an idle database.
    pub busy_max_batch_time: Duration,
    pub min_duty: f64,
    pub start_duty: f64,
    pub max_duty: f64,
    /// The longest pause after a batch: the backfill is never stuck.
    pub max_pause: Duration,
    /// What health means when no probe is judged.
    pub quiet: &'static str,
}

impl Limits {
    /// PostgreSQL: batches take row locks only. It starts with 2 ms batches back to back,
    /// and while other sessions work they stay at 2 ms: measured next to a light workload
    /// (docs/benchmarks.md, batches of two round trips), 2 ms batches back to back ran at
    /// 80–84k rows/s with the workload's p99 1.5–1.7×, 3 ms at 106k with 2.0×, 5 ms at
    /// 122k with 1.9–2.1×, 50 ms at 123–192k with 2.5–4.6×. On an idle database they run
    /// flat out in 50 ms batches.
    pub const POSTGRES: Limits = Limits {
        min_batch_time: Duration::from_millis(2),
        start_batch_time: Duration::from_millis(2),
        max_batch_time: Duration::from_millis(50),
        busy_max_batch_time: Duration::from_millis(2),
        min_duty: 0.05,
        start_duty: 1.0,
        max_duty: 1.0,
        max_pause: Duration::from_secs(1),
        quiet: "no lock waits",
    };

    /// SQLite: a batch holds the database's only write lock, so every other writer waits for
    /// the whole batch: batches stay short, and a fifth of the time is always left free, since
    /// a waiting writer retries on its own schedule (its busy handler sleeps 1…100 ms) and a
    /// backfill that never let go of the lock would starve it without ever waiting itself.
    pub const SQLITE: Limits = Limits {
        min_batch_time: Duration::from_millis(2),
        start_batch_time: Duration::from_millis(5),
        max_batch_time: Duration::from_millis(20),
        busy_max_batch_time: Duration::from_millis(20),
        min_duty: 0.05,
        start_duty: 0.4,
        max_duty: 0.8,
        max_pause: Duration::from_secs(1),
        quiet: "no batch waited for the write lock",
    };
}

/// What one look at the workload saw (since the look before).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Signals {
    /// PostgreSQL: the probe read's p90 latency over the look's window (None: too few probes).
    pub probe_p90: Option<Duration>,
    /// PostgreSQL: the probe commits' p95 latency since the pace last moved (None: too few).
    pub commit_p95: Option<Duration>,
    /// PostgreSQL: the slowest probe commit since the last look (None: no commit probed).
    pub commit_max: Option<Duration>,
    /// PostgreSQL: the most other client sessions seen at work (None: not read in this look).
    pub others_active: Option<u32>,
    /// PostgreSQL: the mean number of other sessions' transactions in flight (None: not read).
    pub in_flight: Option<f64>,
    /// PostgreSQL: the most sessions seen waiting on locks the backfill held.
    pub blocked_sessions: u32,
    /// PostgreSQL: the most sessions seen holding locks the backfill waited on.
    pub blocking_sessions: u32,
    /// SQLite: the longest a batch waited for the write lock.
    pub write_lock_wait: Duration,
}

/// Which way the pace moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trend {
    /// The first pace, before any look.
    Start,
    Up,
    Down,
    /// At a bound already, or too little seen to move.
    Steady,
}

/// The pace after a look, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub trend: Trend,
    /// The signal that decided: `commit_stall`, `commit_p95`, `probe_p90`, `in_flight`,
    /// `others_active` (an idle database, or a workload that just appeared),
    /// `blocked_sessions`, `blocking_sessions`,
    /// `write_lock_wait` or `none` (healthy without a probe, or nothing seen yet).
    pub signal: &'static str,
    /// Its value (milliseconds for times, a count for sessions).
    pub value: Option<f64>,
    /// For people: "slowed: probe p90 4.1 ms > 1.5 × 2.2 ms baseline".
    pub reason: String,
}

/// The adaptive pace of one backfill attempt.
#[derive(Debug, Clone)]
pub struct Controller {
    limits: Limits,
    budget: f64,
    baseline: Option<Duration>,
    commit_baseline: Option<Duration>,
    in_flight_baseline: Option<f64>,
    /// The workload's connections before the first batch (None: not counted).
    connections: Option<u32>,
    /// The share of the time those connections were in a transaction before the first batch
    /// (None: not known), and whether that made the workload busy (`BUSY_SHARE`). Fixed by
    /// the first baseline: a later, lower one tightens the limits, not the rules.
    share: Option<f64>,
    busy: bool,
    /// The first baselines (read, commit, in flight), once a look at the workload alone has
    /// replaced them: later ones are never above them.
    first: Option<(Option<Duration>, Option<Duration>, Option<f64>)>,
    /// The last look saw no other session at work.
    idle: bool,
    duty: f64,
    /// The share of time before the last cut (the mark; the first of a stalled flush's run
    /// of cuts; after a healthy look, no less than `MARK_DECAY` of it before). Healthy looks
    /// below it win it back faster (a step at least, half the way each time), the way CUBIC
    /// returns to the window it lost a packet at.
    cut_from: f64,
    /// Healthy looks since the last that was not: each doubles the step the next one adds
    /// (`DUTY_STEP`, up to `MAX_STEPS_DOUBLED` times), next to a workload that is not busy.
    healthy_run: u32,
    batch_time: Duration,
    last: Decision,
}

/// Milliseconds, as a float.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `4.1 ms`, `0.35 ms`, `120 ms`.
pub fn show_ms(d: Duration) -> String {
    let v = ms(d);
    if v >= 10.0 {
        format!("{v:.0} ms")
    } else if v >= 1.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.2} ms")
    }
}

fn sessions(n: u32) -> String {
    if n == 1 {
        "1 session".to_string()
    } else {
        format!("{n} sessions")
    }
}

impl Controller {
    /// A controller at the dialect's starting pace, with `budget` the allowed growth of the
    /// probe's latency (`max_latency_impact`).
    pub fn new(limits: Limits, budget: f64) -> Self {
        Self {
            limits,
            budget,
            baseline: None,
            commit_baseline: None,
            in_flight_baseline: None,
            connections: None,
            share: None,
            busy: false,
            first: None,
            idle: false,
            duty: limits.start_duty,
            cut_from: 0.0,
            healthy_run: 0,
            batch_time: limits.start_batch_time,
            last: Decision {
                trend: Trend::Start,
                signal: "none",
                value: None,
                reason: "starting: no look at the workload yet".to_string(),
            },
        }
    }

    /// The probes' latencies before the first batch (their p90s: the read's, the commit's),
    /// which later looks compare with.
    pub fn set_baseline(&mut self, read: Option<Duration>, commit: Option<Duration>) {
        self.baseline = read;
        self.commit_baseline = commit;
        self.describe_baseline();
    }

    /// The workload's transactions in flight before the first batch (their mean), which later
    /// looks compare with, and the connections they are in flight on (None: not counted).
    pub fn set_in_flight_baseline(&mut self, in_flight: Option<f64>, connections: Option<u32>) {
        self.in_flight_baseline = in_flight;
        self.connections = connections.filter(|&n| n > 0);
        self.share = match (in_flight, self.connections) {
            (Some(n), Some(c)) => Some((n / f64::from(c)).clamp(0.0, 1.0)),
            _ => None,
        };
        self.busy = busy(in_flight, self.connections);
        self.describe_baseline();
    }

    /// A new look at the workload alone, the backfill paused (`LOOK_ALONE_FIRST`): what it
    /// reads becomes the baseline, but never above the first one. A baseline taken in a bad
    /// moment of the machine (a disk stalling, a burst of the workload) holds limits above
    /// what the workload has once the moment passes: measured next to a heavy workload, a
    /// baseline of 2.0 ms commits and 1.6 transactions in flight, taken while the disk
    /// stalled, let a full-pace backfill take the workload's p99 to 13× that of the moments
    /// the backfill was paused, every signal within its limit. The latest reading, not the
    /// lowest: the workload moves by itself (the same heavy workload read 1.0–1.4 in flight
    /// in eight such looks), and the lowest of many held a backfill at its floor through the
    /// workload's own ups. Never above the first: a higher reading may be the backfill's wake
    /// (its dirty pages, its WAL). Whether the workload counts as busy stays as the first
    /// baseline found it. Returns what moved, for people, if anything did.
    pub fn rebaseline(
        &mut self,
        read: Option<Duration>,
        commit: Option<Duration>,
        in_flight: Option<f64>,
    ) -> Option<String> {
        /// Sets `current` to `reading`, but never above `first`: (was, now) when it moved.
        fn replace<T: PartialOrd + Copy>(
            current: &mut Option<T>,
            first: Option<T>,
            reading: Option<T>,
        ) -> Option<(T, T)> {
            let (was, first, reading) = (current.as_mut()?, first?, reading?);
            let now = if reading < first { reading } else { first };
            let moved = (*was != now).then_some((*was, now));
            *was = now;
            moved
        }
        let first = *self.first.get_or_insert((
            self.baseline,
            self.commit_baseline,
            self.in_flight_baseline,
        ));
        let mut moved = Vec::new();
        if let Some((was, now)) = replace(&mut self.commit_baseline, first.1, commit) {
            moved.push(format!("commit p95 {} → {}", show_ms(was), show_ms(now)));
        }
        if let Some((was, now)) = replace(&mut self.baseline, first.0, read) {
            moved.push(format!("probe p90 {} → {}", show_ms(was), show_ms(now)));
        }
        if let Some((was, now)) = replace(&mut self.in_flight_baseline, first.2, in_flight) {
            moved.push(format!("in flight {was:.2} → {now:.2}"));
        }
        (!moved.is_empty())
            .then(|| format!("new baseline, the workload alone: {}", moved.join(", ")))
    }

    /// Whether the backfill should now and then pause to look at the workload alone
    /// (`rebaseline`): next to a busy workload, whose limits carry no slack.
    pub fn looks_alone(&self) -> bool {
        self.busy
    }

    /// The share of the time the workload's connections were in a transaction before the
    /// first batch (None: not known).
    fn busy_share(&self) -> Option<f64> {
        self.share
    }

    /// A workload whose connections queue its requests (`BUSY_SHARE`).
    fn busy(&self) -> bool {
        self.busy
    }

    /// How much the server's latency may grow: the budget is the workload's, and a request
    /// that finds its connection taken waits for it (its response time goes as the server's
    /// latency ÷ (1 − the share of the time its connections are busy)). Latency × `x` at a
    /// steady rate keeps `x` times as many transactions in flight (Little's law), so the
    /// response grows by `x (1 − share) ÷ (1 − x share)`; held to the budget `b`, that is
    /// `x ≤ b ÷ (1 + (b − 1) share)`: the budget itself for connections mostly idle, 1.25 for
    /// 40% busy under 1.5×.
    fn server_budget(&self) -> f64 {
        let share = self.busy_share().unwrap_or(0.0).min(0.9);
        self.budget / (1.0 + (self.budget - 1.0) * share)
    }

    /// The most transactions in flight the budget allows.
    fn in_flight_limit(&self, before: f64) -> f64 {
        before.max(IN_FLIGHT_FLOOR) * self.server_budget()
    }

    fn describe_baseline(&mut self) {
        let (read, commit) = (self.baseline, self.commit_baseline);
        let mut parts = Vec::new();
        if let Some(b) = read {
            parts.push(format!("probe p90 {}", show_ms(b)));
        }
        if let Some(b) = commit {
            parts.push(format!("commit p95 {}", show_ms(b)));
        }
        match (self.in_flight_baseline, self.connections) {
            (Some(n), Some(c)) => parts.push(format!("{n:.1} in flight on {c} connections")),
            (Some(n), None) => parts.push(format!("{n:.1} in flight")),
            _ => {}
        }
        if !parts.is_empty() {
            self.last.reason = format!("starting: baseline {}", parts.join(", "));
        }
    }

    pub fn baseline(&self) -> Option<Duration> {
        self.baseline
    }

    /// The probe commits' baseline: None when the probe makes no commits.
    pub fn commit_baseline(&self) -> Option<Duration> {
        self.commit_baseline
    }

    /// The longest a probe commit may take before it counts as a stalled flush (None: the
    /// probe makes no commits).
    pub fn stall_limit(&self) -> Option<Duration> {
        self.commit_baseline
            .map(|b| b.max(BASELINE_FLOOR).mul_f64(STALL_FACTOR).max(STALL_FLOOR))
    }

    /// A probe commit this slow calls for a look at once.
    pub fn stalled(&self, slowest_commit: Duration) -> bool {
        self.stall_limit()
            .is_some_and(|limit| slowest_commit > limit)
    }

    /// What `batch_size: auto` aims at now.
    pub fn batch_time(&self) -> Duration {
        self.batch_time
    }

    /// The share of time spent in batches.
    pub fn duty(&self) -> f64 {
        self.duty
    }

    pub fn last(&self) -> &Decision {
        &self.last
    }

    /// The pause after a batch that took `took`, so that batches fill `duty` of the time;
    /// never longer than the dialect's ceiling.
    pub fn pause_after(&self, took: Duration) -> Duration {
        let factor = (1.0 - self.duty) / self.duty;
        took.mul_f64(factor.max(0.0)).min(self.limits.max_pause)
    }

    /// The most a probe's latency may be: the server's budget × its baseline (at least
    /// `floor`), or the baseline + `slack` when that is more.
    fn limit(&self, baseline: Duration, floor: Duration, slack: Duration) -> Duration {
        let baseline = baseline.max(floor);
        baseline.mul_f64(self.server_budget()).max(baseline + slack)
    }

    /// The probe commits' slack: none next to a busy workload, whose queue amplifies what its
    /// commits lose.
    fn commit_slack(&self) -> Duration {
        if self.busy() {
            Duration::ZERO
        } else {
            COMMIT_SLACK
        }
    }

    /// The limit of the latency `signal` judges (None: not a latency, or no baseline).
    fn latency_limit(&self, signal: &str) -> Option<Duration> {
        match signal {
            "commit_p95" => self
                .commit_baseline
                .map(|b| self.limit(b, BASELINE_FLOOR, self.commit_slack())),
            "probe_p90" => self
                .baseline
                .map(|b| self.limit(b, READ_BASELINE_FLOOR, Duration::ZERO)),
            _ => None,
        }
    }

    /// How far a latency over its limit takes the pace down: by the square of limit ÷
    /// latency, between a tenth and a half. A latency just over its limit is a queue that
    /// has barely begun, and halving the pace for it threw away seconds of work (measured:
    /// next to a light workload, commit p95s of 2.6–3.2 ms against a 2.5 ms limit halved a
    /// backfill four times and left it at 0.26× of the unthrottled speed, with the
    /// workload's p99 no better than at twice that). The way LEDBAT, the congestion control
    /// made for transfers that must yield to everyone else, sizes its step to the delay it
    /// measures; a latency 1.41 times its limit or more still halves it at once.
    fn latency_back_off(latency: f64, limit: Duration) -> f64 {
        let ratio = ms(limit) / latency.max(f64::MIN_POSITIVE);
        (ratio * ratio).clamp(BACK_OFF, SMALL_BACK_OFF)
    }

    /// A probe's latency judged against its baseline: None when either is missing, else
    /// whether it is within budget (`budget` × the baseline, or the baseline + `slack` when
    /// that is more), with the words for it.
    fn judge(
        &self,
        name: &str,
        latency: Option<Duration>,
        baseline: Option<Duration>,
        floor: Duration,
        slack: Duration,
    ) -> Option<(bool, f64, String)> {
        let (latency, baseline) = (latency?, baseline?.max(floor));
        let budget = self.server_budget();
        let by_ratio = baseline.mul_f64(budget);
        let by_slack = baseline + slack;
        let over = latency > self.limit(baseline, floor, slack);
        let sign = if over { ">" } else { "≤" };
        let limit = if by_slack > by_ratio {
            format!("{} baseline + {}", show_ms(baseline), show_ms(slack))
        } else if (budget - self.budget).abs() >= 0.005 {
            let share = self.busy_share().unwrap_or(0.0);
            format!(
                "{budget:.2} × {} baseline ({}× with its connections {:.0}% busy)",
                show_ms(baseline),
                self.budget,
                share * 100.0
            )
        } else {
            format!("{} × {} baseline", self.budget, show_ms(baseline))
        };
        Some((
            !over,
            ms(latency),
            format!("{name} {} {sign} {limit}", show_ms(latency)),
        ))
    }

    /// What the signals say: the first complaint found, else health.
    fn verdict(&self, s: &Signals) -> (bool, &'static str, Option<f64>, String) {
        if s.blocked_sessions > 0 {
            let n = s.blocked_sessions;
            return (
                false,
                "blocked_sessions",
                Some(f64::from(n)),
                format!("{} waited on the backfill's row locks", sessions(n)),
            );
        }
        if s.blocking_sessions > 0 {
            let n = s.blocking_sessions;
            return (
                false,
                "blocking_sessions",
                Some(f64::from(n)),
                format!("the backfill waited on row locks held by {}", sessions(n)),
            );
        }
        if s.write_lock_wait > WRITE_LOCK_WAIT_LIMIT {
            return (
                false,
                "write_lock_wait",
                Some(ms(s.write_lock_wait)),
                format!(
                    "a batch waited {} for the write lock (another writer held it)",
                    show_ms(s.write_lock_wait)
                ),
            );
        }
        if s.others_active == Some(0) {
            return (
                true,
                "others_active",
                Some(0.0),
                "idle: no other session at work".to_string(),
            );
        }
        if let (Some(slowest), Some(limit)) = (s.commit_max, self.stall_limit()) {
            if slowest > limit {
                return (
                    false,
                    "commit_stall",
                    Some(ms(slowest)),
                    format!(
                        "a probe commit took {} > {} (the WAL flush stalled: every commit waited)",
                        show_ms(slowest),
                        show_ms(limit)
                    ),
                );
            }
        }
        let commit = self.judge(
            "commit p95",
            s.commit_p95,
            self.commit_baseline,
            BASELINE_FLOOR,
            self.commit_slack(),
        );
        let read = self.judge(
            "probe p90",
            s.probe_p90,
            self.baseline,
            READ_BASELINE_FLOOR,
            Duration::ZERO,
        );
        if let (Some(now), Some(before)) = (s.in_flight, self.in_flight_baseline) {
            let limit = self.in_flight_limit(before);
            if now > limit {
                let of = match self.connections {
                    Some(c) => format!("{before:.1} of {c} connections before"),
                    None => format!("{before:.1} before"),
                };
                return (
                    false,
                    "in_flight",
                    Some(now),
                    format!(
                        "{now:.1} transactions in flight > {limit:.1} ({of}; {}× their latency)",
                        self.budget
                    ),
                );
            }
        }
        match (commit, read) {
            (Some((false, v, why)), _) => (false, "commit_p95", Some(v), why),
            (_, Some((false, v, why))) => (false, "probe_p90", Some(v), why),
            (Some((true, v, why)), _) => (true, "commit_p95", Some(v), why),
            (None, Some((true, v, why))) => (true, "probe_p90", Some(v), why),
            (None, None) => (true, "none", None, self.limits.quiet.to_string()),
        }
    }

    /// Takes one look's signals and moves the pace: up a step when healthy, halved when not;
    /// the full pace at once on an idle database, and the starting pace again as soon as a
    /// workload appears on it.
    pub fn decide(&mut self, s: &Signals) -> &Decision {
        let (healthy, signal, value, what) = self.verdict(s);
        let l = self.limits;
        let was_idle = self.idle;
        if s.others_active.is_some() {
            self.idle = s.others_active == Some(0);
        }
        let (trend, reason) = if signal == "others_active" {
            let moved = self.duty < l.max_duty || self.batch_time < l.max_batch_time;
            self.duty = l.max_duty;
            self.batch_time = l.max_batch_time;
            if moved {
                (Trend::Up, format!("sped up: {what}"))
            } else {
                (Trend::Steady, format!("full pace: {what}"))
            }
        } else if was_idle && !self.idle {
            let n = s.others_active.unwrap_or(0);
            self.healthy_run = 0;
            self.duty = self.duty.min(l.start_duty);
            self.batch_time = self.batch_time.min(l.start_batch_time);
            self.last = Decision {
                trend: Trend::Down,
                signal: "others_active",
                value: Some(f64::from(n)),
                reason: format!(
                    "slowed: {} at work, the idle database is not: back to the starting pace",
                    sessions(n)
                ),
            };
            return &self.last;
        } else if healthy {
            // The cheap lever first: more of the time in short batches; longer batches only
            // when the time is full. Below the share the last cut came from, half the way
            // back to it at each healthy look (at least a step): what cut it was a moment, and
            // if it comes again it cuts again, from lower. The step doubles with each healthy
            // look in a row.
            // Not next to a busy workload: its queue amplifies every moment of trouble, and
            // it gets a tenth a look, no more.
            let (back, step) = if self.busy() {
                (0.0, DUTY_STEP)
            } else {
                let doubled = self.healthy_run.min(MAX_STEPS_DOUBLED);
                (
                    (self.cut_from - self.duty) / 2.0,
                    DUTY_STEP * f64::from(1u32 << doubled),
                )
            };
            self.healthy_run = self.healthy_run.saturating_add(1);
            let duty = (self.duty + step.max(back)).min(l.max_duty);
            let batch = if duty < l.max_duty || self.duty < l.max_duty {
                self.batch_time
            } else {
                let cap = if self.idle {
                    l.max_batch_time
                } else {
                    l.busy_max_batch_time
                };
                self.batch_time.mul_f64(BATCH_GROWTH).min(cap)
            };
            let moved = duty > self.duty || batch > self.batch_time;
            self.duty = duty;
            self.batch_time = batch;
            if moved {
                (Trend::Up, format!("sped up: {what}"))
            } else {
                (Trend::Steady, format!("full pace: {what}"))
            }
        } else {
            // A slow probe: shorter batches first (what a commit waits for is the WAL of the
            // batch before it), less of the time once they are as short as they go. Lock
            // waits and a stalled flush: both at once.
            // Transactions queueing (in flight) want CPU back: both levers, like lock waits.
            self.healthy_run = 0;
            let limit = self.latency_limit(signal);
            // Next to a busy workload, always by half: its queue amplifies even a latency
            // just over its limit (as it gets no commit slack).
            let factor = match (limit, value) {
                (Some(limit), Some(v)) if !self.busy() => Self::latency_back_off(v, limit),
                _ => BACK_OFF,
            };
            let batch = self.batch_time.mul_f64(factor).max(l.min_batch_time);
            let duty = if limit.is_some() && batch < self.batch_time {
                self.duty
            } else {
                (self.duty * factor).max(l.min_duty)
            };
            let moved = duty < self.duty || batch < self.batch_time;
            if duty < self.duty {
                // Cuts that follow a stalled flush's cut, look after look, are the same moment
                // (stalls come in runs, each one calling a look at once, and the next look's
                // p95 still carries the queue a stall left): the way back aims at the share
                // the first of them cut, not the last. Other cuts in a row are trouble that
                // lasted seconds: the way back aims at where the latest one cut. A cut after
                // a healthy look, on the way back, is trouble that comes and goes: the mark
                // stays near the pace before it (`MARK_DECAY`), not where the way back had
                // got to. Not left where it was after a stalled flush that comes back: with
                // the disk made to stall every two seconds, holding the mark ran faster, and
                // the workload's p90 while it ran rose with the speed, to 1.3–1.7 ms against
                // 0.9–1.0 ms while it was paused (docs/benchmarks.md): the backfill's writes
                // lengthen a stalling disk's queue.
                self.cut_from = match self.last.trend {
                    Trend::Down if self.last.signal == "commit_stall" => {
                        self.cut_from.max(self.duty)
                    }
                    Trend::Down => self.duty,
                    _ => self.duty.max(self.cut_from * MARK_DECAY),
                };
            }
            self.duty = duty;
            self.batch_time = batch;
            if moved {
                (Trend::Down, format!("slowed: {what}"))
            } else {
                (Trend::Steady, format!("slowed to the floor: {what}"))
            }
        };
        self.last = Decision {
            trend,
            signal,
            value,
            reason,
        };
        &self.last
    }
}

/// The pace a backfill runs at and why, as progress events, plain lines and `phased status`
/// show it (status reads it from the step's `progress`, written with each checkpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaceReport {
    /// `auto` (set by the workload's health) or `fixed` (the plan's knobs).
    pub throttle: String,
    /// What a batch aims to take (how long it holds its row locks).
    pub batch_time_ms: f64,
    /// The pause after the last batch.
    pub pause_ms: f64,
    /// The share of time the backfill aims to spend in batches (0…1).
    pub duty: f64,
    /// A rows-per-second cap over it: the operator's `phased pace`, else the step's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rows_per_second: Option<u64>,
    pub trend: Trend,
    /// The signal that set the pace (see [`Decision::signal`]).
    pub signal: String,
    /// Its value: milliseconds for times, a count for sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    pub reason: String,
}

impl PaceReport {
    /// `auto, batch 10 ms + pause 10 ms — slowed: probe p90 4.1 ms > 1.5 × 2.2 ms baseline`.
    pub fn describe(&self) -> String {
        let show = |v: f64| show_ms(Duration::from_secs_f64(v.max(0.0) / 1000.0));
        let mut text = format!(
            "{}, batch {} + pause {} ({:.0}% busy)",
            self.throttle,
            show(self.batch_time_ms),
            show(self.pause_ms),
            self.duty * 100.0
        );
        if let Some(cap) = self.max_rows_per_second {
            text.push_str(&format!(", at most {cap} rows/s"));
        }
        text.push_str(" — ");
        text.push_str(&self.reason);
        text
    }
}

/// The p90 of some probe latencies (None for fewer than `min` samples). Sorts them.
pub fn p90(samples: &mut [Duration], min: usize) -> Option<Duration> {
    quantile(samples, 0.9, min)
}

/// The `q` quantile (nearest rank) of some probe latencies (None for fewer than `min`
/// samples). Sorts them.
pub fn quantile(samples: &mut [Duration], q: f64, min: usize) -> Option<Duration> {
    if samples.is_empty() || samples.len() < min {
        return None;
    }
    samples.sort_unstable();
    let rank = ((samples.len() as f64) * q).ceil() as usize;
    Some(samples[rank.clamp(1, samples.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Equal to the microsecond (the duty cycle is a float).
    fn assert_near(got: Duration, want: Duration) {
        let diff = got.abs_diff(want);
        assert!(diff < Duration::from_micros(1), "{got:?} is not {want:?}");
    }

    fn probe(p90: u64) -> Signals {
        Signals {
            probe_p90: Some(ms(p90)),
            ..Default::default()
        }
    }

    fn pg(baseline: u64) -> Controller {
        let mut c = Controller::new(five_ms_cap(), 1.5);
        c.set_baseline(Some(ms(baseline)), None);
        c
    }

    /// PostgreSQL's limits with room for batches to grow next to a workload, to show the
    /// order the levers move in.
    fn five_ms_cap() -> Limits {
        Limits {
            busy_max_batch_time: ms(5),
            ..Limits::POSTGRES
        }
    }

    #[test]
    fn next_to_a_workload_postgres_batches_stay_short_and_the_time_fills() {
        let mut c = Controller::new(Limits::POSTGRES, 1.5);
        c.set_baseline(Some(ms(2)), None);
        c.decide(&probe(5));
        assert_eq!(c.duty(), 0.5);
        for _ in 0..30 {
            c.decide(&probe(2));
        }
        assert_eq!(c.duty(), 1.0);
        assert_eq!(c.batch_time(), ms(2));
        assert_eq!(c.pause_after(ms(2)), Duration::ZERO);
    }

    #[test]
    fn grows_to_full_pace_while_the_workload_is_unaffected() {
        // From half the time (SQLite's start, say), to show the order the levers move in.
        let limits = Limits {
            start_duty: 0.5,
            ..five_ms_cap()
        };
        let mut c = Controller::new(limits, 1.5);
        c.set_baseline(Some(ms(2)), None);
        let mut paces = vec![(c.duty(), c.batch_time())];
        for _ in 0..30 {
            let d = c.decide(&probe(2)).clone();
            assert_ne!(d.trend, Trend::Down, "{d:?}");
            paces.push((c.duty(), c.batch_time()));
        }
        assert!(
            paces
                .windows(2)
                .all(|w| w[1].0 >= w[0].0 && w[1].1 >= w[0].1),
            "{paces:?}"
        );
        // The share of time fills first, in batches as short as they go; only then do the
        // batches grow, up to the longest a busy database gets.
        let full = paces.iter().position(|p| p.0 == 1.0).expect("full duty");
        assert!(
            paces[..=full]
                .iter()
                .all(|p| p.1 == limits.start_batch_time),
            "{paces:?}"
        );
        assert!(paces[full + 1].1 > limits.start_batch_time);
        assert_eq!(c.duty(), 1.0);
        assert_eq!(c.batch_time(), limits.busy_max_batch_time);
        assert_eq!(c.pause_after(ms(5)), Duration::ZERO);
        assert_eq!(c.last().trend, Trend::Steady);
        assert_eq!(
            c.last().reason,
            "full pace: probe p90 2.0 ms ≤ 1.5 × 2.0 ms baseline"
        );
    }

    #[test]
    fn backs_off_at_once_and_by_half_when_the_probe_suffers() {
        let mut c = Controller::new(five_ms_cap(), 1.5);
        c.set_baseline(Some(ms(2)), None);
        for _ in 0..30 {
            c.decide(&probe(2));
        }
        assert_eq!(c.batch_time(), ms(5));
        let d = c.decide(&probe(5)).clone();
        assert_eq!(d.trend, Trend::Down);
        assert_eq!(d.signal, "probe_p90");
        assert_eq!(d.value, Some(5.0));
        assert_eq!(d.reason, "slowed: probe p90 5.0 ms > 1.5 × 2.0 ms baseline");
        // The batches halve first: what a commit waits behind is the batch before it.
        assert_near(c.batch_time(), Duration::from_micros(2500));
        assert_eq!(c.duty(), 1.0);
        // One more bad look takes them to the floor (5 → 2.5 → 2 ms) …
        assert_eq!(c.decide(&probe(5)).trend, Trend::Down);
        assert_eq!(c.batch_time(), five_ms_cap().min_batch_time);
        assert_eq!(c.duty(), 1.0);
        // … then the share of time halves: the pause equals the batch.
        c.decide(&probe(5));
        assert_eq!(c.duty(), 0.5);
        assert_near(c.pause_after(ms(2)), ms(2));
        c.decide(&probe(5));
        assert_eq!(c.duty(), 0.25);
        // Fast down, slower up: one good look wins back half the way to the share the last
        // cut came from (0.5 → 0.25; cuts in a row are trouble that lasts), at least a tenth
        // of the time; the next one a fifth, the step doubled by the healthy look before it.
        c.decide(&probe(2));
        assert!((c.duty() - 0.375).abs() < 1e-9, "{}", c.duty());
        c.decide(&probe(2));
        assert!((c.duty() - 0.575).abs() < 1e-9, "{}", c.duty());
        assert_eq!(c.batch_time(), Limits::POSTGRES.min_batch_time);
    }

    #[test]
    fn only_an_idle_database_gets_batches_longer_than_the_busy_cap() {
        let mut c = pg_commit(1, 1);
        for _ in 0..30 {
            c.decide(&commit(1, 3));
        }
        assert_eq!(c.batch_time(), five_ms_cap().busy_max_batch_time);
        c.decide(&commit(1, 0));
        assert_eq!(c.batch_time(), Limits::POSTGRES.max_batch_time);
    }

    #[test]
    fn never_below_the_floor_and_never_stuck_paused() {
        let mut c = pg(1);
        let blocked = Signals {
            blocked_sessions: 3,
            ..Default::default()
        };
        for _ in 0..50 {
            c.decide(&blocked);
            assert!(c.duty() >= Limits::POSTGRES.min_duty);
            assert!(c.batch_time() >= Limits::POSTGRES.min_batch_time);
        }
        assert_eq!(c.duty(), Limits::POSTGRES.min_duty);
        assert_eq!(c.batch_time(), Limits::POSTGRES.min_batch_time);
        assert_eq!(c.last().trend, Trend::Steady);
        assert_eq!(
            c.last().reason,
            "slowed to the floor: 3 sessions waited on the backfill's row locks"
        );
        // At the floor a 2 ms batch is followed by 38 ms: slow, but moving.
        assert_near(c.pause_after(ms(2)), ms(38));
        // However long a batch took (it waited on a lock), the pause is bounded.
        assert_eq!(
            c.pause_after(Duration::from_secs(30)),
            Duration::from_secs(1)
        );
        // And the first healthy look moves it up again.
        assert_eq!(c.decide(&probe(1)).trend, Trend::Up);
    }

    #[test]
    fn recovers_after_a_recorded_disturbance() {
        // A recorded sequence: quiet, a burst of lock waits, quiet again.
        let mut c = pg(1);
        let mut seq = vec![probe(1); 5];
        seq.extend(vec![
            Signals {
                blocking_sessions: 1,
                ..Default::default()
            };
            3
        ]);
        seq.extend(vec![probe(1); 10]);
        let trends: Vec<Trend> = seq.iter().map(|s| c.decide(s).trend).collect();
        let first_down = trends.iter().position(|t| *t == Trend::Down).expect("down");
        assert_eq!(first_down, 5, "{trends:?}");
        assert!(trends[8..].iter().all(|t| *t != Trend::Down), "{trends:?}");
        assert_eq!(trends[8], Trend::Up, "{trends:?}");
        // Ten quiet looks give the whole time back.
        assert_eq!(c.duty(), Limits::POSTGRES.max_duty);
    }

    #[test]
    fn lock_waits_outrank_a_healthy_probe() {
        let mut c = pg(1);
        let d = c
            .decide(&Signals {
                probe_p90: Some(ms(1)),
                blocking_sessions: 1,
                ..Default::default()
            })
            .clone();
        assert_eq!(d.signal, "blocking_sessions");
        assert_eq!(
            d.reason,
            "slowed: the backfill waited on row locks held by 1 session"
        );
    }

    #[test]
    fn a_tiny_baseline_counts_as_the_floor() {
        let mut c = pg(0);
        // A 0.2 ms read baseline is compared as 2 ms: 3 ms is within 1.5×, 4 ms is not.
        c.set_baseline(Some(Duration::from_micros(200)), None);
        assert_eq!(c.decide(&probe(3)).trend, Trend::Up);
        assert_eq!(c.decide(&probe(4)).trend, Trend::Down);
        // A 0.2 ms commit baseline is compared as 1 ms, and a commit may take 1.5 ms more
        // than that (more than 1.5× allows): 2 ms is within, 3 ms is not.
        let mut c = pg_commit(0, 0);
        c.set_baseline(None, Some(Duration::from_micros(200)));
        assert_eq!(c.decide(&commit_only(2)).trend, Trend::Up);
        let d = c.decide(&commit_only(3)).clone();
        assert_eq!(d.trend, Trend::Down);
        assert_eq!(
            d.reason,
            "slowed: commit p95 3.0 ms > 1.0 ms baseline + 1.5 ms"
        );
    }

    #[test]
    fn sqlite_yields_to_other_writers_and_keeps_a_share_free() {
        let mut c = Controller::new(Limits::SQLITE, 1.5);
        for _ in 0..20 {
            assert_ne!(c.decide(&Signals::default()).trend, Trend::Down);
        }
        assert_eq!(c.duty(), Limits::SQLITE.max_duty);
        assert_eq!(c.batch_time(), Limits::SQLITE.max_batch_time);
        assert_near(c.pause_after(ms(20)), ms(5));
        assert_eq!(
            c.last().reason,
            "full pace: no batch waited for the write lock"
        );
        let d = c
            .decide(&Signals {
                write_lock_wait: ms(120),
                ..Default::default()
            })
            .clone();
        assert_eq!(d.trend, Trend::Down);
        assert_eq!(d.signal, "write_lock_wait");
        assert_eq!(
            d.reason,
            "slowed: a batch waited 120 ms for the write lock (another writer held it)"
        );
        // A wait within the scheduler's noise is no writer.
        assert_eq!(
            c.decide(&Signals {
                write_lock_wait: ms(1),
                ..Default::default()
            })
            .trend,
            Trend::Up
        );
    }

    #[test]
    fn without_a_baseline_the_probe_is_not_judged() {
        let mut c = Controller::new(five_ms_cap(), 1.5);
        let d = c.decide(&probe(500)).clone();
        assert_eq!(d.trend, Trend::Up);
        assert_eq!(d.signal, "none");
    }

    fn commit(p90: u64, others: u32) -> Signals {
        Signals {
            probe_p90: Some(ms(1)),
            commit_p95: Some(ms(p90)),
            others_active: Some(others),
            ..Default::default()
        }
    }

    /// A look that judged the probe commits only, with other sessions at work.
    fn commit_only(p95: u64) -> Signals {
        Signals {
            commit_p95: Some(ms(p95)),
            others_active: Some(2),
            ..Default::default()
        }
    }

    fn pg_commit(read: u64, commit: u64) -> Controller {
        let mut c = Controller::new(five_ms_cap(), 1.5);
        c.set_baseline(Some(ms(read)), Some(ms(commit)));
        c
    }

    #[test]
    fn one_stalled_commit_slows_both_levers_at_once() {
        let mut c = pg_commit(1, 1);
        for _ in 0..30 {
            c.decide(&commit(1, 3));
        }
        assert_eq!((c.duty(), c.batch_time()), (1.0, ms(5)));
        assert_eq!(c.stall_limit(), Some(ms(20)));
        let slowest = |max: u64| Signals {
            commit_max: Some(ms(max)),
            ..commit(1, 3)
        };
        // One commit of 15 ms among healthy ones is a disk's jitter, not a stall.
        assert!(!c.stalled(ms(15)));
        assert_ne!(c.decide(&slowest(15)).trend, Trend::Down);
        assert!(c.stalled(ms(412)));
        let d = c.decide(&slowest(412)).clone();
        assert_eq!(d.trend, Trend::Down);
        assert_eq!(d.signal, "commit_stall");
        assert_eq!(d.value, Some(412.0));
        assert_eq!(
            d.reason,
            "slowed: a probe commit took 412 ms > 20 ms (the WAL flush stalled: every commit waited)"
        );
        // Both levers at once, whatever the p95 of the commits says.
        assert_eq!(c.duty(), 0.5);
        assert_near(c.batch_time(), Duration::from_micros(2500));
        // Lock waits outrank it: they are the backfill's own doing, and named first.
        let blocked = Signals {
            blocked_sessions: 1,
            ..slowest(412)
        };
        assert_eq!(c.decide(&blocked).signal, "blocked_sessions");
        // The limit is ten times a slower baseline.
        let slow_disk = pg_commit(1, 4);
        assert_eq!(slow_disk.stall_limit(), Some(ms(40)));
        assert!(!slow_disk.stalled(ms(39)));
        // On an idle database the backfill only stalls itself: the full pace stays.
        let mut idle = pg_commit(1, 1);
        let d = idle.decide(&Signals {
            commit_max: Some(ms(412)),
            ..commit(1, 0)
        });
        assert_eq!(d.signal, "others_active");
        assert_eq!(idle.duty(), 1.0);
        // Without probe commits there is no limit.
        assert_eq!(pg(1).stall_limit(), None);
        assert!(!pg(1).stalled(Duration::from_secs(5)));
    }

    #[test]
    fn after_a_moment_of_trouble_the_pace_wins_back_half_the_way_each_look() {
        let mut c = pg_commit(1, 1);
        let stall = Signals {
            commit_max: Some(ms(60)),
            ..commit(1, 3)
        };
        c.decide(&stall);
        assert_eq!(c.duty(), 0.5);
        let mut duties = Vec::new();
        for _ in 0..3 {
            assert_eq!(c.decide(&commit(1, 3)).trend, Trend::Up);
            duties.push(c.duty());
        }
        // Half the way back to 1.0, then a step of a fifth (the second healthy look in a
        // row: more than half the way), to the ceiling.
        assert_eq!(duties, vec![0.75, 0.95, 1.0]);
        // Trouble that comes back cuts again, from lower each time, and what it wins back
        // aims a little lower each time: at the pace it cut from or at 85% of the mark
        // before, whichever is more.
        c.decide(&stall);
        c.decide(&commit(1, 3));
        assert_eq!(c.duty(), 0.75);
        c.decide(&stall);
        assert_eq!(c.duty(), 0.375);
        c.decide(&commit(1, 3));
        assert!((c.duty() - 0.6125).abs() < 1e-9, "{}", c.duty());
        c.decide(&commit(1, 3));
        assert!((c.duty() - 0.8125).abs() < 1e-9, "{}", c.duty());
    }

    #[test]
    fn the_cuts_of_a_stall_win_back_toward_the_pace_before_it() {
        // Recorded on 2026-12-07 (docs/benchmarks.md, late evening): a stalled flush halved
        // the full pace, and the next look, its p95 still carrying the stall's queue, cut
        // again; the way back aimed at 0.5 and took seven looks to return to 0.99. Runs of
        // stalls, each cutting at once, took the pace from 1.0 to 0.06 within a second.
        let mut c = pg_commit(1, 1);
        c.decide(&Signals {
            commit_max: Some(ms(23)),
            ..commit(1, 3)
        });
        assert_eq!(c.duty(), 0.5);
        let d = c
            .decide(&Signals {
                commit_p95: Some(Duration::from_micros(5_300)),
                ..commit(1, 3)
            })
            .clone();
        assert_eq!((d.trend, d.signal), (Trend::Down, "commit_p95"), "{d:?}");
        assert_eq!(c.duty(), 0.25);
        let mut duties = Vec::new();
        for _ in 0..2 {
            assert_eq!(c.decide(&commit(1, 3)).trend, Trend::Up);
            duties.push(c.duty());
        }
        // Half the way back to 1.0 (not to 0.5), then a step of a fifth (the second healthy
        // look in a row), a little more than half the way.
        assert_eq!(duties, vec![0.625, 0.825]);
        // A cut after a healthy look is trouble that came back: the way back aims at 85% of
        // the mark before (0.85), more than the 0.825 it cut from.
        c.decide(&Signals {
            commit_max: Some(ms(23)),
            ..commit(1, 3)
        });
        assert!((c.duty() - 0.4125).abs() < 1e-9, "{}", c.duty());
        c.decide(&commit(1, 3));
        assert!((c.duty() - 0.63125).abs() < 1e-9, "{}", c.duty());
        // A run of four stalls takes the full pace to a sixteenth; the first healthy look
        // wins back half the way to the full pace, not a step towards an eighth.
        let mut run = pg_commit(1, 1);
        for _ in 0..4 {
            run.decide(&Signals {
                commit_max: Some(ms(40)),
                ..commit(1, 3)
            });
        }
        assert_eq!(run.duty(), 0.0625);
        run.decide(&commit(1, 3));
        assert_eq!(run.duty(), 0.53125);
        // Latencies over their limit look after look, no stall among them, are trouble that
        // lasts: the way back aims at where the latest cut came from
        // (`backs_off_at_once_and_by_half_when_the_probe_suffers`).
    }

    #[test]
    fn trouble_that_comes_and_goes_leaves_the_way_back_aimed_near_the_pace_before_it() {
        // Recorded on 2026-12-08 (docs/benchmarks.md, early morning, the disk stalling every
        // few seconds, next to a light workload): a full pace, then stalled flushes and slow
        // commit p95s, each after a healthy look or two, then a quiet disk. The way back's
        // mark was set where each cut came from (1.0, 0.63, 0.35, 0.38, 0.19), and the pace
        // climbed a tenth a look from 0.09; the workload's p99 was the same as while paused.
        let stall = |ms_: u64| Signals {
            commit_max: Some(ms(ms_)),
            ..commit(1, 3)
        };
        let slow = |us: u64| Signals {
            commit_p95: Some(Duration::from_micros(us)),
            ..commit(1, 3)
        };
        let healthy = commit(1, 3);
        let mut c = pg_commit(1, 1);
        let episode = [
            stall(48),
            stall(31),
            healthy.clone(),
            slow(4_100),
            healthy.clone(),
            stall(108),
            healthy.clone(),
            slow(6_700),
            healthy.clone(),
            healthy.clone(),
            stall(23),
            stall(40),
        ];
        let mut marks = Vec::new();
        for s in &episode {
            if c.decide(s).trend == Trend::Down {
                marks.push(c.cut_from);
            }
        }
        // The first run of stalls keeps the full pace as its mark; each cut after a healthy
        // look lowers it by 15%, or to where the pace was, if that was higher (0.634 after
        // two healthy looks); the stall right after it keeps it.
        let want = [1.0, 1.0, 0.85, 0.7225, 0.614_125, 0.633_703, 0.633_703];
        assert_eq!(marks.len(), want.len(), "{marks:?}");
        for (got, want) in marks.iter().zip(want) {
            assert!((got - want).abs() < 1e-6, "{marks:?}");
        }
        let low = c.duty();
        assert!(low < 0.2, "{low}");
        // The disk quiet again: four looks to the full pace (eight or more, a tenth a look).
        let mut way_back = Vec::new();
        while c.duty() < 1.0 {
            assert_eq!(c.decide(&healthy).trend, Trend::Up);
            way_back.push(c.duty());
            assert!(way_back.len() <= 4, "{way_back:?}");
        }
        assert!(way_back.windows(2).all(|w| w[1] > w[0]), "{way_back:?}");
        // Stalls every other look, the disk's own (bench/backfill.sh's DISTURB): a stalling
        // disk's queue is longer for the backfill's writes, and the pace settles low, between
        // a tenth and a fifth of the time, never at the floor.
        let mut periodic = pg_commit(1, 1);
        for _ in 0..20 {
            periodic.decide(&stall(40));
            assert!(periodic.duty() > Limits::POSTGRES.min_duty);
            periodic.decide(&healthy);
        }
        assert!((periodic.duty() - 0.2).abs() < 1e-3, "{}", periodic.duty());
        assert!(
            (periodic.cut_from - 0.2).abs() < 1e-3,
            "{}",
            periodic.cut_from
        );
        // A workload that bears less than the mark for good: commits just over their limit
        // whenever the backfill has more than 40% of the time. The mark comes down to it
        // within a few cuts, and then the pace stays near it, cut now and then.
        let mut paces = Vec::new();
        let mut cuts = 0;
        for _ in 0..60 {
            let look = if c.duty() > 0.4 {
                slow(3_000)
            } else {
                healthy.clone()
            };
            if c.decide(&look).trend == Trend::Down {
                cuts += 1;
            }
            paces.push(c.duty());
        }
        let last: &[f64] = &paces[30..];
        let mean = last.iter().sum::<f64>() / last.len() as f64;
        let over = last.iter().filter(|&&d| d > 0.4).count();
        assert!(c.cut_from < 0.6, "{:?} {paces:?}", c.cut_from);
        assert!(mean > 0.3 && over <= 15, "{mean} {over} {cuts} {paces:?}");
    }

    #[test]
    fn a_latency_just_over_its_limit_takes_a_small_step_down() {
        // A light workload: a 1 ms commit baseline may grow by the 1.5 ms slack, to 2.5 ms.
        let after = |p95_us: u64| {
            let mut c = pg_commit(1, 1);
            let d = c
                .decide(&Signals {
                    commit_p95: Some(Duration::from_micros(p95_us)),
                    ..commit(1, 3)
                })
                .clone();
            assert_eq!((d.trend, d.signal), (Trend::Down, "commit_p95"), "{d:?}");
            c.duty()
        };
        // (2.5 ÷ 2.7)² of the time: a queue that has barely begun.
        assert!((after(2_700) - 0.857).abs() < 0.001, "{}", after(2_700));
        assert!((after(3_200) - 0.610).abs() < 0.001, "{}", after(3_200));
        // A step of at least a tenth, whatever the latency …
        assert!((after(2_510) - 0.9).abs() < 1e-9);
        // … and at most a half, from 1.41 times the limit on.
        assert_eq!(after(3_600), 0.5);
        assert_eq!(after(40_000), 0.5);
        // Lock waits halve it, however close the probes are.
        let mut c = pg_commit(1, 1);
        c.decide(&Signals {
            blocking_sessions: 1,
            ..commit(1, 3)
        });
        assert_eq!(c.duty(), 0.5);
        // So does a busy workload's latency, however close to its limit (1.30 × 1.1 ms
        // next to connections 30% busy): its queue amplifies it, and it wins the time back
        // a tenth a look.
        let mut busy = pg_commit(1, 1);
        busy.set_baseline(Some(ms(1)), Some(Duration::from_micros(1_100)));
        busy.set_in_flight_baseline(Some(1.2), Some(4));
        let d = busy
            .decide(&Signals {
                commit_p95: Some(Duration::from_micros(1_600)),
                in_flight: Some(1.2),
                ..commit(1, 3)
            })
            .clone();
        assert_eq!((d.trend, d.signal), (Trend::Down, "commit_p95"), "{d:?}");
        assert_eq!(busy.duty(), 0.5);
        busy.decide(&Signals {
            in_flight: Some(1.2),
            ..commit(1, 3)
        });
        assert!((busy.duty() - 0.6).abs() < 1e-9, "{}", busy.duty());
    }

    #[test]
    fn the_commit_probe_outranks_a_healthy_read() {
        let mut c = pg_commit(1, 4);
        assert_eq!(
            c.last().reason,
            "starting: baseline probe p90 1.0 ms, commit p95 4.0 ms"
        );
        let d = c.decide(&commit(5, 4)).clone();
        assert_eq!(d.trend, Trend::Up, "{d:?}");
        assert_eq!(d.signal, "commit_p95");
        assert_eq!(
            d.reason,
            "sped up: commit p95 5.0 ms ≤ 1.5 × 4.0 ms baseline"
        );
        let d = c.decide(&commit(9, 4)).clone();
        assert_eq!(d.trend, Trend::Down);
        assert_eq!(d.signal, "commit_p95");
        assert_eq!(d.value, Some(9.0));
        assert_eq!(
            d.reason,
            "slowed: commit p95 9.0 ms > 1.5 × 4.0 ms baseline"
        );
        // A slow read slows it too, with the commit within budget.
        let d = c
            .decide(&Signals {
                probe_p90: Some(ms(5)),
                ..commit(2, 4)
            })
            .clone();
        assert_eq!(d.trend, Trend::Down);
        assert_eq!(d.signal, "probe_p90");
    }

    #[test]
    fn an_idle_database_gets_the_full_pace_at_once_whatever_the_probes_say() {
        let mut c = pg_commit(1, 1);
        // The probes see only the backfill itself: 20 ms commits, and no one else at work.
        let d = c.decide(&commit(20, 0)).clone();
        assert_eq!(d.trend, Trend::Up);
        assert_eq!(d.signal, "others_active");
        assert_eq!(d.reason, "sped up: idle: no other session at work");
        assert_eq!(c.duty(), Limits::POSTGRES.max_duty);
        assert_eq!(c.batch_time(), Limits::POSTGRES.max_batch_time);
        assert_eq!(c.decide(&commit(20, 0)).trend, Trend::Steady);
        // A look without an activity reading keeps judging the probes.
        let d = c
            .decide(&Signals {
                others_active: None,
                ..commit(20, 0)
            })
            .clone();
        assert_eq!(d.trend, Trend::Down, "{d:?}");
    }

    #[test]
    fn a_workload_that_appears_on_an_idle_database_gets_the_starting_pace_back() {
        let mut c = pg_commit(1, 1);
        c.decide(&commit(20, 0));
        let d = c.decide(&commit(1, 2)).clone();
        assert_eq!(d.trend, Trend::Down);
        assert_eq!(d.signal, "others_active");
        assert_eq!(d.value, Some(2.0));
        assert_eq!(
            d.reason,
            "slowed: 2 sessions at work, the idle database is not: back to the starting pace"
        );
        assert_eq!(c.duty(), Limits::POSTGRES.start_duty);
        assert_eq!(c.batch_time(), Limits::POSTGRES.start_batch_time);
        // From there the probes judge: healthy, so it grows again.
        assert_eq!(c.decide(&commit(1, 2)).trend, Trend::Up);
    }

    #[test]
    fn a_busy_workload_gets_no_commit_slack() {
        // A light workload (its 4 connections in a transaction 2.5% of the time): 1 ms + 1.5 ms.
        let mut c = pg_commit(0, 1);
        c.set_in_flight_baseline(Some(0.1), Some(4));
        assert_eq!(c.decide(&commit_only(2)).trend, Trend::Up);
        // A busy one, though under one transaction in flight: 0.9 of 4 connections (22%), as
        // a third of a second's baseline read a workload at half the machine's capacity.
        let mut c = pg_commit(0, 1);
        c.set_in_flight_baseline(Some(0.9), Some(4));
        let d = c.decide(&commit_only(2)).clone();
        assert_eq!(d.trend, Trend::Down);
        assert_eq!(
            d.reason,
            "slowed: commit p95 2.0 ms > 1.35 × 1.0 ms baseline (1.5× with its connections 22% busy)"
        );
        // Many connections mostly idle (a pool): not busy, though more than one is at work.
        let mut c = pg_commit(0, 1);
        c.set_in_flight_baseline(Some(1.5), Some(50));
        assert_eq!(c.decide(&commit_only(2)).trend, Trend::Up);
        // Without a count of the connections, one transaction in flight is busy.
        let mut c = pg_commit(0, 1);
        c.set_in_flight_baseline(Some(1.3), None);
        assert_eq!(c.decide(&commit_only(2)).trend, Trend::Down);
        let mut c = pg_commit(0, 1);
        c.set_in_flight_baseline(Some(0.9), None);
        assert_eq!(c.decide(&commit_only(2)).trend, Trend::Up);
    }

    #[test]
    fn the_busier_the_workload_the_less_its_server_latency_may_grow() {
        // Its connections half busy: a request's wait for one grows faster than the server's
        // latency, so 1.5× for the workload is 1.2× for the server: 1.2 ms on a 1 ms baseline.
        // 2 transactions in flight before, on `connections`; a look at the probes (µs).
        let controller = |connections: u32| {
            let mut c = pg_commit(1, 1);
            c.set_in_flight_baseline(Some(2.0), Some(connections));
            c
        };
        let look = |commit_us: u64, read_us: u64| Signals {
            commit_p95: Some(Duration::from_micros(commit_us)),
            probe_p90: Some(Duration::from_micros(read_us)),
            in_flight: Some(2.0),
            ..commit(1, 4)
        };
        let mut c = controller(4);
        assert_eq!(c.decide(&look(1_150, 1_000)).trend, Trend::Up);
        let d = c.decide(&look(1_300, 1_000)).clone();
        assert_eq!(d.trend, Trend::Down);
        assert_eq!(d.signal, "commit_p95");
        assert_eq!(
            d.reason,
            "slowed: commit p95 1.3 ms > 1.20 × 1.0 ms baseline (1.5× with its connections 50% busy)"
        );
        // The probe read too: 1.2 × its 2 ms floor.
        let mut c = controller(4);
        assert_eq!(c.decide(&look(1_000, 2_300)).trend, Trend::Up);
        assert_eq!(c.decide(&look(1_000, 2_500)).signal, "probe_p90");
        assert_eq!(c.last().trend, Trend::Down);
        // Its connections mostly idle (a pool of 100, 2 in flight): the budget itself.
        let mut c = controller(100);
        let d = c.decide(&look(1_000, 3_100)).clone();
        assert_eq!(
            d.reason,
            "slowed: probe p90 3.1 ms > 1.49 × 2.0 ms baseline (1.5× with its connections 2% busy)"
        );
    }

    #[test]
    fn transactions_queueing_in_flight_slow_both_levers() {
        // A CPU-bound workload: its probes look fine, but its transactions pile up.
        let mut c = pg_commit(1, 1);
        c.set_in_flight_baseline(Some(2.0), Some(4));
        assert_eq!(
            c.last().reason,
            "starting: baseline probe p90 1.0 ms, commit p95 1.0 ms, 2.0 in flight on 4 connections"
        );
        let busy = |n: f64| Signals {
            in_flight: Some(n),
            ..commit(1, 4)
        };
        // Half busy before: 1.5 ÷ (1 + 0.5 × 0.5) = 1.2 × 2.0 = 2.4 in flight at most.
        assert_eq!(c.decide(&busy(2.3)).trend, Trend::Up);
        let d = c.decide(&busy(2.5)).clone();
        assert_eq!(d.trend, Trend::Down);
        assert_eq!(d.signal, "in_flight");
        assert_eq!(d.value, Some(2.5));
        assert_eq!(
            d.reason,
            "slowed: 2.5 transactions in flight > 2.4 (2.0 of 4 connections before; 1.5× their latency)"
        );
        // Both levers at once: it wants the CPU back, not only shorter batches.
        assert_eq!(c.duty(), 0.5);
        assert_eq!(c.batch_time(), Limits::POSTGRES.min_batch_time);
        // A light workload's fraction of a transaction in flight counts as one; its idle
        // connections leave it almost the whole budget (1.5 ÷ 1.025 = 1.46).
        let mut c = pg_commit(1, 1);
        c.set_in_flight_baseline(Some(0.2), Some(4));
        assert_eq!(c.decide(&busy(1.4)).trend, Trend::Up);
        assert_eq!(c.decide(&busy(1.5)).trend, Trend::Down);
        // Not counted: the budget itself.
        let mut c = pg_commit(1, 1);
        c.set_in_flight_baseline(Some(2.0), None);
        assert_eq!(c.decide(&busy(2.9)).trend, Trend::Up);
        let d = c.decide(&busy(3.1)).clone();
        assert_eq!(
            d.reason,
            "slowed: 3.1 transactions in flight > 3.0 (2.0 before; 1.5× their latency)"
        );
    }

    #[test]
    fn lock_waits_outrank_an_idle_reading() {
        let mut c = pg_commit(1, 1);
        let d = c
            .decide(&Signals {
                blocked_sessions: 1,
                ..commit(1, 0)
            })
            .clone();
        assert_eq!(d.signal, "blocked_sessions");
        assert_eq!(d.trend, Trend::Down);
    }

    #[test]
    fn p90_of_a_window() {
        let mut v: Vec<Duration> = (1..=10).map(ms).collect();
        assert_eq!(p90(&mut v, 5), Some(ms(9)));
        let mut few = vec![ms(3), ms(1)];
        assert_eq!(p90(&mut few, 5), None);
        assert_eq!(p90(&mut few, 1), Some(ms(3)));
        assert_eq!(p90(&mut [], 0), None);
    }

    #[test]
    fn a_look_at_the_workload_alone_is_the_new_baseline_never_above_the_first() {
        // Recorded next to a heavy workload (docs/benchmarks.md, 2026-12-07): a baseline
        // taken while the disk stalled, 2.0 ms commits and 1.63 transactions in flight on 4
        // connections (41% busy: limits of 1.25×) …
        let us = Duration::from_micros;
        let mut c = Controller::new(five_ms_cap(), 1.5);
        c.set_baseline(Some(ms(1)), Some(us(2_000)));
        c.set_in_flight_baseline(Some(1.63), Some(4));
        assert!(c.looks_alone());
        let running = Signals {
            commit_p95: Some(us(2_200)),
            in_flight: Some(1.87),
            ..commit(1, 4)
        };
        // … held a full-pace backfill's 2.2 ms commits and 1.87 in flight within them.
        let d = c.decide(&running).clone();
        assert_eq!(d.trend, Trend::Up, "{d:?}");
        // A look at the workload alone that finds it higher than the first changes nothing …
        assert_eq!(c.rebaseline(Some(ms(2)), Some(us(2_500)), Some(2.0)), None);
        assert_eq!(c.commit_baseline(), Some(us(2_000)));
        assert_eq!(c.decide(&running).trend, Trend::Up);
        // … one that finds it lower replaces it, and the same signals are now too much.
        assert_eq!(
            c.rebaseline(Some(ms(1)), Some(us(1_100)), Some(0.9)).as_deref(),
            Some("new baseline, the workload alone: commit p95 2.0 ms → 1.1 ms, in flight 1.63 → 0.90")
        );
        assert_eq!(c.commit_baseline(), Some(us(1_100)));
        let duty = c.duty();
        let d = c.decide(&running).clone();
        assert_eq!((d.trend, d.signal), (Trend::Down, "in_flight"), "{d:?}");
        assert_eq!(
            d.reason,
            "slowed: 1.9 transactions in flight > 1.2 (0.9 of 4 connections before; 1.5× their latency)"
        );
        // Still busy, as the first baseline found it: halved; and its commits get no slack.
        assert!((c.duty() - duty / 2.0).abs() < 1e-9, "{} {duty}", c.duty());
        assert!(c.looks_alone());
        let d = c
            .decide(&Signals {
                commit_p95: Some(us(1_500)),
                in_flight: Some(1.2),
                ..commit(1, 4)
            })
            .clone();
        assert_eq!((d.trend, d.signal), (Trend::Down, "commit_p95"), "{d:?}");
        assert_eq!(
            d.reason,
            "slowed: commit p95 1.5 ms > 1.25 × 1.1 ms baseline (1.5× with its connections 41% busy)"
        );
        // A light workload does not look alone: its limits carry the slack.
        // The workload moves by itself: the latest look counts, up to the first baseline.
        assert_eq!(
            c.rebaseline(Some(ms(1)), Some(us(1_600)), Some(1.3)).as_deref(),
            Some("new baseline, the workload alone: commit p95 1.1 ms → 1.6 ms, in flight 0.90 → 1.30")
        );
        c.rebaseline(Some(ms(3)), Some(ms(3)), Some(2.5));
        assert_eq!(c.commit_baseline(), Some(us(2_000)));
        assert_eq!(c.baseline(), Some(ms(1)));
        assert_eq!(c.decide(&running).trend, Trend::Up);
        let mut light = Controller::new(five_ms_cap(), 1.5);
        light.set_baseline(Some(ms(1)), Some(ms(1)));
        light.set_in_flight_baseline(Some(0.08), Some(4));
        assert!(!light.looks_alone());
    }
}
