//! Statements that build or drop an index `CONCURRENTLY`, and what they report while they run.
//!
//! Such a statement holds only SHARE UPDATE EXCLUSIVE on its table, which no read or write
//! conflicts with, but it waits for every transaction older than its snapshots — in any table
//! of the database — before it can finish. Those waits block no application query, so they are
//! not bounded by `lock_timeout` but by `index_wait_timeout`; the wait for the table lock itself
//! still is (see `db/postgres/index_build.rs`, which watches the statement from a second
//! session). This module is pure: which statements wait that way, and the progress they report.

use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A statement that waits for older transactions the way `CREATE INDEX CONCURRENTLY` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConcurrentStatement {
    /// `CREATE [UNIQUE] INDEX CONCURRENTLY`: a failure leaves an INVALID index behind.
    CreateIndex,
    /// `DROP INDEX CONCURRENTLY`.
    DropIndex,
    /// `REINDEX … CONCURRENTLY`.
    Reindex,
    /// `ALTER TABLE … DETACH PARTITION … CONCURRENTLY`.
    DetachPartition,
}

impl ConcurrentStatement {
    /// Which kind `sql` (one statement) is, if any; comments and case are ignored.
    pub fn of(sql: &str) -> Option<Self> {
        let words = leading_words(sql, 12);
        let w = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
        match w(0) {
            "CREATE" => {
                let at = if w(1) == "UNIQUE" { 2 } else { 1 };
                (w(at) == "INDEX" && w(at + 1) == "CONCURRENTLY").then_some(Self::CreateIndex)
            }
            "DROP" => (w(1) == "INDEX" && w(2) == "CONCURRENTLY").then_some(Self::DropIndex),
            "REINDEX" => words
                .iter()
                .any(|x| x == "CONCURRENTLY")
                .then_some(Self::Reindex),
            "ALTER" => {
                let upper = strip_comments(sql).to_ascii_uppercase();
                let tokens: Vec<&str> = upper
                    .split(|c: char| c.is_whitespace() || c == ';')
                    .filter(|t| !t.is_empty())
                    .collect();
                (w(1) == "TABLE"
                    && tokens.windows(2).any(|p| p == ["DETACH", "PARTITION"])
                    && tokens.last() == Some(&"CONCURRENTLY"))
                .then_some(Self::DetachPartition)
            }
            _ => None,
        }
    }

    /// How the statement is named in progress and errors.
    pub fn command(self) -> &'static str {
        match self {
            Self::CreateIndex => "CREATE INDEX CONCURRENTLY",
            Self::DropIndex => "DROP INDEX CONCURRENTLY",
            Self::Reindex => "REINDEX CONCURRENTLY",
            Self::DetachPartition => "DETACH PARTITION CONCURRENTLY",
        }
    }
}

/// The SQL without `--` and `/* */` comments (quotes are not special: only the first words of a
/// statement are read from it).
fn strip_comments(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.find('\n').map(|i| &after[i..]).unwrap_or("");
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.find("*/").map(|i| &after[i + 2..]).unwrap_or("");
            out.push(' ');
        } else {
            let mut chars = rest.chars();
            if let Some(c) = chars.next() {
                out.push(c);
            }
            rest = chars.as_str();
        }
    }
    out
}

/// The first `n` words of a statement, upper-cased, comments and a parenthesised option list
/// (`REINDEX (VERBOSE) …`) skipped.
fn leading_words(sql: &str, n: usize) -> Vec<String> {
    strip_comments(sql)
        .replace(['(', ')', ';', ','], " ")
        .split_whitespace()
        .take(n)
        .map(str::to_ascii_uppercase)
        .collect()
}

/// A session a concurrent statement is waiting for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaitingFor {
    pub pid: i32,
    #[serde(default)]
    pub application_name: String,
    /// `idle in transaction`, `active`, …
    #[serde(default)]
    pub state: String,
    /// Seconds since its transaction started.
    pub seconds: f64,
    /// The start of its current (or last) query.
    #[serde(default)]
    pub query: String,
}

impl fmt::Display for WaitingFor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let app = if self.application_name.is_empty() {
            "no application_name"
        } else {
            &self.application_name
        };
        write!(
            f,
            "pid {} ({app}), {}, transaction open for {}",
            self.pid,
            if self.state.is_empty() {
                "unknown state"
            } else {
                &self.state
            },
            human_duration(Duration::from_secs_f64(self.seconds.max(0.0)))
        )?;
        if !self.query.is_empty() {
            write!(f, ": {}", self.query)?;
        }
        Ok(())
    }
}

/// Where a concurrent statement stands: PostgreSQL's phase (`pg_stat_progress_create_index`),
/// how far it got in it, and whom it waits for. Sent as events while it runs and kept in the
/// step's state for `phased status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexProgress {
    /// `CREATE INDEX CONCURRENTLY`, `DROP INDEX CONCURRENTLY`, …
    pub command: String,
    /// The index, as PostgreSQL names it, once known.
    #[serde(default)]
    pub index: Option<String>,
    /// PostgreSQL's phase (`building index: scanning table`, `waiting for old snapshots`, …), or
    /// what phased sees in `pg_locks` when PostgreSQL reports none (`waiting for a lock on …`,
    /// `waiting for older transactions`).
    pub phase: String,
    /// Work done in this phase, of `total`, counted in `unit` (`blocks`, `tuples`,
    /// `transactions`); absent when PostgreSQL does not count the phase.
    #[serde(default)]
    pub done: Option<u64>,
    #[serde(default)]
    pub total: Option<u64>,
    #[serde(default)]
    pub unit: Option<String>,
    /// Estimated time left in this phase, from its rate so far.
    #[serde(default)]
    pub eta_ms: Option<u64>,
    /// The sessions it waits for right now.
    #[serde(default)]
    pub waiting_for: Vec<WaitingFor>,
    /// How long it has waited for other transactions so far, in total.
    #[serde(default)]
    pub waited_ms: u64,
    /// `index_wait_timeout`: the most it waits for them (None: no limit).
    #[serde(default)]
    pub wait_limit_ms: Option<u64>,
    /// Since the statement started.
    #[serde(default)]
    pub elapsed_ms: u64,
}

impl IndexProgress {
    /// One line: `building index: scanning table — 2702/5406 blocks (49%), eta 12s`.
    pub fn summary(&self) -> String {
        let mut text = self.phase.clone();
        if let (Some(done), Some(total), Some(unit)) = (self.done, self.total, &self.unit) {
            text.push_str(&format!(" — {done}/{total} {unit}"));
            if let Some(percent) = (done.min(total) * 100).checked_div(total) {
                text.push_str(&format!(" ({percent}%)"));
            }
        }
        if let Some(eta) = self.eta_ms {
            text.push_str(&format!(
                ", eta {}",
                human_duration(Duration::from_millis(eta))
            ));
        }
        if !self.waiting_for.is_empty() || self.waited_ms > 0 {
            let limit = match self.wait_limit_ms {
                Some(ms) => format!(
                    " of {} (index_wait_timeout)",
                    human_duration(Duration::from_millis(ms))
                ),
                None => " (no index_wait_timeout)".to_string(),
            };
            text.push_str(&format!(
                "; waited {}{limit} for other transactions",
                human_duration(Duration::from_millis(self.waited_ms))
            ));
        }
        text
    }

    /// Is it waiting for other sessions to finish (not working, not queued for the table)?
    pub fn is_waiting(&self) -> bool {
        !self.waiting_for.is_empty()
    }
}

/// `950ms`, `12.3s`, `4m05s`, `2h03m`.
pub fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    let secs = d.as_secs();
    if ms < 1000 {
        format!("{ms}ms")
    } else if secs < 60 {
        format!("{:.1}s", d.as_secs_f64())
    } else if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60)
    }
}

/// The time left in a phase, from its rate since the phase (or its unit) was first seen.
#[derive(Debug, Default)]
pub struct Eta {
    start: Option<(String, String, Instant, u64)>,
}

impl Eta {
    /// Observes `done` of `total` in `phase`/`unit` at `now`; the estimate once there is a rate
    /// (at least a second of progress).
    pub fn observe(
        &mut self,
        phase: &str,
        unit: &str,
        done: u64,
        total: u64,
        now: Instant,
    ) -> Option<Duration> {
        let same = self
            .start
            .as_ref()
            .is_some_and(|(p, u, _, first)| p == phase && u == unit && *first <= done);
        if !same {
            self.start = Some((phase.to_string(), unit.to_string(), now, done));
            return None;
        }
        let (_, _, since, first) = self.start.as_ref()?;
        let elapsed = now.checked_duration_since(*since)?;
        let progressed = done.saturating_sub(*first);
        if elapsed < Duration::from_secs(1) || progressed == 0 {
            return None;
        }
        let rate = progressed as f64 / elapsed.as_secs_f64();
        let left = total.saturating_sub(done) as f64 / rate;
        left.is_finite().then(|| Duration::from_secs_f64(left))
    }

    pub fn reset(&mut self) {
        self.start = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_statements_that_wait_for_older_transactions() {
        use ConcurrentStatement as C;
        let cases = [
            ("CREATE INDEX CONCURRENTLY i ON t (c)", Some(C::CreateIndex)),
            (
                "create unique index concurrently if not exists i on t (c);",
                Some(C::CreateIndex),
            ),
            (
                "-- a comment\n/* another */ CREATE INDEX\n  CONCURRENTLY i ON t (c)",
                Some(C::CreateIndex),
            ),
            (
                "DROP INDEX CONCURRENTLY IF EXISTS \"i\"",
                Some(C::DropIndex),
            ),
            ("REINDEX (VERBOSE) INDEX CONCURRENTLY i", Some(C::Reindex)),
            ("REINDEX TABLE CONCURRENTLY t", Some(C::Reindex)),
            (
                "ALTER TABLE p DETACH PARTITION p1 CONCURRENTLY",
                Some(C::DetachPartition),
            ),
            ("ALTER TABLE p DETACH PARTITION p1", None),
            ("CREATE INDEX i ON t (c)", None),
            ("DROP INDEX i", None),
            ("SELECT 'CREATE INDEX CONCURRENTLY'", None),
            ("REINDEX INDEX i", None),
        ];
        for (sql, expected) in cases {
            assert_eq!(ConcurrentStatement::of(sql), expected, "{sql}");
        }
    }

    #[test]
    fn summary_says_the_phase_the_count_the_eta_and_the_wait() {
        let mut p = IndexProgress {
            command: "CREATE INDEX CONCURRENTLY".into(),
            index: Some("big_v_idx".into()),
            phase: "building index: scanning table".into(),
            done: Some(2702),
            total: Some(5406),
            unit: Some("blocks".into()),
            eta_ms: Some(12_000),
            waiting_for: Vec::new(),
            waited_ms: 0,
            wait_limit_ms: Some(3_600_000),
            elapsed_ms: 5_000,
        };
        assert_eq!(
            p.summary(),
            "building index: scanning table — 2702/5406 blocks (49%), eta 12.0s"
        );
        p.phase = "waiting for old snapshots".into();
        p.done = Some(0);
        p.total = Some(1);
        p.unit = Some("transactions".into());
        p.eta_ms = None;
        p.waited_ms = 65_000;
        p.waiting_for = vec![WaitingFor {
            pid: 42,
            application_name: "report".into(),
            state: "idle in transaction".into(),
            seconds: 70.2,
            query: "SELECT count(*) FROM other".into(),
        }];
        assert_eq!(
            p.summary(),
            "waiting for old snapshots — 0/1 transactions (0%); waited 1m05s of 1h00m (index_wait_timeout) for other transactions"
        );
        assert_eq!(
            p.waiting_for[0].to_string(),
            "pid 42 (report), idle in transaction, transaction open for 1m10s: SELECT count(*) FROM other"
        );
        let json = serde_json::to_string(&p).unwrap_or_default();
        let back: Option<IndexProgress> = serde_json::from_str(&json).ok();
        assert_eq!(back, Some(p));
    }

    #[test]
    fn the_eta_comes_from_the_rate_within_one_phase() {
        let mut eta = Eta::default();
        let t0 = Instant::now();
        let phase = "building index: scanning table";
        assert_eq!(eta.observe(phase, "blocks", 100, 1100, t0), None);
        let later = t0 + Duration::from_secs(2);
        // 200 blocks in 2s: 100/s, 800 left.
        assert_eq!(
            eta.observe(phase, "blocks", 300, 1100, later),
            Some(Duration::from_secs(8))
        );
        // A new phase starts over.
        assert_eq!(eta.observe("sorting", "tuples", 10, 100, later), None);
    }
}
