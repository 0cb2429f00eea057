//! Scratch databases for `phased verify`: a copy of a database's schema without its data, always
//! removed afterwards. PostgreSQL: a new database on the same server, filled by
//! `pg_dump --schema-only | psql` (a TEMPLATE copy would need the source to have no other
//! connections). SQLite: a temporary file holding the `CREATE` statements of `sqlite_schema`
//! (which a run's rehearsal also copies, into memory: `Catalog::schema_copy`).

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

/// A PostgreSQL client program connecting to `url` through the libpq environment (`PGHOST`,
/// `PGUSER`, `PGDATABASE`, `PGPASSWORD`, `PGSSLMODE`…, read from the URL as phased reads it, so
/// percent-encoded and `?password=` passwords arrive decoded): the URL, and with it any password,
/// never reaches the command line, where `ps` shows it to every user of the machine.
fn pg_tool(program: &str, url: &str) -> Result<tokio::process::Command, DbError> {
    let env = super::postgres::backup::libpq_env(url)
        .map_err(|e| DbError::Unexpected(format!("copying the schema: {}", e.message)))?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.arg("--no-password")
        .envs(env)
        .env("PGAPPNAME", "phased/verify")
        .kill_on_drop(true);
    Ok(cmd)
}

/// `pg_dump --schema-only` of the source, phased's state left out.
fn pg_dump_command(source: &str) -> Result<tokio::process::Command, DbError> {
    let mut dump = pg_tool("pg_dump", source)?;
    dump.args([
        "--schema-only",
        "--no-owner",
        "--no-privileges",
        "--exclude-table=phased.*",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    Ok(dump)
}

/// `psql` on the scratch database, reading SQL from its stdin and stopping at the first error.
fn psql_command(scratch: &str) -> Result<tokio::process::Command, DbError> {
    let mut psql = pg_tool("psql", scratch)?;
    psql.args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    Ok(psql)
}

/// `pg_dump --schema-only` of the source, fed to `psql` on the scratch database.
async fn copy_pg_schema(source: &str, scratch: &str) -> Result<(), DbError> {
    let failed = |what: String| DbError::Unexpected(format!("copying the schema: {what}"));
    let output = pg_dump_command(source)?
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
    let mut child = psql_command(scratch)?
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
        sqlite_schema_statements(&conn)?
    } else {
        Vec::new()
    };
    let conn = rusqlite::Connection::open(scratch).map_err(|e| open_error(scratch, e))?;
    sqlite_create_schema(&conn, &statements)
}

/// The `CREATE` statements of an SQLite database's tables, then of its indexes, views and
/// triggers, in the order that makes them again; phased's state and SQLite's own tables left
/// out. Only reads.
pub(crate) fn sqlite_schema_statements(
    conn: &rusqlite::Connection,
) -> Result<Vec<String>, DbError> {
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
    Ok(rows)
}

/// Runs `statements` ([`sqlite_schema_statements`] of another database) on `conn`.
pub(crate) fn sqlite_create_schema(
    conn: &rusqlite::Connection,
    statements: &[String],
) -> Result<(), DbError> {
    for sql in statements {
        conn.execute_batch(sql)
            .map_err(|e| super::sqlite::sql_error(e, sql))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The password (percent-encoded in the URL's user part, or in `?password=`) reaches the
    /// programs decoded, through their environment; no argument holds it, or the URL.
    #[test]
    fn passwords_go_to_the_environment_never_to_argv() {
        let password = "p@ss/w%rd";
        let encoded = "p%40ss%2Fw%25rd";
        for url in [
            format!("postgres://app:{encoded}@db.example:6543/prod?sslmode=disable"),
            format!("postgres://app@db.example:6543/prod?sslmode=disable&password={encoded}"),
        ] {
            let scratch = with_database(&url, "phased_verify_1");
            for (name, cmd) in [
                ("pg_dump", pg_dump_command(&url).expect("pg_dump command")),
                ("psql", psql_command(&scratch).expect("psql command")),
            ] {
                let cmd = cmd.as_std();
                let args: Vec<String> = cmd
                    .get_args()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect();
                for arg in &args {
                    for secret in [password, encoded, "password=", "postgres://"] {
                        assert!(
                            !arg.contains(secret),
                            "{name} argument `{arg}` holds `{secret}` ({url})"
                        );
                    }
                }
                assert!(
                    args.iter().any(|a| a == "--no-password"),
                    "{name}: {args:?}"
                );
                let env: std::collections::BTreeMap<String, String> = cmd
                    .get_envs()
                    .filter_map(|(k, v)| {
                        Some((
                            k.to_string_lossy().into_owned(),
                            v?.to_string_lossy().into_owned(),
                        ))
                    })
                    .collect();
                let get = |k: &str| env.get(k).map(String::as_str);
                assert_eq!(get("PGPASSWORD"), Some(password), "{name} ({url})");
                assert_eq!(get("PGHOST"), Some("db.example"), "{name}");
                assert_eq!(get("PGPORT"), Some("6543"), "{name}");
                assert_eq!(get("PGUSER"), Some("app"), "{name}");
                assert_eq!(get("PGSSLMODE"), Some("disable"), "{name}");
                let db = if name == "pg_dump" {
                    "prod"
                } else {
                    "phased_verify_1"
                };
                assert_eq!(get("PGDATABASE"), Some(db), "{name}");
            }
        }
    }

    #[test]
    fn replaces_the_database_name() {
        assert_eq!(
            with_database("postgres://u@h/db?x=1", "other"),
            "postgres://u@h/other?x=1"
        );
    }
}
