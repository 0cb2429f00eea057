//! Verified backups before destructive phases, and restoring them.
//!
//! Before a phase named in `backup.before` starts, the runner writes a backup into `backup.dir`
//! (resolved against the plan's folder), has the target verify it reads back, hashes it, records
//! it in the state and beside the file (`<file>.json`, so a restore knows where it came from even
//! when the database is gone), then prunes to `backup.keep`. Any failure stops the run before the
//! phase's first step. The database-specific parts live behind [`Database`](crate::db::Database).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::events::{Event, Reporter};
use super::records::millis;
use super::EngineError;
use crate::db::backup::{BackupError, BackupRecord, RestoreNote};
use crate::db::open::{open, Open};
use crate::db::prelude::*;
use crate::db::url::without_password;
use crate::db::{DatabaseUrl, DbError, Dialect};
use crate::plan::{LoadedPlan, Phase, Plan};
use crate::with_target;

/// Written next to each backup as `<file>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sidecar {
    /// `postgres` or `sqlite`.
    pub dialect: String,
    /// Where the backup was taken from, without any password.
    pub database: String,
    /// Tables the backup was limited to (PostgreSQL); empty: the whole database.
    #[serde(default)]
    pub tables: Vec<String>,
    pub backup: BackupRecord,
}

/// A recorded backup and whether its file is still there.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackupListing {
    #[serde(flatten)]
    pub record: BackupRecord,
    pub file_present: bool,
}

/// Does the plan ask for a backup before this phase?
pub fn wanted_before(plan: &Plan, phase: &Phase) -> bool {
    plan.backup.before.iter().any(|p| p.value == phase.name())
}

/// The folder backups go to: `backup.dir`, relative to the plan's folder.
pub fn backup_dir(loaded: &LoadedPlan) -> PathBuf {
    let dir = &loaded.plan.backup.dir;
    if dir.is_absolute() {
        dir.clone()
    } else {
        loaded.base_dir.join(dir)
    }
}

fn dir_hint(loaded: &LoadedPlan) -> String {
    format!(
        "make backup.dir (`{}` in the plan, resolved against the plan's folder) a writable folder with room for a full backup, or point backup.dir elsewhere",
        loaded.plan.backup.dir.display()
    )
}

/// Checks, before anything runs, that a backup can be taken: the tools (PostgreSQL) and a
/// writable backup folder.
pub async fn preflight<T: Database>(
    target: &mut T,
    loaded: &LoadedPlan,
    phase: &str,
) -> Result<(), EngineError> {
    let fail = |e: BackupError| EngineError::Backup {
        phase: phase.to_string(),
        message: e.message,
        hint: e.hint,
    };
    target.check_backup_tools().await.map_err(fail)?;
    writable_dir(loaded).map_err(fail)?;
    Ok(())
}

/// Creates the backup folder and proves a file can be written in it.
fn writable_dir(loaded: &LoadedPlan) -> Result<PathBuf, BackupError> {
    let dir = backup_dir(loaded);
    let io = |what: &str, e: std::io::Error| {
        BackupError::new(format!(
            "cannot {what} the backup folder {}: {e}",
            dir.display()
        ))
        .with_hint(dir_hint(loaded))
    };
    std::fs::create_dir_all(&dir).map_err(|e| io("create", e))?;
    let probe = dir.join(format!(".phased-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"phased").map_err(|e| io("write to", e))?;
    let _ = std::fs::remove_file(&probe);
    dir.canonicalize().map_err(|e| io("resolve", e))
}

fn now_rfc3339() -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".to_string())
}

/// A name part safe in a file name.
fn file_part(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `<plan>-<phase>-<UTC timestamp>.<ext>`, e.g. `quickstart-contract-20260101T120000.123Z.dump`.
pub fn file_name(plan: &str, phase: &str, dialect: Dialect) -> String {
    let format = time::macros::format_description!(
        "[year][month][day]T[hour][minute][second].[subsecond digits:3]Z"
    );
    let stamp = time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_else(|_| "unknown-time".to_string());
    let ext = match dialect {
        Dialect::Postgres => "dump",
        Dialect::Sqlite => "sqlite",
    };
    format!("{}-{}-{stamp}.{ext}", file_part(plan), file_part(phase))
}

/// Where a backup came from, as a URL that works from any folder and holds no password.
fn source_database(described: &str) -> String {
    match DatabaseUrl::parse(described) {
        Ok(DatabaseUrl::Sqlite(path)) => match path.canonicalize() {
            Ok(abs) => format!("sqlite://{}", abs.display()),
            Err(_) => described.to_string(),
        },
        _ => without_password(described),
    }
}

pub fn sidecar_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_os_string();
    name.push(".json");
    PathBuf::from(name)
}

/// Creates `path` empty and readable by its owner only (0600 from the start, never chmod-ed
/// after: a backup holds every row of the database).
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map(drop)
}

/// Is `name` a file a backup of `plan` leaves while it is written: `<plan>-<phase>-<stamp>.<ext>
/// .partial`, or SQLite's journal of it?
fn is_partial_of(name: &str, plan: &Plan) -> bool {
    let partial = [
        ".partial",
        ".partial-journal",
        ".partial-wal",
        ".partial-shm",
    ]
    .iter()
    .any(|end| name.ends_with(end));
    partial
        && plan.phases().any(|phase| {
            let prefix = format!("{}-{}-", file_part(plan.id()), file_part(phase.name()));
            name.strip_prefix(&prefix)
                .is_some_and(|stamp| stamp.starts_with(|c: char| c.is_ascii_digit()))
        })
}

/// Removes the `.partial` files of `plan` that a killed run left in `dir`.
fn remove_stale_partials(dir: &Path, plan: &Plan) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        if !name.to_str().is_some_and(|n| is_partial_of(n, plan)) {
            continue;
        }
        let path = entry.path();
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::info!(file = %path.display(), "removed a partial backup left by an interrupted run")
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot remove a partial backup left by an interrupted run")
            }
        }
    }
}

/// A backup holds every row of the database: readable by its owner only.
fn owner_only(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
            tracing::warn!(file = %path.display(), error = %e, "cannot make the backup private");
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// Hex SHA-256 of a file, read in chunks (memory stays flat whatever its size).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Takes the backup before `phase`, records it and prunes old ones. `underway`: some step of the
/// phase already ran (a resumed phase keeps the backup taken before it first started).
pub async fn before_phase<T: Database>(
    target: &mut T,
    loaded: &LoadedPlan,
    phase: &Phase,
    underway: bool,
    reporter: &mut dyn Reporter,
) -> Result<(), EngineError> {
    let plan = &loaded.plan;
    if underway {
        let existing = target.backups(Some(plan.id())).await?;
        if let Some(b) = existing
            .iter()
            .find(|b| b.phase == phase.name() && b.verified)
        {
            reporter.emit(&Event::Log {
                level: "info".to_string(),
                message: format!(
                    "phase {} resumes: keeping the backup taken before it started ({}, {})",
                    phase.name(),
                    b.path,
                    b.created_at
                ),
            });
            return Ok(());
        }
    }
    let fail = |e: BackupError| EngineError::Backup {
        phase: phase.name().to_string(),
        message: e.message,
        hint: e.hint,
    };
    if let Err(e) = take(target, loaded, phase.name(), reporter).await {
        reporter.emit(&Event::BackupFailed {
            phase: phase.name().to_string(),
            error: e.message.clone(),
        });
        // A runner that lost its lease meanwhile (the fence refused the backup's record, or
        // the heartbeat saw the lock session go) stops as one: exit 4, not a failed backup.
        if let Some(why) = e.lease_lost.clone().or_else(|| target.lease_lost()) {
            return Err(EngineError::LeaseLost(why));
        }
        return Err(fail(e));
    }
    if let Some(keep) = plan.backup.keep {
        prune(target, plan.id(), keep, reporter).await?;
    }
    Ok(())
}

/// Writes, verifies, hashes and records one backup.
pub async fn take<T: Database>(
    target: &mut T,
    loaded: &LoadedPlan,
    phase: &str,
    reporter: &mut dyn Reporter,
) -> Result<BackupRecord, BackupError> {
    let plan = &loaded.plan;
    let dir = writable_dir(loaded)?;
    let name = file_name(plan.id(), phase, target.dialect());
    let mut path = dir.join(&name);
    let mut n = 2;
    while path.exists() || sidecar_path(&path).exists() {
        let (stem, ext) = name.rsplit_once('.').unwrap_or((&name, ""));
        path = dir.join(format!("{stem}-{n}.{ext}"));
        n += 1;
    }
    // Written under a temporary name; only a verified backup gets its final name. The run holds
    // the plan's lease, so a `.partial` of this plan already there was left by a killed run.
    remove_stale_partials(&dir, plan);
    let mut partial_name = path.as_os_str().to_os_string();
    partial_name.push(".partial");
    let partial = PathBuf::from(partial_name);
    let shown = path.display().to_string();
    // Private before the first byte is written: the tools write into the file created here.
    create_private(&partial).map_err(|e| {
        BackupError::new(format!("cannot create {}: {e}", partial.display()))
            .with_hint(dir_hint(loaded))
    })?;
    reporter.emit(&Event::BackupStart {
        phase: phase.to_string(),
        path: shown.clone(),
    });
    let started = Instant::now();
    let mut last_emit: Option<Instant> = None;
    let written = {
        let mut progress = |bytes: u64| {
            if last_emit.is_none_or(|t| t.elapsed().as_millis() >= 100) {
                reporter.emit(&Event::BackupProgress {
                    phase: phase.to_string(),
                    bytes,
                });
                last_emit = Some(Instant::now());
            }
        };
        target
            .write_backup(&partial, &plan.backup.tables, &mut progress)
            .await
    };
    let result = written.and_then(|()| {
        std::fs::rename(&partial, &path).map_err(|e| {
            BackupError::new(format!("cannot name the backup {shown}: {e}"))
                .with_hint(dir_hint(loaded))
        })
    });
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    owner_only(&path);
    let cleanup = |e: BackupError| {
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(sidecar_path(&path));
        e
    };
    let size = std::fs::metadata(&path)
        .map(|m| m.len())
        .map_err(|e| cleanup(BackupError::new(format!("cannot read {shown}: {e}"))))?;
    let sha256 = sha256_file(&path)
        .map_err(|e| cleanup(BackupError::new(format!("cannot read {shown}: {e}"))))?;
    let mut record = BackupRecord {
        id: 0,
        plan: plan.id().to_string(),
        phase: phase.to_string(),
        path: shown.clone(),
        size_bytes: i64::try_from(size).unwrap_or(i64::MAX),
        sha256,
        duration_ms: i64::try_from(millis(started.elapsed())).unwrap_or(i64::MAX),
        verified: true,
        created_at: now_rfc3339(),
    };
    let sidecar = Sidecar {
        dialect: target.dialect().as_str().to_string(),
        database: source_database(&target.describe()),
        tables: plan.backup.tables.clone(),
        backup: record.clone(),
    };
    let text = serde_json::to_string_pretty(&sidecar)
        .map_err(|e| cleanup(BackupError::new(e.to_string())))?;
    std::fs::write(sidecar_path(&path), text).map_err(|e| {
        cleanup(
            BackupError::new(format!(
                "cannot write {}: {e}",
                sidecar_path(&path).display()
            ))
            .with_hint(dir_hint(loaded)),
        )
    })?;
    owner_only(&sidecar_path(&path));
    record.id = target
        .record_backup(&record)
        .await
        .map_err(|e| cleanup(BackupError::from(e)))?;
    reporter.emit(&Event::BackupDone {
        phase: phase.to_string(),
        path: shown,
        size_bytes: size,
        sha256: record.sha256.clone(),
        duration_ms: millis(started.elapsed()),
        verified: record.verified,
    });
    Ok(record)
}

/// Keeps the `keep` newest backups of the plan (at least one); deletes the files and records of
/// the older ones.
pub async fn prune<T: Database>(
    target: &mut T,
    plan: &str,
    keep: u32,
    reporter: &mut dyn Reporter,
) -> Result<Vec<BackupRecord>, DbError> {
    let keep = keep.max(1) as usize;
    let records = target.backups(Some(plan)).await?;
    let mut pruned = Vec::new();
    for old in records.into_iter().skip(keep) {
        let path = PathBuf::from(&old.path);
        for file in [path.clone(), sidecar_path(&path)] {
            if let Err(e) = std::fs::remove_file(&file) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(file = %file.display(), error = %e, "cannot delete an old backup file");
                }
            }
        }
        target.forget_backup(old.id).await?;
        reporter.emit(&Event::BackupPruned {
            path: old.path.clone(),
        });
        pruned.push(old);
    }
    Ok(pruned)
}

/// The recorded backups of a plan, newest first, with whether each file is still there.
pub async fn list<T: Database>(target: &mut T, plan: &str) -> Result<Vec<BackupListing>, DbError> {
    Ok(target
        .backups(Some(plan))
        .await?
        .into_iter()
        .map(|record| BackupListing {
            file_present: Path::new(&record.path).is_file(),
            record,
        })
        .collect())
}

/// A backup file as found on disk.
#[derive(Debug, Clone)]
pub struct BackupFile {
    pub path: PathBuf,
    pub dialect: Dialect,
    /// The `<file>.json` written with it, when present and sound.
    pub sidecar: Option<Sidecar>,
    /// Why the `<file>.json` beside it could not be read: its SHA-256 cannot be checked, so
    /// [`restore`] refuses the file.
    pub unreadable_sidecar: Option<BackupError>,
}

/// Is this a hex SHA-256 (what [`sha256_file`] writes)?
fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Reads the `<file>.json` beside a backup. `Ok(None)`: there is none (a file of unknown origin).
/// An error: there is one, but it cannot be read, is not a record phased wrote, or records no
/// SHA-256, so the backup cannot be checked.
fn read_sidecar(path: &Path) -> Result<Option<Sidecar>, BackupError> {
    let sidecar = sidecar_path(path);
    let refuse = |what: String| {
        BackupError::new(format!(
            "refusing to restore {}: its checksum record {} {what}, so the file cannot be checked against the SHA-256 recorded when it was taken",
            path.display(),
            sidecar.display()
        ))
        .with_hint(format!(
            "put back the {} written with the backup (`phased backups PLAN --format json` on the database it was taken from shows its recorded sha256), or restore another backup; to restore this file without a checksum check, move {} aside and pass --database URL",
            sidecar
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            sidecar.display()
        ))
    };
    let text = match std::fs::read_to_string(&sidecar) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(refuse(format!("cannot be read ({e})"))),
    };
    let record: Sidecar = serde_json::from_str(&text)
        .map_err(|e| refuse(format!("is not a backup record phased can read ({e})")))?;
    if !is_sha256(&record.backup.sha256) {
        return Err(refuse(format!(
            "holds no SHA-256 (its sha256 is `{}`)",
            record.backup.sha256
        )));
    }
    Ok(Some(record))
}

/// Reads what a backup file is (by its first bytes) and the sidecar written with it.
pub fn inspect(path: &Path) -> Result<BackupFile, BackupError> {
    let mut head = [0u8; 16];
    let mut file = std::fs::File::open(path)
        .map_err(|e| BackupError::new(format!("cannot open the backup {}: {e}", path.display())))?;
    let n = file
        .read(&mut head)
        .map_err(|e| BackupError::new(format!("cannot read the backup {}: {e}", path.display())))?;
    let dialect = if head[..n].starts_with(b"PGDMP") {
        Dialect::Postgres
    } else if head[..n].starts_with(b"SQLite format 3\0") {
        Dialect::Sqlite
    } else {
        return Err(BackupError::new(format!(
            "{} is neither a pg_dump custom-format archive nor an SQLite database",
            path.display()
        ))
        .with_hint("pass a file listed by `phased backups PLAN`"));
    };
    let (sidecar, unreadable_sidecar) = match read_sidecar(path) {
        Ok(sidecar) => (sidecar, None),
        Err(e) => (None, Some(e)),
    };
    Ok(BackupFile {
        path: path.to_path_buf(),
        dialect,
        sidecar,
        unreadable_sidecar,
    })
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct Restored {
    pub note: RestoreNote,
    /// The database did not exist and was created (PostgreSQL) or is a new file (SQLite).
    pub created: bool,
}

/// Restores a backup into `url`: the whole database is replaced by the backup's content, state
/// tables included, so the plan's state is the one from when the backup was taken. Records of
/// backups the database knew before (whose files still exist) are kept, and the restore is noted
/// so `status` can say so.
///
/// A backup whose sidecar is there but cannot be read is refused before anything is touched: its
/// SHA-256 cannot be checked. One without a sidecar (a file of unknown origin) is restored
/// unchecked.
pub async fn restore(backup: &BackupFile, url: &DatabaseUrl) -> Result<Restored, BackupError> {
    if let Some(e) = &backup.unreadable_sidecar {
        return Err(e.clone());
    }
    if let Some(sidecar) = &backup.sidecar {
        let actual = sha256_file(&backup.path)
            .map_err(|e| BackupError::new(format!("cannot read {}: {e}", backup.path.display())))?;
        if actual != sidecar.backup.sha256 {
            return Err(BackupError::new(format!(
                "{} changed since it was taken: its SHA-256 is {actual}, the recorded one {}",
                backup.path.display(),
                sidecar.backup.sha256
            ))
            .with_hint("restore another backup (`phased backups PLAN` lists them)"));
        }
    }
    let path = backup
        .path
        .canonicalize()
        .unwrap_or_else(|_| backup.path.clone());
    let own = backup.sidecar.as_ref().map(|s| BackupRecord {
        path: path.display().to_string(),
        ..s.backup.clone()
    });
    let note = RestoreNote {
        path: path.display().to_string(),
        plan: own.as_ref().map(|b| b.plan.clone()),
        phase: own.as_ref().map(|b| b.phase.clone()),
        backup_created_at: own.as_ref().map(|b| b.created_at.clone()),
        restored_at: now_rfc3339(),
    };
    // The records of the backups the database knew, so the restore does not lose them.
    let previous = match open(url, "phased/restore", Open::Existing).await {
        Ok(mut t) => with_target!(&mut t, t => t.backups(None).await).unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let created = match url {
        DatabaseUrl::Postgres(u) => {
            crate::db::postgres::backup::restore(u, &path)
                .await?
                .created
        }
        DatabaseUrl::Sqlite(file) => {
            let existed = file.exists();
            crate::db::sqlite::backup::restore(&path, file)?;
            !existed
        }
    };
    let mut t = open(url, "phased/restore", Open::Existing).await?;
    with_target!(&mut t, t => after_restore(t, previous, own, &note).await)?;
    Ok(Restored { note, created })
}

/// Brings back the backup records the restore replaced (those whose files exist), and notes the
/// restore.
async fn after_restore<T: Database>(
    target: &mut T,
    previous: Vec<BackupRecord>,
    own: Option<BackupRecord>,
    note: &RestoreNote,
) -> Result<(), DbError> {
    target.ensure_state().await?;
    let present: Vec<String> = target
        .backups(None)
        .await?
        .into_iter()
        .map(|b| b.path)
        .collect();
    let mut known = present;
    for record in previous.into_iter().chain(own) {
        if known.contains(&record.path) || !Path::new(&record.path).is_file() {
            continue;
        }
        known.push(record.path.clone());
        target.record_backup(&record).await?;
    }
    target.record_restore(note).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_files_after_plan_phase_and_time() {
        let name = file_name("quickstart", "contract", Dialect::Postgres);
        assert!(name.starts_with("quickstart-contract-2"), "{name}");
        assert!(name.ends_with("Z.dump"), "{name}");
        let name = file_name("p", "drop old/cols", Dialect::Sqlite);
        assert!(name.starts_with("p-drop_old_cols-"), "{name}");
        assert!(name.ends_with(".sqlite"), "{name}");
    }

    #[test]
    fn a_sidecar_that_is_there_but_unreadable_is_not_taken_for_none() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b.sqlite");
        std::fs::write(&file, b"SQLite format 3\0rest").unwrap();
        let found = inspect(&file).unwrap();
        assert!(found.sidecar.is_none() && found.unreadable_sidecar.is_none());
        std::fs::write(sidecar_path(&file), b"{ \"dialect\": ").unwrap();
        let found = inspect(&file).unwrap();
        assert!(found.sidecar.is_none());
        let refusal = found.unreadable_sidecar.expect("refused");
        assert!(
            refusal.message.contains("b.sqlite.json"),
            "{}",
            refusal.message
        );
        assert!(refusal.hint.is_some());
        assert!(is_sha256(&"ab".repeat(32)));
        assert!(!is_sha256("") && !is_sha256(&"zz".repeat(32)));
    }

    #[test]
    fn hashes_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"abc").unwrap();
        assert_eq!(
            sha256_file(&file).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
