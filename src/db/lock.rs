//! The sessions that stand in the way of a step's table locks.
//!
//! A waiting `ALTER TABLE` makes every later query on its table queue behind it, so phased looks
//! before it queues: before a step that needs a lock that application traffic would queue behind
//! (`Operation::locks`), it asks who holds a conflicting lock on the table, and waits (without
//! queueing) until nobody does. The lock levels themselves are in `ops/lock.rs`.

use std::fmt;

/// Another session holding (or already waiting for) a lock that conflicts with ours.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Blocker {
    pub pid: i32,
    pub application_name: String,
    /// `active`, `idle in transaction`, …
    pub state: String,
    /// The lock it holds or waits for.
    pub mode: String,
    pub granted: bool,
    /// Seconds since its transaction (else its query) started.
    pub seconds: f64,
    /// RFC 3339, UTC.
    pub query_start: Option<String>,
    /// The start of its current (or last) query.
    pub query: String,
}

impl fmt::Display for Blocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let app = if self.application_name.is_empty() {
            "no application_name".to_string()
        } else {
            self.application_name.clone()
        };
        let state = if self.state.is_empty() {
            "unknown state"
        } else {
            &self.state
        };
        write!(
            f,
            "pid {} ({app}), {state} for {:.1}s, {} {}",
            self.pid,
            // Clocks of two sessions can put a just-started transaction a hair in the future:
            // never show `-0.0s`.
            self.seconds.max(0.0),
            if self.granted { "holds" } else { "waits for" },
            self.mode
        )?;
        if let Some(start) = &self.query_start {
            write!(f, ", query started {start}")?;
        }
        if !self.query.is_empty() {
            write!(f, ": {}", self.query)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Blocker;

    #[test]
    fn a_blocker_is_never_idle_for_a_negative_time() {
        let blocker = Blocker {
            pid: 42,
            mode: "AccessShareLock".into(),
            granted: true,
            application_name: "report".into(),
            state: "idle in transaction".into(),
            seconds: -0.01,
            query_start: None,
            query: String::new(),
        };
        let text = blocker.to_string();
        assert!(text.contains("idle in transaction for 0.0s"), "{text}");
        assert!(!text.contains("-0.0"), "{text}");
    }
}
