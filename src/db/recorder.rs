//! The recording side of the executor: `phased plan` runs the real code path with the database
//! connection in recording mode, so what it prints is what `phased run` sends, by construction.
//!
//! In recording mode a connection sends its look-ups (reads) to the database as usual — or, with
//! no database at all (`phased plan --offline`), answers them with nothing — and keeps every
//! statement that would change something instead of sending it. The engine adds the phases and
//! steps around them, so the recording reads as the run would go.

use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;

/// What a recorded statement does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Changes the database (or opens, ends or configures a transaction): recorded, not sent.
    Write,
    /// Only reads: sent in recording mode too (phased looks before it leaps).
    Read,
    /// Phased's own bookkeeping in its state tables (`phased.steps`, `phased_steps` …).
    State,
}

/// One statement, as the connection would send it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sent {
    pub sql: String,
    /// The bound values, as text (`$1`, `$2` … or `?1` …, in order).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<String>,
    pub effect: Effect,
    /// Sent again for every batch of a backfill (the recording shows the first).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub repeats: bool,
}

/// An entry of the recording, in the order the run would go.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "entry", rename_all = "snake_case")]
pub enum Entry {
    /// A phase starts; its gates and backup, as the run would check and take them.
    Phase {
        name: String,
        kind: String,
        notes: Vec<String>,
    },
    /// A step starts (or is skipped, when done).
    Step {
        id: String,
        label: String,
        status: String,
        line: u64,
    },
    /// Something the run does that is not a statement on this connection (a program it runs, a
    /// backup, a gate it checks), or why a statement's values are not known yet.
    Note { text: String },
    /// A statement.
    Sql(Sent),
}

/// A shared, append-only recording. Cloning it shares it.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    entries: Arc<Mutex<Vec<Entry>>>,
    /// True while a backfill's batch is recorded (its statements repeat per batch).
    repeating: Arc<Mutex<bool>>,
    /// True while the dry run goes through phases before the one asked for (`--phase`): they
    /// run, so that the state the asked-for phase starts from is the one it would see, but
    /// nothing of them is kept.
    muted: Arc<Mutex<bool>>,
}

impl Recorder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&self, entry: Entry) {
        if *self.muted.lock().unwrap_or_else(PoisonError::into_inner) {
            return;
        }
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(entry);
    }

    /// Records a statement.
    pub fn sql(&self, sql: &str, params: Vec<String>, effect: Effect) {
        let repeats = *self
            .repeating
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.push(Entry::Sql(Sent {
            sql: sql.trim().trim_end_matches(';').trim_end().to_string(),
            params,
            effect,
            repeats,
        }));
    }

    pub fn note(&self, text: impl Into<String>) {
        self.push(Entry::Note { text: text.into() });
    }

    /// Marks the statements recorded until `set_repeating(false)` as sent once per batch.
    pub fn set_repeating(&self, on: bool) {
        *self
            .repeating
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = on;
    }

    pub fn set_muted(&self, on: bool) {
        *self.muted.lock().unwrap_or_else(PoisonError::into_inner) = on;
    }

    /// Everything recorded so far.
    pub fn entries(&self) -> Vec<Entry> {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Which statements are phased's own bookkeeping (shown as such by `phased plan`).
pub fn effect_of_write(sql: &str) -> Effect {
    let lower = sql.to_ascii_lowercase();
    if lower.contains("phased.steps")
        || lower.contains("phased_steps")
        || lower.contains("phased.meta")
        || lower.contains("phased_meta")
        || lower.contains("create schema if not exists phased")
    {
        Effect::State
    } else {
        Effect::Write
    }
}
