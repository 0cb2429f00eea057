//! What backups look like to the engine: the recorded rows, the restore note, and the error a
//! failed backup carries (with a hint saying what to fix). Each dialect writes and restores its
//! own files in `postgres/backup.rs` and `sqlite/backup.rs`.

use serde::{Deserialize, Serialize};

use super::DbError;

/// One backup as recorded in the state (`phased.backups` / `phased_backups`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupRecord {
    /// Row id (0 before it is recorded).
    pub id: i64,
    pub plan: String,
    /// The phase the backup was taken before.
    pub phase: String,
    /// Absolute path of the backup file.
    pub path: String,
    pub size_bytes: i64,
    /// Hex SHA-256 of the file.
    pub sha256: String,
    pub duration_ms: i64,
    /// The file was read back (`pg_restore --list` / `PRAGMA integrity_check`) and found sound.
    pub verified: bool,
    /// RFC 3339, UTC.
    pub created_at: String,
}

/// A database restored from a backup, noted in the state so `status` can say so.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestoreNote {
    /// The backup file restored.
    pub path: String,
    /// The plan and phase the backup was taken for, when known.
    pub plan: Option<String>,
    pub phase: Option<String>,
    /// When the backup was taken (RFC 3339, UTC), when known.
    pub backup_created_at: Option<String>,
    /// When it was restored (RFC 3339, UTC).
    pub restored_at: String,
}

/// Why a backup (or a restore) could not be made, and what to do about it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct BackupError {
    pub message: String,
    /// What the operator should change.
    pub hint: Option<String>,
    /// Set when the backup could not be recorded because the runner lost the plan's lease: the
    /// run stops as a runner that lost its lease (exit 4), not as a failed backup.
    pub lease_lost: Option<String>,
}

impl BackupError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            hint: None,
            lease_lost: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl From<DbError> for BackupError {
    fn from(e: DbError) -> Self {
        let mut error = BackupError::new(e.to_string());
        error.lease_lost = e.lease_lost().map(str::to_string);
        error
    }
}

/// The key of the restore note in the state's meta table.
pub const RESTORE_NOTE_KEY: &str = "last_restore";
