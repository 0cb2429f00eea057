//! Test harness: a fresh PostgreSQL database per test (dropped afterwards), a fresh SQLite file
//! per test, plans from YAML text, and runs that record their events.
#![allow(dead_code)]
pub mod pg_capture;
pub mod two_apps;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use phased::cli::config::AnyTarget;
use phased::db::postgres::PgTarget;
use phased::db::sqlite::SqliteTarget;
use phased::engine::events::Recorder;
use phased::engine::{EngineError, Event, RunOptions};
use phased::plan::LoadedPlan;

/// The server tests create their databases on: `PHASED_TEST_PG_URL`, else `DATABASE_URL`, else
/// the local default. Tests that need it fail (never skip) when it cannot be reached.
pub fn pg_admin_url() -> String {
    std::env::var("PHASED_TEST_PG_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .ok()
        .filter(|u| u.starts_with("postgres"))
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
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

/// A plain session on `url`, with the URL's TLS settings (`sslmode`, `sslrootcert`) as phased
/// reads them.
pub async fn pg_connect(url: &str) -> Result<tokio_postgres::Client, String> {
    use phased::db::postgres::tls;
    let (config, tls) = tls::parse(url)?;
    let (client, connection) = config
        .connect(tls.connector()?)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok(client)
}

async fn admin_client() -> tokio_postgres::Client {
    let url = pg_admin_url();
    match pg_connect(&url).await {
        Ok(client) => client,
        Err(e) => panic!(
            "PostgreSQL is not reachable at {} ({e}).\n\
             These tests need a real server: run `scripts/test`, which starts one, \
             or set PHASED_TEST_PG_URL=postgres://user@host/db.",
            phased::db::url::redact(&url)
        ),
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs one scenario `async fn name(db: TestDb)` as two tests: on PostgreSQL and on SQLite.
macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(crate::common::TestDb::pg().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(crate::common::TestDb::sqlite()).await;
            }
        }
    };
}
pub(crate) use on_both;

/// The PostgreSQL database of a test that needs one.
pub fn pg(db: &TestDb) -> &PgDb {
    match db {
        TestDb::Pg(db) => db,
        TestDb::Sqlite(_) => panic!("a PostgreSQL test database was expected"),
    }
}

/// The backend pid of an application session.
pub async fn backend_pid(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pg_backend_pid")
        .get(0)
}

/// A PostgreSQL database created for one test and dropped when it ends.
pub struct PgDb {
    pub name: String,
    pub url: String,
}

impl PgDb {
    pub async fn new() -> Self {
        let name = format!(
            "phased_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst),
            rand_suffix()
        );
        let admin = admin_client().await;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        let url = with_database(&pg_admin_url(), &name);
        Self { name, url }
    }

    /// A plain client, standing in for an application session.
    pub async fn client(&self) -> tokio_postgres::Client {
        pg_connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("connect to the test database: {e}"))
    }

    pub async fn target(&self, plan: &str) -> PgTarget {
        PgTarget::connect(&self.url, &format!("phased/{plan}"))
            .await
            .expect("connect phased to the test database")
    }
}

fn rand_suffix() -> u32 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime: use a thread with its own.
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let admin = admin_client().await;
                let _ = admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await;
            });
        });
        let _ = handle.join();
    }
}

/// An SQLite database file in its own temporary folder.
pub struct SqliteDb {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl SqliteDb {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("test.db");
        Self { dir, path }
    }

    pub fn url(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }

    pub fn target(&self) -> SqliteTarget {
        SqliteTarget::open(&self.path).expect("open sqlite")
    }

    /// A separate connection, standing in for an application session.
    pub fn conn(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(&self.path).expect("open sqlite")
    }
}

/// Either kind of test database, so one scenario can run on both.
pub enum TestDb {
    Pg(PgDb),
    Sqlite(SqliteDb),
}

impl TestDb {
    pub async fn pg() -> Self {
        TestDb::Pg(PgDb::new().await)
    }

    pub fn sqlite() -> Self {
        TestDb::Sqlite(SqliteDb::new())
    }

    pub fn url(&self) -> String {
        match self {
            TestDb::Pg(db) => db.url.clone(),
            TestDb::Sqlite(db) => db.url(),
        }
    }

    pub fn is_pg(&self) -> bool {
        matches!(self, TestDb::Pg(_))
    }

    pub async fn target(&self, plan: &str) -> AnyTarget {
        match self {
            TestDb::Pg(db) => AnyTarget::Postgres(Box::new(db.target(plan).await)),
            TestDb::Sqlite(db) => AnyTarget::Sqlite(Box::new(db.target())),
        }
    }

    /// Runs SQL on a separate session.
    pub async fn execute(&self, sql: &str) {
        match self {
            TestDb::Pg(db) => db
                .client()
                .await
                .batch_execute(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
            TestDb::Sqlite(db) => db
                .conn()
                .execute_batch(sql)
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
        }
    }

    /// One integer from a query (counts, flags of existence).
    pub async fn scalar(&self, sql: &str) -> i64 {
        match self {
            TestDb::Pg(db) => {
                let row = db
                    .client()
                    .await
                    .query_one(sql, &[])
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                row.get::<_, i64>(0)
            }
            TestDb::Sqlite(db) => db
                .conn()
                .query_row(sql, [], |r| r.get(0))
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
        }
    }

    /// One text value from a query (None for NULL or no row).
    pub async fn text(&self, sql: &str) -> Option<String> {
        match self {
            TestDb::Pg(db) => db
                .client()
                .await
                .query_opt(sql, &[])
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .and_then(|r| r.get::<_, Option<String>>(0)),
            TestDb::Sqlite(db) => {
                use rusqlite::OptionalExtension;
                db.conn()
                    .query_row(sql, [], |r| r.get::<_, Option<String>>(0))
                    .optional()
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
                    .flatten()
            }
        }
    }

    /// Does the table have this column?
    pub async fn has_column(&self, table: &str, column: &str) -> bool {
        let sql = match self {
            TestDb::Pg(_) => format!(
                "SELECT count(*) FROM information_schema.columns WHERE table_name = '{table}' AND column_name = '{column}'"
            ),
            TestDb::Sqlite(_) => {
                format!("SELECT count(*) FROM pragma_table_info('{table}') WHERE name = '{column}'")
            }
        };
        self.scalar(&sql).await > 0
    }

    /// Does this table exist?
    pub async fn has_table(&self, table: &str) -> bool {
        let sql = match self {
            TestDb::Pg(_) => {
                format!("SELECT count(*) FROM pg_class WHERE relname = '{table}' AND relkind = 'r'")
            }
            TestDb::Sqlite(_) => {
                format!(
                    "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = '{table}'"
                )
            }
        };
        self.scalar(&sql).await > 0
    }

    /// Does this index exist?
    pub async fn has_index(&self, index: &str) -> bool {
        let sql = match self {
            TestDb::Pg(_) => {
                format!("SELECT count(*) FROM pg_class WHERE relname = '{index}' AND relkind = 'i'")
            }
            TestDb::Sqlite(_) => {
                format!(
                    "SELECT count(*) FROM sqlite_schema WHERE type = 'index' AND name = '{index}'"
                )
            }
        };
        self.scalar(&sql).await > 0
    }
}

/// A plan from YAML text; relative files resolve against `base` (or the current folder).
/// Relative paths in it (a backup folder, SQL files) resolve in a folder of its own under
/// Cargo's scratch space for tests, never in the repository.
pub fn plan(yaml: &str) -> LoadedPlan {
    plan_in(yaml, &scratch_dir())
}

/// A new, empty folder under `CARGO_TARGET_TMPDIR` (Cargo's place for integration tests' files).
pub fn scratch_dir() -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "plan-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("a scratch folder for the test plan");
    dir
}

pub fn plan_in(yaml: &str, base: &Path) -> LoadedPlan {
    match phased::plan::parse_str("test.yaml", yaml, base) {
        Ok(p) => p,
        Err(report) => panic!("test plan is invalid:\n{}", report.render_plain()),
    }
}

/// Runs a plan against a test database, returning the events or the error.
pub async fn run(
    db: &TestDb,
    loaded: &LoadedPlan,
    options: RunOptions,
) -> Result<Vec<Event>, (EngineError, Vec<Event>)> {
    let mut target = db.target(loaded.plan.id()).await;
    let mut recorder = Recorder::default();
    let result = phased::with_target!(&mut target, t => phased::engine::run(t, loaded, &options, &mut recorder).await);
    match result {
        Ok(()) => Ok(recorder.0),
        Err(e) => Err((e, recorder.0)),
    }
}

/// Runs the whole plan and panics on failure.
pub async fn run_ok(db: &TestDb, loaded: &LoadedPlan) -> Vec<Event> {
    match run(db, loaded, RunOptions::default()).await {
        Ok(events) => events,
        Err((e, _)) => panic!("run failed: {e}"),
    }
}

/// The path of the built `phased` binary, for CLI tests.
pub fn phased_cmd() -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("phased").expect("phased binary");
    cmd.env_remove("DATABASE_URL").env("NO_COLOR", "1");
    cmd
}

/// Runs `phased run PLAN --database URL` as its own process (a rerun after an interruption)
/// and asserts it succeeded, showing its stderr when not.
pub fn rerun_succeeds(plan: &Path, url: &str) {
    let rerun = phased_cmd()
        .arg("run")
        .arg(plan)
        .args(["--database", url])
        .output()
        .expect("phased run");
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
}

/// The repository root (for example plans).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A folder of stand-ins for the PostgreSQL tools, put first on PATH.
pub struct Shims {
    pub dir: tempfile::TempDir,
}

impl Shims {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn add(&self, name: &str, script: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{script}")).expect("write shim");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    /// PATH with the shims first.
    pub fn path(&self) -> String {
        format!(
            "{}:{}",
            self.dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }
}

pub fn real_tool(name: &str) -> String {
    let out = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .expect("sh");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!path.is_empty(), "{name} must be installed for these tests");
    path
}

/// Starts `phased run PLAN --database URL EXTRA…` as a process of its own, its stderr gathered
/// line by line (for waits on what it printed): the child and what it printed so far.
pub fn spawn_run(
    plan: &Path,
    url: &str,
    extra: &[&str],
) -> (
    std::process::Child,
    std::sync::Arc<std::sync::Mutex<String>>,
) {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("phased"))
        .arg("run")
        .arg(plan)
        .args(["--database", url])
        .args(extra)
        .env_remove("DATABASE_URL")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start phased run");
    let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let pipe = child.stderr.take().expect("stderr");
    let sink = std::sync::Arc::clone(&stderr);
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if let Ok(mut text) = sink.lock() {
                text.push_str(&line);
                text.push('\n');
            }
        }
    });
    (child, stderr)
}
