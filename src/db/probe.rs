//! What a backfill under `throttle: auto` sees of the workload while it runs, from a second
//! session a few dozen times a second: the latency of a cheap read on the backfilled table, the
//! latency of a tiny committed write (what every application commit waits for: the flush of
//! the WAL written before it, the backfill's included), whether any other session is at work,
//! and the lock waits between the step connection and other sessions. The probe runs in a
//! task of its own (`postgres::probe`); the engine takes what it gathered at each look.

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How many probes make the baseline (the engine waits for them before the first batch), as
/// many commits as a look judges, 10 ms apart: over a third of a second (40 probes 5 ms apart)
/// the same workload at half the machine's capacity read 0.7, 0.9 and 1.6 transactions in
/// flight (docs/benchmarks.md). On a database where nobody else is at work half of them do:
/// the backfill runs flat out there whatever the probes say, and a longer wait only delays it.
pub const BASELINE_SAMPLES: usize = 50;
/// The probe commits a steady pace is judged on, at most (about two seconds of them).
pub const COMMITS_KEPT: usize = 100;
/// How many probes make the baseline next to a busy workload (`pace::BUSY_SHARE`): as many
/// commits as a steady pace is judged on. Its tail is noisier, and a moment of trouble in a
/// baseline of 50 makes it blind: one measured at 2.6 ms (the third slowest of 50) where the
/// workload's commits ran at 1.4–1.8 ms judged a backfill that took the workload's p99 to
/// 2.4× unaffected (docs/benchmarks.md). A backfill next to a busy workload runs for minutes;
/// a second more of baseline costs it little.
pub const BUSY_BASELINE_SAMPLES: usize = COMMITS_KEPT;

/// What the probe gathered since the last look.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProbeWindow {
    /// Each probe query's latency, in the order run.
    pub latencies: Vec<Duration>,
    /// Each probe commit's latency (a one-row write in phased's own state, committed).
    pub commit_latencies: Vec<Duration>,
    /// The slowest probe commit since the last look: one that takes many times its baseline
    /// is a stalled WAL flush, which every application commit of the moment waited for too.
    pub slowest_commit: Duration,
    /// How many times other sessions' activity was read …
    pub activity_reads: u32,
    /// … and the most sessions (not phased's) seen at work or busy within the last second.
    pub others_active: u32,
    /// Other sessions in a statement or a transaction at each probe: the workload's
    /// transactions in flight, which at a steady rate grow with their latency (Little's law),
    /// queueing included.
    pub in_flight: Vec<u32>,
    /// The most other client sessions seen connected, at work or not: the workload's
    /// connections, which its transactions in flight are a share of.
    pub connections: u32,
    /// The most sessions seen waiting on locks the step connection held.
    pub blocked_sessions: u32,
    /// The most sessions seen holding locks the step connection waited on.
    pub blocking_sessions: u32,
}

impl ProbeWindow {
    /// The mean of the in-flight counts (None without any).
    pub fn mean_in_flight(&self) -> Option<f64> {
        (!self.in_flight.is_empty()).then(|| {
            self.in_flight.iter().map(|&n| f64::from(n)).sum::<f64>() / self.in_flight.len() as f64
        })
    }

    /// Adds a later window to this one.
    pub fn absorb(&mut self, later: ProbeWindow) {
        self.latencies.extend(later.latencies);
        self.commit_latencies.extend(later.commit_latencies);
        self.slowest_commit = self.slowest_commit.max(later.slowest_commit);
        self.in_flight.extend(later.in_flight);
        self.connections = self.connections.max(later.connections);
        self.activity_reads += later.activity_reads;
        self.others_active = self.others_active.max(later.others_active);
        self.blocked_sessions = self.blocked_sessions.max(later.blocked_sessions);
        self.blocking_sessions = self.blocking_sessions.max(later.blocking_sessions);
    }

    /// After a look: everything starts again, but the commits and the in-flight counts only
    /// when the pace moved (they were about the pace before); otherwise the latest
    /// `COMMITS_KEPT` of each stay, so a steady pace is judged on more than one look's worth.
    pub fn settle(&mut self, moved: bool) {
        fn keep<T>(samples: &mut Vec<T>, moved: bool) {
            if moved {
                samples.clear();
            } else {
                let from = samples.len().saturating_sub(COMMITS_KEPT);
                samples.drain(..from);
            }
        }
        keep(&mut self.commit_latencies, moved);
        keep(&mut self.in_flight, moved);
        self.latencies.clear();
        self.slowest_commit = Duration::ZERO;
        self.activity_reads = 0;
        self.others_active = 0;
        self.connections = 0;
        self.blocked_sessions = 0;
        self.blocking_sessions = 0;
    }

    /// Lock waits seen: a look is due at once.
    pub fn saw_lock_waits(&self) -> bool {
        self.blocked_sessions > 0 || self.blocking_sessions > 0
    }

    /// Other sessions' activity was read, and nobody was at work.
    pub fn quiet(&self) -> bool {
        self.activity_reads > 0 && self.others_active == 0
    }
}

/// A running probe; dropping it stops it.
pub struct Probe {
    window: Arc<Mutex<ProbeWindow>>,
    task: tokio::task::JoinHandle<()>,
}

impl Probe {
    pub fn new(window: Arc<Mutex<ProbeWindow>>, task: tokio::task::JoinHandle<()>) -> Self {
        Self { window, task }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProbeWindow> {
        self.window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Probe queries timed since the last `take`.
    pub fn samples(&self) -> usize {
        self.lock().latencies.len()
    }

    pub fn saw_lock_waits(&self) -> bool {
        self.lock().saw_lock_waits()
    }

    /// The slowest probe commit since the last `take`.
    pub fn slowest_commit(&self) -> Duration {
        self.lock().slowest_commit
    }

    /// Since the last `take`, other sessions' activity was read and nobody was at work.
    pub fn quiet(&self) -> bool {
        self.lock().quiet()
    }

    /// Since the last `take`: the workload's mean transactions in flight and the most
    /// connections it was seen on (0: not counted).
    pub fn in_flight(&self) -> (Option<f64>, u32) {
        let w = self.lock();
        (w.mean_in_flight(), w.connections)
    }

    /// What was gathered since the last take; the window starts again empty.
    pub fn take(&self) -> ProbeWindow {
        std::mem::take(&mut *self.lock())
    }

    /// The probe stopped (its session failed): the backfill carries on with the signals it
    /// still has.
    pub fn stopped(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(commits: usize, in_flight: usize) -> ProbeWindow {
        ProbeWindow {
            latencies: vec![Duration::from_millis(1); 5],
            commit_latencies: vec![Duration::from_millis(1); commits],
            in_flight: vec![2; in_flight],
            connections: 4,
            activity_reads: 1,
            others_active: 3,
            ..Default::default()
        }
    }

    #[test]
    fn a_steady_pace_keeps_its_latest_commits_and_in_flight_counts() {
        let mut w = window(30, 30);
        w.absorb(window(90, 90));
        w.settle(false);
        assert_eq!(w.commit_latencies.len(), COMMITS_KEPT);
        assert_eq!(w.in_flight.len(), COMMITS_KEPT);
        assert!(w.latencies.is_empty());
        assert_eq!(
            (w.activity_reads, w.others_active, w.connections),
            (0, 0, 0)
        );
    }

    #[test]
    fn quiet_only_when_read_and_nobody_at_work() {
        assert!(!ProbeWindow::default().quiet(), "not read yet");
        let mut w = ProbeWindow {
            activity_reads: 2,
            ..Default::default()
        };
        assert!(w.quiet());
        w.absorb(window(1, 1));
        assert!(!w.quiet(), "someone was at work in a later read");
    }

    #[test]
    fn the_slowest_commit_is_the_windows_and_starts_again_at_each_look() {
        let mut w = window(3, 0);
        w.slowest_commit = Duration::from_millis(2);
        let mut later = window(1, 0);
        later.slowest_commit = Duration::from_millis(412);
        w.absorb(later);
        assert_eq!(w.slowest_commit, Duration::from_millis(412));
        w.absorb(ProbeWindow::default());
        assert_eq!(w.slowest_commit, Duration::from_millis(412));
        // Whether the pace moved or not, a stall is judged once.
        w.settle(false);
        assert_eq!(w.slowest_commit, Duration::ZERO);
        assert_eq!(w.commit_latencies.len(), 4);
    }

    #[test]
    fn a_moved_pace_starts_again() {
        let mut w = window(30, 30);
        w.settle(true);
        assert!(w.commit_latencies.is_empty());
        assert!(w.in_flight.is_empty());
        assert_eq!(w.mean_in_flight(), None);
    }
}
