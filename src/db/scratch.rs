//! Scratch databases for `phased verify`: a copy of a database's schema without its data, always
//! removed afterwards. PostgreSQL: a new database on the same server, filled by
//! `pg_dump --schema-only | psql` (a TEMPLATE copy would need the source to have no other
//! connections). SQLite: a temporary file holding the `CREATE` statements of `sqlite_schema`.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use super::url::redact;
use super::{DatabaseUrl, DbError};

/// A scratch database; call [`Scratch::remove`] when done (also on failure).
#[derive(Debug)]
pub enum Scratch {
    Postgres {
        /// The source's URL, used to drop the scratch database.
        source: String,
        name: String,
        url: String,
    },
    Sqlite {
        path: PathBuf,
    },
}

fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}_{nanos}", std::process::id())
}

/// Replaces the database name in a PostgreSQL URL.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    format!("{base}/{db}{query}")
}

/// The URL without its password, and the password: programs get it through `PGPASSWORD`, so it
/// never shows in a process list.
fn split_password(url: &str) -> (String, Option<String>) {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return (url.to_string(), None);
    };
    let rest = &url[scheme_end..];
    let Some(at) = rest.find('@') else {
        return (url.to_string(), None);
    };
    let userinfo = &rest[..at];
    match userinfo.split_once(':') {
        Some((user, password)) => (
            format!("{}{user}{}", &url[..scheme_end], &rest[at..]),
            Some(password.to_string()),
        ),
        None => (url.to_string(), None),
    }
}

async fn admin(url: &str) -> Result<tokio_postgres::Client, DbError> {
    let connect_error = |message: String| DbError::Connect {
        target: redact(url),
        message,
    };
    let (config, tls) = super::postgres::tls::parse(url).map_err(connect_error)?;
    let (client, connection) = config
        .connect(tls.connector().map_err(connect_error)?)
        .await
        .map_err(|e| DbError::Connect {
            target: redact(url),
            message: e.to_string(),
        })?;
    tokio::spawn(connection);
    Ok(client)
}

impl Scratch {
    /// Creates a scratch database holding `source`'s schema (phased's state tables left out).
    pub async fn create(source: &DatabaseUrl) -> Result<Scratch, DbError> {
        match source {
            DatabaseUrl::Postgres(url) => {
                let name = format!("phased_verify_{}", unique_suffix());
                let client = admin(url).await?;
                let create = format!("CREATE DATABASE {}", crate::ops::name::ident(&name));
                client
                    .batch_execute(&create)
                    .await
                    .map_err(|e| super::postgres::sql_error(e, &create))?;
                let scratch = Scratch::Postgres {
                    source: url.clone(),
                    name: name.clone(),
                    url: with_database(url, &name),
                };
                if let Err(e) = copy_pg_schema(url, &with_database(url, &name)).await {
                    scratch.remove().await;
                    return Err(e);
                }
                Ok(scratch)
            }
            DatabaseUrl::Sqlite(path) => {
                let scratch_path =
                    std::env::temp_dir().join(format!("phased_verify_{}.db", unique_suffix()));
                let scratch = Scratch::Sqlite {
                    path: scratch_path.clone(),
                };
                if let Err(e) = copy_sqlite_schema(path, &scratch_path) {
                    scratch.remove().await;
                    return Err(e);
                }
                Ok(scratch)
            }
        }
    }

    /// The scratch database's URL.
    pub fn url(&self) -> DatabaseUrl {
        match self {
            Scratch::Postgres { url, .. } => DatabaseUrl::Postgres(url.clone()),
            Scratch::Sqlite { path } => DatabaseUrl::Sqlite(path.clone()),
        }
    }

    /// What it is, for people (no password).
    pub fn describe(&self) -> String {
        self.url().redacted()
    }

    /// Removes the scratch database. Failures are logged: there is nothing more to do about them.
    pub async fn remove(&self) {
        match self {
            Scratch::Postgres { source, name, .. } => {
                let drop = format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    crate::ops::name::ident(name)
                );
                match admin(source).await {
                    Ok(client) => {
                        if let Err(e) = client.batch_execute(&drop).await {
                            tracing::warn!("could not drop the scratch database {name}: {e}");
                        }
                    }
                    Err(e) => tracing::warn!("could not drop the scratch database {name}: {e}"),
                }
            }
            Scratch::Sqlite { path } => {
                for suffix in ["", "-journal", "-wal", "-shm"] {
                    let mut file = path.clone().into_os_string();
                    file.push(suffix);
                    let _ = std::fs::remove_file(PathBuf::from(file));
                }
            }
        }
    }
}

/// `pg_dump --schema-only` of the source, fed to `psql` on the scratch database.
async fn copy_pg_schema(source: &str, scratch: &str) -> Result<(), DbError> {
    let failed = |what: String| DbError::Unexpected(format!("copying the schema: {what}"));
    let (source_url, source_password) = split_password(source);
    let mut dump = tokio::process::Command::new("pg_dump");
    dump.args([
        "--schema-only",
        "--no-owner",
        "--no-privileges",
        "--exclude-table=phased.*",
        "--dbname",
        &source_url,
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    if let Some(p) = &source_password {
        dump.env("PGPASSWORD", p);
    }
    let output = dump
        .output()
        .await
        .map_err(|e| failed(format!("cannot start pg_dump: {e}")))?;
    if !output.status.success() {
        return Err(failed(format!(
            "pg_dump exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let (scratch_url, scratch_password) = split_password(scratch);
    let mut psql = tokio::process::Command::new("psql");
    psql.args([
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "--dbname",
        &scratch_url,
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    if let Some(p) = &scratch_password {
        psql.env("PGPASSWORD", p);
    }
    let mut child = psql
        .spawn()
        .map_err(|e| failed(format!("cannot start psql: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(&output.stdout)
            .await
            .map_err(|e| failed(format!("writing to psql: {e}")))?;
    }
    let result = child
        .wait_with_output()
        .await
        .map_err(|e| failed(format!("psql failed: {e}")))?;
    if !result.status.success() {
        return Err(failed(format!(
            "psql exited with {}: {}",
            result.status,
            String::from_utf8_lossy(&result.stderr).trim()
        )));
    }
    Ok(())
}

/// The `CREATE` statements of the source's tables, then of its indexes, triggers and views.
fn copy_sqlite_schema(source: &std::path::Path, scratch: &std::path::Path) -> Result<(), DbError> {
    use rusqlite::OpenFlags;
    let open_error = |path: &std::path::Path, e: rusqlite::Error| DbError::Connect {
        target: format!("sqlite://{}", path.display()),
        message: e.to_string(),
    };
    let statements: Vec<String> = if source.exists() {
        let conn = rusqlite::Connection::open_with_flags(
            source,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(|e| open_error(source, e))?;
        let sql = "SELECT sql FROM sqlite_schema WHERE sql IS NOT NULL \
                   AND name NOT LIKE 'phased\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
                   ORDER BY CASE type WHEN 'table' THEN 0 WHEN 'index' THEN 1 WHEN 'view' THEN 2 ELSE 3 END, rowid";
        let mut stmt = conn
            .prepare(sql)
            .map_err(|e| super::sqlite::sql_error(e, sql))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| super::sqlite::sql_error(e, sql))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| super::sqlite::sql_error(e, sql))?;
        rows
    } else {
        Vec::new()
    };
    let conn = rusqlite::Connection::open(scratch).map_err(|e| open_error(scratch, e))?;
    for sql in &statements {
        conn.execute_batch(sql)
            .map_err(|e| super::sqlite::sql_error(e, sql))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_go_to_the_environment() {
        assert_eq!(
            split_password("postgres://u:secret@h:5432/db?x=1"),
            (
                "postgres://u@h:5432/db?x=1".to_string(),
                Some("secret".to_string())
            )
        );
        assert_eq!(
            split_password("postgres://u@h/db"),
            ("postgres://u@h/db".to_string(), None)
        );
        assert_eq!(
            with_database("postgres://u@h/db?x=1", "other"),
            "postgres://u@h/other?x=1"
        );
    }
}
