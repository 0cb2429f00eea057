//! SQLite backups through the online backup API, never a plain copy of the file: a copy of a live
//! database can catch a half-written page or miss what sits in the WAL. The copy is checked with
//! `PRAGMA integrity_check`; a restore runs the same API the other way.

use std::path::Path;
use std::time::Duration;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::sql_error;
use crate::db::backup::{BackupError, BackupRecord, RestoreNote, RESTORE_NOTE_KEY};
use crate::db::DbError;

/// Pages copied per step; between steps other connections may write.
const PAGES_PER_STEP: i32 = 256;

/// Copies every page of `from` into `to`, calling `progress` with the bytes copied so far.
fn copy(
    from: &Connection,
    to: &mut Connection,
    page_size: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<(), rusqlite::Error> {
    let backup = Backup::new(from, to)?;
    loop {
        let result = backup.step(PAGES_PER_STEP)?;
        let p = backup.progress();
        let done = (p.pagecount - p.remaining).max(0) as u64;
        progress(done * page_size);
        match result {
            StepResult::Done => return Ok(()),
            StepResult::More => {}
            // Another connection holds a lock: wait a little and go on.
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn page_size(conn: &Connection) -> u64 {
    conn.query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))
        .map(|n| n.max(0) as u64)
        .unwrap_or(4096)
}

fn table_exists(conn: &Connection, name: &str) -> Result<bool, rusqlite::Error> {
    conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

/// Runs `PRAGMA integrity_check` on a file opened read-only.
pub fn integrity_check(file: &Path) -> Result<(), BackupError> {
    let conn = Connection::open_with_flags(file, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| BackupError::new(format!("cannot open the backup {}: {e}", file.display())))?;
    let mut stmt = conn
        .prepare("PRAGMA integrity_check")
        .map_err(|e| BackupError::new(format!("integrity_check of {}: {e}", file.display())))?;
    let lines = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(|e| BackupError::new(format!("integrity_check of {}: {e}", file.display())))?;
    if lines != ["ok"] {
        return Err(BackupError::new(format!(
            "the backup {} failed PRAGMA integrity_check: {}",
            file.display(),
            lines.join("; ")
        )));
    }
    Ok(())
}

/// Writes a backup of `source` to `file` and verifies it.
pub fn write(
    source: &Connection,
    file: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<(), BackupError> {
    let io = |e: rusqlite::Error| {
        BackupError::new(format!("cannot write the backup {}: {e}", file.display()))
            .with_hint("check that the backup folder is writable and has room")
    };
    let mut copy_conn = Connection::open(file).map_err(io)?;
    copy(source, &mut copy_conn, page_size(source), progress).map_err(io)?;
    // The runner's lease row was copied too; a restored database must not carry it.
    if table_exists(&copy_conn, "phased_lease").map_err(io)? {
        copy_conn
            .execute("DELETE FROM phased_lease", [])
            .map_err(io)?;
    }
    // A backup is one self-contained file, whatever journal mode the source uses.
    copy_conn
        .query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))
        .map_err(io)?;
    copy_conn.close().map_err(|(_, e)| io(e))?;
    integrity_check(file)
}

/// Restores `file` into the database at `target` (created when missing), replacing its content.
pub fn restore(file: &Path, target: &Path) -> Result<(), BackupError> {
    integrity_check(file)?;
    let source = Connection::open_with_flags(file, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| BackupError::new(format!("cannot open the backup {}: {e}", file.display())))?;
    let mut dest = Connection::open(target)
        .map_err(|e| BackupError::new(format!("cannot open {}: {e}", target.display())))?;
    dest.busy_timeout(Duration::from_secs(10))
        .map_err(|e| BackupError::new(e.to_string()))?;
    let size = page_size(&source);
    copy(&source, &mut dest, size, &mut |_| {}).map_err(|e| {
        BackupError::new(format!("cannot restore into {}: {e}", target.display()))
            .with_hint("stop the processes writing to the database, then restore again")
    })?;
    Ok(())
}

pub fn record(conn: &Connection, b: &BackupRecord) -> Result<i64, DbError> {
    let sql = "INSERT INTO phased_backups (plan, phase, path, size_bytes, sha256, duration_ms, verified, created_at) \
               VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
    conn.execute(
        sql,
        params![
            b.plan,
            b.phase,
            b.path,
            b.size_bytes,
            b.sha256,
            b.duration_ms,
            b.verified,
            b.created_at
        ],
    )
    .map_err(|e| sql_error(e, sql))?;
    Ok(conn.last_insert_rowid())
}

pub fn backups(conn: &Connection, plan: Option<&str>) -> Result<Vec<BackupRecord>, DbError> {
    if !table_exists(conn, "phased_backups").map_err(|e| sql_error(e, "sqlite_schema"))? {
        return Ok(Vec::new());
    }
    let sql =
        "SELECT id, plan, phase, path, size_bytes, sha256, duration_ms, verified, created_at \
               FROM phased_backups WHERE ?1 IS NULL OR plan = ?1 ORDER BY created_at DESC, id DESC";
    let mut stmt = conn.prepare(sql).map_err(|e| sql_error(e, sql))?;
    let rows = stmt
        .query_map([plan], |r| {
            Ok(BackupRecord {
                id: r.get(0)?,
                plan: r.get(1)?,
                phase: r.get(2)?,
                path: r.get(3)?,
                size_bytes: r.get(4)?,
                sha256: r.get(5)?,
                duration_ms: r.get(6)?,
                verified: r.get(7)?,
                created_at: r.get(8)?,
            })
        })
        .map_err(|e| sql_error(e, sql))?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(|e| sql_error(e, sql))
}

pub fn forget(conn: &Connection, id: i64) -> Result<(), DbError> {
    let sql = "DELETE FROM phased_backups WHERE id = ?1";
    conn.execute(sql, [id]).map_err(|e| sql_error(e, sql))?;
    Ok(())
}

pub fn record_restore(conn: &Connection, note: &RestoreNote) -> Result<(), DbError> {
    let value = serde_json::to_string(note).map_err(|e| DbError::Unexpected(e.to_string()))?;
    let sql = "INSERT INTO phased_meta (key, value) VALUES (?1, ?2) \
               ON CONFLICT (key) DO UPDATE SET value = excluded.value";
    conn.execute(sql, params![RESTORE_NOTE_KEY, value])
        .map_err(|e| sql_error(e, sql))?;
    Ok(())
}

pub fn last_restore(conn: &Connection) -> Result<Option<RestoreNote>, DbError> {
    if !table_exists(conn, "phased_meta").map_err(|e| sql_error(e, "sqlite_schema"))? {
        return Ok(None);
    }
    let sql = "SELECT value FROM phased_meta WHERE key = ?1";
    let value: Option<String> = conn
        .query_row(sql, [RESTORE_NOTE_KEY], |r| r.get(0))
        .optional()
        .map_err(|e| sql_error(e, sql))?;
    Ok(value.and_then(|v| serde_json::from_str(&v).ok()))
}
