//! Table lock levels, which step takes which, and the sessions that stand in the way.
//!
//! A waiting `ALTER TABLE` makes every later query on its table queue behind it, so phased looks
//! before it queues: before a step that needs a lock that application traffic would queue behind,
//! it asks who holds a conflicting lock on the table, and waits (without queueing) until nobody does.

use std::fmt;

use crate::plan::Step;

/// PostgreSQL's table lock levels, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum LockMode {
    AccessShare,
    RowShare,
    RowExclusive,
    ShareUpdateExclusive,
    Share,
    ShareRowExclusive,
    Exclusive,
    AccessExclusive,
}

impl LockMode {
    /// The name as `pg_locks.mode` spells it.
    pub fn pg_name(self) -> &'static str {
        match self {
            LockMode::AccessShare => "AccessShareLock",
            LockMode::RowShare => "RowShareLock",
            LockMode::RowExclusive => "RowExclusiveLock",
            LockMode::ShareUpdateExclusive => "ShareUpdateExclusiveLock",
            LockMode::Share => "ShareLock",
            LockMode::ShareRowExclusive => "ShareRowExclusiveLock",
            LockMode::Exclusive => "ExclusiveLock",
            LockMode::AccessExclusive => "AccessExclusiveLock",
        }
    }

    /// Parses a `pg_locks.mode` value.
    pub fn from_pg_name(name: &str) -> Option<Self> {
        [
            LockMode::AccessShare,
            LockMode::RowShare,
            LockMode::RowExclusive,
            LockMode::ShareUpdateExclusive,
            LockMode::Share,
            LockMode::ShareRowExclusive,
            LockMode::Exclusive,
            LockMode::AccessExclusive,
        ]
        .into_iter()
        .find(|m| m.pg_name() == name)
    }

    /// The name as SQL spells it (`ACCESS EXCLUSIVE`).
    pub fn sql_name(self) -> &'static str {
        match self {
            LockMode::AccessShare => "ACCESS SHARE",
            LockMode::RowShare => "ROW SHARE",
            LockMode::RowExclusive => "ROW EXCLUSIVE",
            LockMode::ShareUpdateExclusive => "SHARE UPDATE EXCLUSIVE",
            LockMode::Share => "SHARE",
            LockMode::ShareRowExclusive => "SHARE ROW EXCLUSIVE",
            LockMode::Exclusive => "EXCLUSIVE",
            LockMode::AccessExclusive => "ACCESS EXCLUSIVE",
        }
    }

    /// PostgreSQL's conflict table ("Conflicting Lock Modes").
    pub fn conflicts_with(self, other: LockMode) -> bool {
        use LockMode::*;
        let (weak, strong) = if self <= other {
            (self, other)
        } else {
            (other, self)
        };
        match strong {
            AccessExclusive => true,
            Exclusive => weak >= RowShare,
            ShareRowExclusive => weak >= RowExclusive,
            Share => weak == RowExclusive || weak == ShareUpdateExclusive,
            ShareUpdateExclusive => weak == ShareUpdateExclusive,
            RowExclusive | RowShare | AccessShare => false,
        }
    }

    /// Would ordinary application traffic (reads: ACCESS SHARE, writes: ROW EXCLUSIVE) queue
    /// behind a request for this lock while it waits? Only such requests need a look first.
    pub fn queues_application(self) -> bool {
        self.conflicts_with(LockMode::RowExclusive) || self.conflicts_with(LockMode::AccessShare)
    }
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.sql_name())
    }
}

/// A table a step locks, and the strongest lock it asks for on it (PostgreSQL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableLock {
    pub table: String,
    pub mode: LockMode,
}

/// The strongest table locks a step asks for on PostgreSQL, for the look before it queues.
/// Steps that take only locks application traffic never queues behind (indexes built
/// `CONCURRENTLY`, `VALIDATE CONSTRAINT`, backfills' row locks) need no look and are left out.
pub fn locks_needed(step: &Step) -> Vec<TableLock> {
    let lock = |table: &str, mode| TableLock {
        table: table.to_string(),
        mode,
    };
    match step {
        // ALTER TABLE … ADD/DROP COLUMN, ADD CONSTRAINT CHECK … NOT VALID, SET NOT NULL, DROP
        // TABLE, and DROP TRIGGER (which dual_write runs before CREATE TRIGGER) take ACCESS EXCLUSIVE.
        Step::DropTable(_)
        | Step::AddColumn(_)
        | Step::DropColumn(_)
        | Step::AddCheck(_)
        | Step::SetNotNull(_)
        | Step::DualWrite(_)
        | Step::DropDualWrite(_) => step
            .table()
            .map(|t| vec![lock(t, LockMode::AccessExclusive)])
            .unwrap_or_default(),
        // ADD CONSTRAINT … FOREIGN KEY … NOT VALID: SHARE ROW EXCLUSIVE on both tables.
        Step::AddForeignKey(s) => vec![
            lock(&s.table, LockMode::ShareRowExclusive),
            lock(&s.references.table, LockMode::ShareRowExclusive),
        ],
        Step::CreateTable(_)
        | Step::CreateIndex(_)
        | Step::DropIndex(_)
        | Step::Backfill(_)
        | Step::Flag(_)
        | Step::Sql(_)
        | Step::Migrations(_)
        | Step::Command(_) => Vec::new(),
    }
}

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
            self.seconds,
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
    use super::LockMode::*;
    use super::*;

    #[test]
    fn conflict_table_matches_the_postgres_docs() {
        assert!(AccessExclusive.conflicts_with(AccessShare));
        assert!(AccessShare.conflicts_with(AccessExclusive));
        assert!(!AccessShare.conflicts_with(Exclusive));
        assert!(Exclusive.conflicts_with(RowShare));
        assert!(!RowExclusive.conflicts_with(RowExclusive));
        assert!(ShareRowExclusive.conflicts_with(RowExclusive));
        assert!(!ShareRowExclusive.conflicts_with(AccessShare));
        assert!(Share.conflicts_with(RowExclusive));
        assert!(!Share.conflicts_with(Share));
        assert!(ShareUpdateExclusive.conflicts_with(ShareUpdateExclusive));
        assert!(!ShareUpdateExclusive.conflicts_with(RowExclusive));
    }

    #[test]
    fn steps_name_the_locks_they_need() {
        let step = |yaml: &str| -> Step {
            let source = format!(
                "plan: p\nbackup: {{ before: [] }}\nphases:\n  - name: c\n    kind: contract\n    steps:\n      - {yaml}\n"
            );
            match crate::plan::parse_str("p.yaml", &source, std::path::Path::new(".")) {
                Ok(loaded) => loaded.plan.step_refs()[0].1.clone(),
                Err(report) => panic!("{}", report.render_plain()),
            }
        };
        assert_eq!(
            locks_needed(&step("set_not_null: { table: t, column: c }")),
            vec![TableLock {
                table: "t".into(),
                mode: AccessExclusive
            }]
        );
        assert_eq!(
            locks_needed(&step(
                "add_foreign_key: { table: t, name: f, columns: [u], references: { table: u, columns: [id] } }"
            )),
            vec![
                TableLock { table: "t".into(), mode: ShareRowExclusive },
                TableLock { table: "u".into(), mode: ShareRowExclusive },
            ]
        );
        assert!(
            locks_needed(&step("create_index: { table: t, name: i, columns: [c] }")).is_empty()
        );
        assert!(locks_needed(&step("sql: \"SELECT 1\"")).is_empty());
    }

    #[test]
    fn only_locks_that_queue_application_traffic_need_a_look() {
        assert!(AccessExclusive.queues_application());
        assert!(ShareRowExclusive.queues_application());
        assert!(!ShareUpdateExclusive.queues_application());
        assert_eq!(LockMode::from_pg_name("ShareLock"), Some(Share));
    }
}
