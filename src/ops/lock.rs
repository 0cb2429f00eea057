//! PostgreSQL's table lock levels and the locks an operation takes: what the look before a step
//! queues (db/lock.rs finds the sessions in the way) is about.

use std::fmt;

use super::name::TableName;

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
    pub table: TableName,
    pub mode: LockMode,
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
    fn only_locks_that_queue_application_traffic_need_a_look() {
        assert!(AccessExclusive.queues_application());
        assert!(ShareRowExclusive.queues_application());
        assert!(!ShareUpdateExclusive.queues_application());
        assert_eq!(LockMode::from_pg_name("ShareLock"), Some(Share));
    }
}
