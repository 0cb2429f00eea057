//! PostgreSQL backups: `pg_dump -Fc` into a file, verified with `pg_restore --list`, restored
//! with `pg_restore --clean --if-exists` in one transaction.
//!
//! The connection goes to the tools through the libpq environment (`PGHOST`, `PGPORT`, `PGUSER`,
//! `PGDATABASE`, `PGPASSWORD`…), parsed from the URL with `tokio_postgres::Config`: a password
//! never reaches a command line (where `ps` shows it to every user), a file name or a log line.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use deadpool_postgres::Object;
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::Config;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::tls::{self, Tls};

use super::sql_error;
use crate::db::backup::{BackupError, BackupRecord, RestoreNote, RESTORE_NOTE_KEY};
use crate::db::url::redact;
use crate::db::DbError;
use crate::ops::name::ident;

/// Where `pg_dump` and `pg_restore` are taken from: the folder in `PHASED_PG_BIN`, else `PATH`.
pub const BIN_ENV: &str = "PHASED_PG_BIN";

/// Timestamps as RFC 3339 UTC text.
const TS: &str = "YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"";

fn tool(name: &str) -> PathBuf {
    match std::env::var_os(BIN_ENV) {
        Some(dir) if !dir.is_empty() => Path::new(&dir).join(name),
        _ => PathBuf::from(name),
    }
}

fn install_hint(major: Option<u32>) -> String {
    let version = major
        .map(|m| format!(" {}", show_major(m)))
        .unwrap_or_default();
    let package = major
        .map(|m| format!("postgresql-client-{}", show_major(m)))
        .unwrap_or_else(|| "postgresql-client".to_string());
    format!(
        "install the PostgreSQL{version} client tools (e.g. `apt-get install {package}`), or set {BIN_ENV} to the folder holding pg_dump and pg_restore"
    )
}

/// The libpq environment for a URL: everything the tools need to connect, password included.
pub(crate) fn libpq_env(url: &str) -> Result<Vec<(&'static str, String)>, BackupError> {
    let (config, tls) = read_url(url)?;
    let mut env = Vec::new();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            #[cfg(unix)]
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    if !hosts.is_empty() {
        env.push(("PGHOST", hosts.join(",")));
    }
    let addrs: Vec<String> = config
        .get_hostaddrs()
        .iter()
        .map(|a| a.to_string())
        .collect();
    if !addrs.is_empty() {
        env.push(("PGHOSTADDR", addrs.join(",")));
    }
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    if !ports.is_empty() {
        env.push(("PGPORT", ports.join(",")));
    }
    if let Some(user) = config.get_user() {
        env.push(("PGUSER", user.to_string()));
    }
    if let Some(db) = config.get_dbname() {
        env.push(("PGDATABASE", db.to_string()));
    }
    if let Some(password) = config.get_password() {
        env.push(("PGPASSWORD", String::from_utf8_lossy(password).into_owned()));
    }
    if let Some(options) = config.get_options() {
        env.push(("PGOPTIONS", options.to_string()));
    }
    if let Some(timeout) = config.get_connect_timeout() {
        env.push(("PGCONNECT_TIMEOUT", timeout.as_secs().max(1).to_string()));
    }
    env.extend(tls.libpq_env());
    env.push(("PGAPPNAME", "phased/backup".to_string()));
    Ok(env)
}

/// A URL's connection settings and TLS settings.
fn read_url(url: &str) -> Result<(Config, Tls), BackupError> {
    tls::parse(url)
        .map_err(|e| BackupError::new(format!("cannot read the database URL {}: {e}", redact(url))))
}

/// The database name of a URL.
fn dbname(url: &str) -> Result<String, BackupError> {
    let (config, _) = read_url(url)?;
    config
        .get_dbname()
        .or(config.get_user())
        .map(str::to_string)
        .ok_or_else(|| {
            BackupError::new(format!(
                "the database URL {} names no database",
                redact(url)
            ))
        })
}

/// A libpq connection string holding only the database name (host, user and password come from
/// the environment), so a name containing `=` is never read as connection options.
fn dbname_conninfo(name: &str) -> String {
    format!(
        "dbname='{}'",
        name.replace('\\', "\\\\").replace('\'', "\\'")
    )
}

/// Major versions are compared as `major × 100` (15 → 1500), and before PostgreSQL 10, when the
/// major version was two numbers, as `9.6` → 906.
///
/// The major version in `pg_dump (PostgreSQL) 15.20 (Debian …)` or `… 9.6.24`.
pub(crate) fn parse_tool_major(output: &str) -> Option<u32> {
    let version = output
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))?;
    let mut parts = version.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next()?.parse().ok()?;
    if major < 10 {
        let minor: u32 = parts.next()?.parse().ok()?;
        return Some(major * 100 + minor);
    }
    Some(major * 100)
}

/// `SHOW server_version_num` (e.g. 150020 or 90624) → the major version the tools must reach.
pub(crate) fn server_major(version_num: i32) -> u32 {
    let v = version_num.max(0) as u32;
    if v >= 100_000 {
        v / 10_000 * 100
    } else {
        v / 100
    }
}

fn show_major(major: u32) -> String {
    if major % 100 == 0 {
        (major / 100).to_string()
    } else {
        format!("{}.{}", major / 100, major % 100)
    }
}

async fn tool_major(name: &str) -> Result<u32, BackupError> {
    let path = tool(name);
    let output = tie_to_phased(&mut Command::new(&path))
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| {
            let message = if e.kind() == std::io::ErrorKind::NotFound {
                format!("`{}` was not found", path.display())
            } else {
                format!("cannot run `{}`: {e}", path.display())
            };
            BackupError::new(format!(
                "{message}; it is needed to back up a PostgreSQL database"
            ))
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    parse_tool_major(&text).ok_or_else(|| {
        BackupError::new(format!(
            "`{} --version` printed `{}`, which names no version",
            path.display(),
            text.trim()
        ))
    })
}

/// Checks that `pg_dump` and `pg_restore` exist and are not older than the server.
pub async fn check_tools(conn: &Object) -> Result<(), BackupError> {
    let sql = "SHOW server_version_num";
    let row = conn
        .query_one(sql, &[])
        .await
        .map_err(|e| BackupError::from(sql_error(e, sql)))?;
    let text: String = row.get(0);
    let server = server_major(text.trim().parse().unwrap_or(0));
    for name in ["pg_dump", "pg_restore"] {
        let major = tool_major(name)
            .await
            .map_err(|e| e.with_hint(install_hint(Some(server))))?;
        if major < server {
            return Err(BackupError::new(format!(
                "{name} is version {}, older than the server (PostgreSQL {}); it cannot dump a newer server",
                show_major(major),
                show_major(server)
            ))
            .with_hint(install_hint(Some(server))));
        }
    }
    Ok(())
}

/// Ties a tool's life to phased's: on Linux the kernel sends it SIGTERM when phased dies, even
/// by SIGKILL (`prctl(PR_SET_PDEATHSIG)`), and pg_dump/pg_restore answer SIGTERM by cancelling
/// their query on the server and exiting, so a killed restore's transaction is rolled back
/// instead of committing behind the rerun's back. `kill_on_drop` covers the paths where phased
/// itself ends the wait. The signal follows the thread that started the child: the runtime's
/// threads, which live as long as phased.
fn tie_to_phased(cmd: &mut Command) -> &mut Command {
    #[cfg(target_os = "linux")]
    {
        let parent = std::process::id();
        // SAFETY: between fork and exec only async-signal-safe calls are made (prctl, getppid).
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGTERM as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                // phased died before the prctl took effect: nobody would send the signal.
                if libc::getppid() as u32 != parent {
                    return Err(std::io::Error::other(
                        "phased ended before the tool started",
                    ));
                }
                Ok(())
            });
        }
    }
    cmd.kill_on_drop(true)
}

/// Collects a child's stderr while it runs.
fn collect_stderr(child: &mut tokio::process::Child) -> tokio::task::JoinHandle<String> {
    let stderr = child.stderr.take();
    tokio::spawn(async move {
        let mut text = String::new();
        if let Some(mut s) = stderr {
            let _ = s.read_to_string(&mut text).await;
        }
        text
    })
}

/// The `pg_dump` arguments that limit a backup to `tables`.
///
/// `--table` alone would leave out everything that is not a table — among them the dual-write
/// trigger functions phased keeps in schema `phased`, which the tables' triggers need. So the
/// backup takes the schemas of the listed tables and schema `phased` whole (functions, types,
/// sequences, the state tables) and excludes every other table, view and sequence in them.
pub async fn selection(conn: &Object, tables: &[String]) -> Result<Vec<String>, BackupError> {
    if tables.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<String> = tables.iter().map(|t| ident(t)).collect();
    let missing_sql = "SELECT t FROM unnest($1::text[]) AS t WHERE to_regclass(t) IS NULL";
    let missing: Vec<String> = conn
        .query(missing_sql, &[&names])
        .await
        .map_err(|e| BackupError::from(sql_error(e, missing_sql)))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !missing.is_empty() {
        return Err(BackupError::new(format!(
            "backup.tables names {}, which this database does not have",
            missing.join(", ")
        ))
        .with_hint(
            "list existing tables in backup.tables, or remove it to back up the whole database",
        ));
    }
    let sql = "WITH listed AS (SELECT to_regclass(t)::oid AS oid FROM unnest($1::text[]) AS t), \
               schemas AS (SELECT DISTINCT c.relnamespace AS oid FROM pg_class c JOIN listed l ON c.oid = l.oid \
                           UNION SELECT oid FROM pg_namespace WHERE nspname = 'phased'), \
               owned AS (SELECT d.objid FROM pg_depend d JOIN listed l ON d.refobjid = l.oid \
                         WHERE d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')) \
               SELECT '--schema=' || quote_ident(n.nspname) FROM pg_namespace n WHERE n.oid IN (SELECT oid FROM schemas) \
               UNION ALL \
               SELECT '--exclude-table=' || quote_ident(n.nspname) || '.' || quote_ident(c.relname) \
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
               WHERE c.relnamespace IN (SELECT oid FROM schemas) AND n.nspname <> 'phased' \
                 AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') \
                 AND c.oid NOT IN (SELECT oid FROM listed) AND c.oid NOT IN (SELECT objid FROM owned)";
    Ok(conn
        .query(sql, &[&names])
        .await
        .map_err(|e| BackupError::from(sql_error(e, sql)))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Runs `pg_dump -Fc` into `file` (the whole database, or what `selection` chose), calling
/// `progress` with the file's size while it grows.
pub async fn dump(
    url: &str,
    file: &Path,
    selection: &[String],
    progress: &mut dyn FnMut(u64),
) -> Result<(), BackupError> {
    let path = tool("pg_dump");
    let mut cmd = Command::new(&path);
    tie_to_phased(&mut cmd)
        .arg("--format=custom")
        .arg("--no-password")
        .arg(format!("--file={}", file.display()))
        .args(selection);
    cmd.envs(libpq_env(url)?)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        BackupError::new(format!("cannot start `{}`: {e}", path.display()))
            .with_hint(install_hint(None))
    })?;
    let stderr = collect_stderr(&mut child);
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if let Ok(meta) = tokio::fs::metadata(file).await {
                    progress(meta.len());
                }
            }
        }
    }
    .map_err(|e| BackupError::new(format!("pg_dump did not finish: {e}")))?;
    let stderr = stderr.await.unwrap_or_default();
    if !status.success() {
        return Err(BackupError::new(format!(
            "pg_dump failed ({status}): {}",
            stderr.trim()
        ))
        .with_hint(
            "check that the database is reachable with these credentials and that the backup folder has room",
        ));
    }
    if let Ok(meta) = tokio::fs::metadata(file).await {
        progress(meta.len());
    }
    Ok(())
}

/// The archive's table of contents (`pg_restore --list`): proof that the file is a complete,
/// readable custom-format archive.
pub async fn list(file: &Path) -> Result<String, BackupError> {
    let path = tool("pg_restore");
    let output = tie_to_phased(&mut Command::new(&path))
        .arg("--list")
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| {
            BackupError::new(format!("cannot start `{}`: {e}", path.display()))
                .with_hint(install_hint(None))
        })?;
    if !output.status.success() {
        return Err(BackupError::new(format!(
            "the backup {} does not read back: pg_restore --list failed: {}",
            file.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The schemas a restore needs that the archive does not create itself (a dump of selected
/// tables carries no `CREATE SCHEMA`).
pub(crate) fn schemas_to_create(toc: &str) -> Vec<String> {
    let mut created = Vec::new();
    let mut needed = Vec::new();
    for line in toc.lines() {
        if line.starts_with(';') {
            continue;
        }
        let Some((_, entry)) = line.split_once(';') else {
            continue;
        };
        let words: Vec<&str> = entry.split_whitespace().collect();
        // `<catalog oid> <oid> TYPE schema name owner`
        match words.get(2..5) {
            Some(["SCHEMA", "-", name]) => created.push(name.to_string()),
            Some(["TABLE", schema, _]) if *schema != "DATA" => needed.push(schema.to_string()),
            _ => {}
        }
    }
    let mut out: Vec<String> = Vec::new();
    for schema in needed {
        if !created.contains(&schema) && !out.contains(&schema) {
            out.push(schema);
        }
    }
    out
}

/// The archive's table of contents without the `SCHEMA` entries of schemas that exist.
pub(crate) fn keep_existing_schemas(toc: &str, existing: &[String]) -> String {
    toc.lines()
        .filter(|line| {
            let words: Vec<&str> = line
                .split_once(';')
                .map(|(_, e)| e.split_whitespace().collect())
                .unwrap_or_default();
            !(line.chars().next().is_some_and(|c| c.is_ascii_digit())
                && matches!(words.get(2..5), Some(["SCHEMA", "-", name]) if existing.iter().any(|e| e == name)))
        })
        .map(|line| format!("{line}\n"))
        .collect()
}

/// The list `pg_restore --use-list` reads, in a file that has no name by the time pg_restore
/// runs: created in the temporary folder, written, unlinked at once, and handed to pg_restore as
/// `/dev/fd/N` (the descriptor is inherited). Nothing is left on disk whatever ends phased, a
/// kill -9 included; the backup's folder need not be writable.
#[cfg(unix)]
struct RestoreList {
    file: std::fs::File,
}

#[cfg(unix)]
impl RestoreList {
    fn new(content: &str) -> Result<Self, BackupError> {
        use std::io::{Seek, Write};
        use std::os::unix::fs::OpenOptionsExt;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            ".phased-restore-{}-{stamp}.list",
            std::process::id()
        ));
        let fail = |e: std::io::Error| {
            BackupError::new(format!(
                "cannot write the restore list in {}: {e}",
                std::env::temp_dir().display()
            ))
            .with_hint("make the temporary folder (TMPDIR) writable")
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(fail)?;
        let _ = std::fs::remove_file(&path);
        file.write_all(content.as_bytes()).map_err(fail)?;
        file.flush().map_err(fail)?;
        file.rewind().map_err(fail)?;
        Ok(Self { file })
    }

    /// The `--use-list` argument, and the descriptor the child must inherit.
    fn pass_to(&self, cmd: &mut Command) -> String {
        use std::os::fd::AsRawFd;
        let fd = self.file.as_raw_fd();
        // SAFETY: fcntl is async-signal-safe; it clears close-on-exec in the child only.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        format!("--use-list=/dev/fd/{fd}")
    }
}

/// Elsewhere: a file beside the backup, deleted when dropped.
#[cfg(not(unix))]
struct RestoreList {
    path: PathBuf,
}

#[cfg(not(unix))]
impl RestoreList {
    fn new_beside(file: &Path, content: &str) -> Result<Self, BackupError> {
        let mut beside = file.as_os_str().to_os_string();
        beside.push(".restore-list");
        let path = PathBuf::from(beside);
        std::fs::write(&path, content).map_err(|e| {
            BackupError::new(format!(
                "cannot write the restore list {}: {e}",
                path.display()
            ))
        })?;
        Ok(Self { path })
    }

    fn pass_to(&self, _cmd: &mut Command) -> String {
        format!("--use-list={}", self.path.display())
    }
}

#[cfg(not(unix))]
impl Drop for RestoreList {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn connect(
    config: &Config,
    tls: &MakeRustlsConnect,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(tls.clone()).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreOutcome {
    /// The database did not exist and was created.
    pub created: bool,
}

/// Restores `file` into the database at `url`, creating the database when it does not exist.
/// Objects in the archive are dropped and recreated (`--clean --if-exists`) in one transaction,
/// so a failed restore leaves the database as it was.
pub async fn restore(url: &str, file: &Path) -> Result<RestoreOutcome, BackupError> {
    let toc = list(file).await?;
    let shown = redact(url);
    let (mut config, tls) = read_url(url)?;
    let tls = tls
        .connector()
        .map_err(|e| BackupError::new(format!("cannot connect to {shown}: {e}")))?;
    config.application_name("phased/restore");
    config.connect_timeout(Duration::from_secs(10));
    let name = dbname(url)?;
    let mut created = false;
    let client = match connect(&config, &tls).await {
        Ok(client) => client,
        Err(e) if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => {
            let mut admin = config.clone();
            admin.dbname("postgres");
            let client = connect(&admin, &tls).await.map_err(|e| {
                BackupError::new(format!(
                    "database `{name}` does not exist and phased cannot reach the `postgres` database to create it: {e}"
                ))
            })?;
            let sql = format!("CREATE DATABASE {}", ident(&name));
            client
                .batch_execute(&sql)
                .await
                .map_err(|e| BackupError::from(sql_error(e, &sql)))?;
            created = true;
            tracing::info!(database = %name, "created the database to restore into");
            connect(&config, &tls).await.map_err(|e| {
                BackupError::new(format!("cannot connect to {shown} after creating it: {e}"))
            })?
        }
        Err(e) => {
            return Err(BackupError::new(format!("cannot connect to {shown}: {e}")));
        }
    };
    for schema in schemas_to_create(&toc) {
        let sql = format!("CREATE SCHEMA IF NOT EXISTS {}", ident(&schema));
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| BackupError::from(sql_error(e, &sql)))?;
    }
    let sql = "SELECT nspname::text FROM pg_namespace";
    let existing: Vec<String> = client
        .query(sql, &[])
        .await
        .map_err(|e| BackupError::from(sql_error(e, sql)))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    drop(client);
    // `--clean` would drop and recreate every schema in the archive, and dropping one fails as
    // soon as it holds anything the backup does not (a table created since, or left out by
    // backup.tables). Schemas that exist are kept; only the archive's objects are replaced.
    let listed = keep_existing_schemas(&toc, &existing);
    #[cfg(unix)]
    let list_file = RestoreList::new(&listed)?;
    #[cfg(not(unix))]
    let list_file = RestoreList::new_beside(file, &listed)?;

    let path = tool("pg_restore");
    let mut cmd = Command::new(&path);
    let use_list = list_file.pass_to(&mut cmd);
    tie_to_phased(&mut cmd)
        .arg("--clean")
        .arg("--if-exists")
        .arg("--single-transaction")
        .arg("--no-password")
        .arg(format!("--dbname={}", dbname_conninfo(&name)))
        .arg(use_list)
        .arg(file)
        .envs(libpq_env(url)?)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        BackupError::new(format!("cannot start `{}`: {e}", path.display()))
            .with_hint(install_hint(None))
    })?;
    let stderr = collect_stderr(&mut child);
    let status = child
        .wait()
        .await
        .map_err(|e| BackupError::new(format!("pg_restore did not finish: {e}")))?;
    let stderr = stderr.await.unwrap_or_default();
    drop(list_file);
    if !status.success() {
        return Err(BackupError::new(format!(
            "pg_restore failed ({status}); the database was left as it was: {}",
            stderr.trim()
        )));
    }
    Ok(RestoreOutcome { created })
}

pub async fn record(conn: &Object, b: &BackupRecord) -> Result<i64, DbError> {
    let sql = "INSERT INTO phased.backups (plan, phase, path, size_bytes, sha256, duration_ms, verified, created_at) \
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::timestamptz) RETURNING id";
    let row = conn
        .query_one(
            sql,
            &[
                &b.plan,
                &b.phase,
                &b.path,
                &b.size_bytes,
                &b.sha256,
                &b.duration_ms,
                &b.verified,
                &b.created_at,
            ],
        )
        .await
        .map_err(|e| sql_error(e, sql))?;
    Ok(row.get(0))
}

pub async fn backups(conn: &Object, plan: Option<&str>) -> Result<Vec<BackupRecord>, DbError> {
    if !super::state::relation_exists_on(conn, "phased.backups").await? {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT id, plan, phase, path, size_bytes, sha256, duration_ms, verified, \
         to_char(created_at AT TIME ZONE 'UTC', '{TS}') \
         FROM phased.backups WHERE $1::text IS NULL OR plan = $1 ORDER BY created_at DESC, id DESC"
    );
    let rows = conn
        .query(&sql, &[&plan])
        .await
        .map_err(|e| sql_error(e, &sql))?;
    Ok(rows
        .iter()
        .map(|r| BackupRecord {
            id: r.get(0),
            plan: r.get(1),
            phase: r.get(2),
            path: r.get(3),
            size_bytes: r.get(4),
            sha256: r.get(5),
            duration_ms: r.get(6),
            verified: r.get(7),
            created_at: r.get(8),
        })
        .collect())
}

pub async fn forget(conn: &Object, id: i64) -> Result<(), DbError> {
    let sql = "DELETE FROM phased.backups WHERE id = $1";
    conn.execute(sql, &[&id])
        .await
        .map_err(|e| sql_error(e, sql))?;
    Ok(())
}

pub async fn record_restore(conn: &Object, note: &RestoreNote) -> Result<(), DbError> {
    let value = serde_json::to_string(note).map_err(|e| DbError::Unexpected(e.to_string()))?;
    let sql = "INSERT INTO phased.meta (key, value) VALUES ($1, $2) \
               ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value";
    conn.execute(sql, &[&RESTORE_NOTE_KEY, &value])
        .await
        .map_err(|e| sql_error(e, sql))?;
    Ok(())
}

pub async fn last_restore(conn: &Object) -> Result<Option<RestoreNote>, DbError> {
    if !super::state::relation_exists_on(conn, "phased.meta").await? {
        return Ok(None);
    }
    let sql = "SELECT value FROM phased.meta WHERE key = $1";
    let row = conn
        .query_opt(sql, &[&RESTORE_NOTE_KEY])
        .await
        .map_err(|e| sql_error(e, sql))?;
    Ok(row.and_then(|r| serde_json::from_str(&r.get::<_, String>(0)).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_goes_to_the_environment_only() {
        let env = libpq_env("postgres://app:s3cret@db.example:6543/prod?sslmode=disable").unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("PGHOST"), Some("db.example"));
        assert_eq!(get("PGPORT"), Some("6543"));
        assert_eq!(get("PGUSER"), Some("app"));
        assert_eq!(get("PGDATABASE"), Some("prod"));
        assert_eq!(get("PGPASSWORD"), Some("s3cret"));
        assert_eq!(get("PGSSLMODE"), Some("disable"));
        let verified = libpq_env(
            "postgres://app@db.example/prod?hostaddr=10.0.0.7&sslmode=verify-full&sslrootcert=/ca.pem",
        )
        .unwrap();
        let get = |k: &str| {
            verified
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("PGHOST"), Some("db.example"));
        assert_eq!(get("PGHOSTADDR"), Some("10.0.0.7"));
        assert_eq!(get("PGSSLMODE"), Some("verify-full"));
        assert_eq!(get("PGSSLROOTCERT"), Some("/ca.pem"));
        let without = libpq_env("postgres://app@db/prod").unwrap();
        assert!(without.iter().all(|(k, _)| *k != "PGPASSWORD"));
    }

    #[test]
    fn reads_tool_and_server_versions() {
        assert_eq!(
            parse_tool_major("pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)\n"),
            Some(1500)
        );
        assert_eq!(parse_tool_major("pg_dump (PostgreSQL) 9.6.24"), Some(906));
        assert_eq!(parse_tool_major("pg_dump (PostgreSQL) 17devel"), Some(1700));
        assert_eq!(parse_tool_major("nonsense"), None);
        assert_eq!(server_major(150020), 1500);
        assert_eq!(server_major(90624), 906);
        assert!(parse_tool_major("pg_dump (PostgreSQL) 9.6.24").unwrap() < server_major(150020));
        assert!(parse_tool_major("pg_dump (PostgreSQL) 16.1").unwrap() > server_major(150020));
        assert_eq!(show_major(906), "9.6");
        assert_eq!(show_major(1500), "15");
    }

    #[test]
    fn finds_schemas_a_table_dump_does_not_create() {
        let toc = ";\n; Archive created at 2026-01-01\n;\n\
                   215; 1259 16390 TABLE public accounts postgres\n\
                   216; 1259 16391 TABLE phased steps postgres\n\
                   3340; 0 16390 TABLE DATA public accounts postgres\n";
        assert_eq!(schemas_to_create(toc), vec!["public", "phased"]);
        let full =
            "5; 2615 16385 SCHEMA - phased postgres\n216; 1259 16391 TABLE phased steps postgres\n";
        assert!(schemas_to_create(full).is_empty());
    }

    #[test]
    fn keeps_schemas_that_exist() {
        let toc = ";\n; comment\n6; 2615 28983 SCHEMA - phased postgres\n4; 2615 2200 SCHEMA - public pg_database_owner\n\
                   3413; 0 0 COMMENT - SCHEMA public pg_database_owner\n224; 1259 29035 TABLE public accounts postgres\n";
        let kept = keep_existing_schemas(toc, &["public".to_string()]);
        assert!(!kept.contains("SCHEMA - public"), "{kept}");
        assert!(kept.contains("SCHEMA - phased"), "{kept}");
        assert!(kept.contains("COMMENT - SCHEMA public"), "{kept}");
        assert!(kept.contains("TABLE public accounts"), "{kept}");
    }

    #[test]
    fn conninfo_quotes_the_name() {
        assert_eq!(dbname_conninfo("a'b"), "dbname='a\\'b'");
    }
}
