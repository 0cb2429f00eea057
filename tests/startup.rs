//! Migrating on application startup: many replicas starting at once (the example application
//! and `phased db upgrade head --wait`), a holder killed mid-upgrade, the startup safety rule,
//! the wait's bounds, and `phased run --wait`.
//!
//! Processes that must start "at the same instant" are spawned blocked on one pipe (their
//! standard input, whose only writer is a `cat` the test controls) and released together by
//! closing it. Nothing here waits on a clock: each step waits for a line a process prints or
//! for a condition in the database.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use crate::common::{repo_root, TestDb};

#[path = "../examples/startup.rs"]
#[allow(dead_code)]
mod example;

const INITIAL: &str = "4f1c2a9b7e10";
const ORDERS: &str = "8d3e5b1a0c27";
const ORDERS_INDEX: &str = "b7a2c4e9d315";
const EMAILS: &str = "c1d9f0a6b842";
const MERGE: &str = "e5f8a3b0d694";
const EXAMPLES: [&str; 5] = [INITIAL, ORDERS, ORDERS_INDEX, EMAILS, MERGE];

/// A revision (on top of the examples) that blocks until the test lets it through.
const GATE: &str = "f00d0000a7e5";
/// The advisory lock the gate revision waits for on PostgreSQL.
const GATE_LOCK: i64 = 7_007_001;

/// Generous bound on any one wait for a process's line: a loaded machine is slow, never stuck.
const PATIENCE: Duration = Duration::from_secs(180);

/// The frozen copy of the example history (tests/fixtures/migrations), copied into a temporary
/// folder (tests never write into the repository).
fn copy_migrations() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let target = dir.path().join("migrations");
    std::fs::create_dir(&target).expect("mkdir");
    for entry in std::fs::read_dir(repo_root().join("tests/fixtures/migrations")).expect("examples")
    {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, target.join(path.file_name().expect("name"))).expect("copy");
    }
    dir
}

fn migrations(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("migrations")
}

/// Adds the gate revision: on PostgreSQL it waits for [`GATE_LOCK`], on SQLite for the write
/// lock of `gate.db` beside the folder (attached, so the main database stays free). It runs
/// outside a transaction, statement by statement, so a killed holder's session cannot finish it.
fn add_gate_revision(dir: &tempfile::TempDir) {
    let gate_db = dir.path().join("gate.db");
    let text = format!(
        "-- revision: {GATE}\n-- revises: {MERGE}\n-- message: waits at the gate\n-- transactional: false\n\n\
         -- migrate:up postgres\nSELECT pg_advisory_xact_lock_shared({GATE_LOCK});\nCREATE TABLE IF NOT EXISTS gated (id int);\n\n\
         -- migrate:up sqlite\nATTACH DATABASE '{}' AS gate;\nINSERT INTO gate.hits (n) VALUES (1);\nDETACH DATABASE gate;\nCREATE TABLE IF NOT EXISTS gated (id int);\n",
        gate_db.display()
    );
    std::fs::write(migrations(dir).join("20261201_0000_gate.sql"), text).expect("write gate");
}

/// The gate, closed: the gate revision blocks until this is dropped.
// The connections are held, not read: dropping them opens the gate.
#[allow(dead_code)]
enum Gate {
    Pg(tokio_postgres::Client),
    Sqlite(rusqlite::Connection),
}

async fn close_gate(db: &TestDb, dir: &tempfile::TempDir) -> Gate {
    match db {
        TestDb::Pg(pg) => {
            let client = pg.client().await;
            client
                .batch_execute(&format!("SELECT pg_advisory_lock({GATE_LOCK})"))
                .await
                .expect("take the gate lock");
            Gate::Pg(client)
        }
        TestDb::Sqlite(_) => {
            let conn = rusqlite::Connection::open(dir.path().join("gate.db")).expect("gate.db");
            conn.execute_batch("CREATE TABLE IF NOT EXISTS hits (n int); BEGIN EXCLUSIVE")
                .expect("lock gate.db");
            Gate::Sqlite(conn)
        }
    }
}

/// Processes released together: each gets the read end of one pipe as its standard input and
/// blocks reading it; closing the writer (a `cat` fed by the test) gives them all end-of-file
/// at once.
struct StartLine {
    cat: Child,
    read: OwnedFd,
}

impl StartLine {
    fn new() -> Self {
        let mut cat = Command::new("cat")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn cat");
        let read = cat.stdout.take().expect("cat's stdout").into();
        Self { cat, read }
    }

    fn stdin(&self) -> Stdio {
        Stdio::from(self.read.try_clone().expect("dup the start line"))
    }

    fn release(mut self) {
        drop(self.cat.stdin.take());
        self.cat.wait().expect("cat exits");
    }
}

/// `phased ARGS`, started once the start line is released.
fn phased_at(start: &StartLine, args: &[String]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("read _go; exec \"$0\" \"$@\"")
        .arg(assert_cmd::cargo::cargo_bin("phased"))
        .args(args)
        .stdin(start.stdin());
    cmd
}

fn phased(args: &[String]) -> Command {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("phased"));
    cmd.args(args).stdin(Stdio::null());
    cmd
}

/// One replica of the example application: this test binary again, running
/// [`example_replica`], released with the start line.
fn replica_at(start: &StartLine, url: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args([
        "startup::example_replica",
        "--exact",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env(REPLICA_URL, url)
    .stdin(start.stdin());
    cmd
}

const REPLICA_URL: &str = "PHASED_TEST_EXAMPLE_REPLICA_URL";

/// The body of a replica process spawned by [`replica_at`]: waits for the start line, then
/// runs the example application (migrate, serve one request, exit). Run with the suite (no
/// replica URL), it runs the example once in-process on a fresh SQLite file, serving nothing,
/// and checks that every embedded revision was applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_replica() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter("phased=info")
        .try_init();
    let scratch = tempfile::tempdir().expect("temp dir");
    let (url, replica) = match std::env::var(REPLICA_URL) {
        Ok(url) => (url, true),
        Err(_) => (
            format!("sqlite://{}", scratch.path().join("app.db").display()),
            false,
        ),
    };
    if replica {
        let mut start = Vec::new();
        std::io::stdin()
            .read_to_end(&mut start)
            .expect("read the start line");
    }
    let config = example::Config {
        database_url: url,
        listen: "127.0.0.1:0".to_string(),
        requests: u64::from(replica),
    };
    if let Err(e) = example::run(&config).await {
        panic!("replica failed (exit code {}): {e}", e.exit_code());
    }
    if !replica {
        let shipped = std::fs::read_dir(repo_root().join("migrations"))
            .expect("migrations/")
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "sql"))
            .count();
        let db = rusqlite::Connection::open(scratch.path().join("app.db")).expect("open");
        let applied: i64 = db
            .query_row("SELECT count(*) FROM phased_migrations", [], |r| r.get(0))
            .expect("the version table");
        assert_eq!(applied, shipped as i64);
    }
}

/// A running process whose stdout is read line by line as it comes.
struct Proc {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: std::thread::JoinHandle<String>,
}

/// How a process ended.
struct Finished {
    code: Option<i32>,
    stdout: Vec<String>,
    stderr: String,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        cmd.env_remove("DATABASE_URL")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn");
        let stdout = child.stdout.take().expect("stdout");
        let mut stderr = child.stderr.take().expect("stderr");
        let (send, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Proc {
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// The next line of stdout that matches; panics (with what it printed) if the process
    /// ends first.
    fn wait_for(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        loop {
            match self.lines.recv_timeout(PATIENCE) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "the process ended (or hung) before printing {what}\nstdout:\n{}",
                        self.seen.join("\n")
                    );
                }
            }
        }
    }

    /// kill -9, and reap it so its pid is gone.
    fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    fn finish(mut self) -> Finished {
        let status = self.child.wait().expect("wait");
        self.seen.extend(self.lines.iter());
        Finished {
            code: status.code(),
            stdout: self.seen,
            stderr: self.stderr.join().unwrap_or_default(),
        }
    }
}

impl Finished {
    fn events(&self, event: &str) -> Vec<serde_json::Value> {
        self.stdout
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["event"] == event)
            .collect()
    }

    fn describe(&self) -> String {
        format!(
            "exit {:?}\nstdout:\n{}\nstderr:\n{}",
            self.code,
            self.stdout.join("\n"),
            self.stderr
        )
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn upgrade_args(db: &TestDb, dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut out = args(&["db", "upgrade", "head", "--format", "json", "--dir"]);
    out.push(dir.display().to_string());
    out.push("--database".to_string());
    out.push(db.url());
    out.extend(args(extra));
    out
}

/// The applied revisions as phased recorded them, and the recorded heads.
async fn recorded(db: &TestDb) -> (Vec<String>, Vec<String>) {
    let (migrations, heads) = if db.is_pg() {
        ("phased.migrations", "phased.version_heads")
    } else {
        ("phased_migrations", "phased_version_heads")
    };
    let listed = |table: &str| {
        format!("SELECT coalesce(string_agg(revision, ',' ORDER BY revision), '') FROM {table}")
    };
    let listed_sqlite = |table: &str| {
        format!("SELECT coalesce(group_concat(revision, ','), '') FROM (SELECT revision FROM {table} ORDER BY revision)")
    };
    let (a, h) = if db.is_pg() {
        (listed(migrations), listed(heads))
    } else {
        (listed_sqlite(migrations), listed_sqlite(heads))
    };
    let split = |text: Option<String>| -> Vec<String> {
        text.unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    (split(db.text(&a).await), split(db.text(&h).await))
}

fn sorted(revisions: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = revisions.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------------
// Five replicas of the example application at once.

async fn five_example_replicas(db: TestDb) {
    // The example embeds the user-facing `migrations/`: what it must reach is read from there.
    let embedded = phased::migrations::load(&repo_root().join("migrations")).expect("migrations/");
    let revisions: Vec<String> = embedded.in_order().map(|m| m.revision.clone()).collect();
    let heads: Vec<String> = embedded.heads().into_iter().map(str::to_string).collect();
    let start = StartLine::new();
    let mut replicas: Vec<Proc> = (0..5)
        .map(|_| Proc::spawn(replica_at(&start, &db.url())))
        .collect();
    start.release();
    let mut answers = Vec::new();
    for replica in &mut replicas {
        // Each serves only after migrating: ask it what it sees.
        // (libtest's own `test … ...` may stand before it on the line.)
        let line = replica.wait_for("listening on", |l| l.contains("listening on "));
        let address = line
            .split("listening on ")
            .nth(1)
            .unwrap_or_default()
            .trim()
            .to_string();
        let mut stream = std::net::TcpStream::connect(&address).expect("connect to the replica");
        std::io::Write::write_all(&mut stream, b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
            .expect("request");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("response");
        answers.push(answer);
    }
    let finished: Vec<Finished> = replicas.into_iter().map(Proc::finish).collect();
    for f in &finished {
        assert_eq!(f.code, Some(0), "{}", f.describe());
    }
    for answer in &answers {
        assert!(
            answer.starts_with("HTTP/1.1 200 OK")
                && answer.ends_with(&format!("schema at {MERGE} (up to date)\n")),
            "{answer}"
        );
    }
    // Each revision ran in exactly one replica (their logs say so), and is recorded once.
    for revision in EXAMPLES {
        let ran: usize = finished
            .iter()
            .map(|f| {
                f.stderr
                    .lines()
                    .filter(|l| {
                        l.contains("running upgrade") && l.contains(&format!("revision={revision}"))
                    })
                    .count()
            })
            .sum();
        assert_eq!(
            ran,
            1,
            "{revision} ran {ran} times\n{}",
            finished
                .iter()
                .map(Finished::describe)
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
    }
    let (applied, recorded_heads) = recorded(&db).await;
    let mut expected = revisions.clone();
    expected.sort();
    assert_eq!(applied, expected);
    assert_eq!(recorded_heads, heads);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_replicas_of_the_example_start_at_once_on_postgres() {
    five_example_replicas(TestDb::pg().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_replicas_of_the_example_start_at_once_on_sqlite() {
    five_example_replicas(TestDb::sqlite()).await;
}

// ---------------------------------------------------------------------------------------------
// Five `phased db upgrade head --wait` at once (an init container per replica).

async fn five_cli_upgrades(db: TestDb) {
    let dir = copy_migrations();
    let start = StartLine::new();
    let runs: Vec<Proc> = (0..5)
        .map(|_| {
            Proc::spawn(phased_at(
                &start,
                &upgrade_args(&db, &migrations(&dir), &["--wait"]),
            ))
        })
        .collect();
    start.release();
    let finished: Vec<Finished> = runs.into_iter().map(Proc::finish).collect();
    let all = || {
        finished
            .iter()
            .map(Finished::describe)
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    for f in &finished {
        // None exits 4: they wait instead.
        assert_eq!(f.code, Some(0), "{}", all());
        let done = f.events("done");
        assert_eq!(done.len(), 1, "{}", f.describe());
        assert_eq!(
            done[0]["heads"],
            serde_json::json!([MERGE]),
            "{}",
            f.describe()
        );
    }
    for revision in EXAMPLES {
        let ran: usize = finished
            .iter()
            .map(|f| {
                f.events("migration")
                    .iter()
                    .filter(|e| e["revision"] == revision)
                    .count()
            })
            .sum();
        assert_eq!(ran, 1, "{revision} ran {ran} times\n{}", all());
    }
    let (applied, heads) = recorded(&db).await;
    assert_eq!(applied, sorted(&EXAMPLES));
    assert_eq!(heads, vec![MERGE.to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_upgrades_with_wait_start_at_once_on_postgres() {
    five_cli_upgrades(TestDb::pg().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_upgrades_with_wait_start_at_once_on_sqlite() {
    five_cli_upgrades(TestDb::sqlite()).await;
}

// ---------------------------------------------------------------------------------------------
// The holder is killed with kill -9 mid-upgrade: a waiter takes over and finishes.

async fn holder_killed_mid_upgrade(db: TestDb) {
    let dir = copy_migrations();
    add_gate_revision(&dir);
    let gate = close_gate(&db, &dir).await;
    // A lock timeout long enough that neither process gives up at the gate.
    let run = upgrade_args(&db, &migrations(&dir), &["--wait", "--lock-timeout", "10m"]);

    let mut holder = Proc::spawn(phased(&run));
    holder.wait_for("the gate revision starting", |l| {
        l.contains("\"event\":\"migration\"") && l.contains(GATE)
    });
    if let Gate::Pg(client) = &gate {
        // Inside its statement, queued behind the test's lock.
        let waiting = format!(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND objid = {GATE_LOCK} AND NOT granted)"
        );
        let mut blocked = false;
        for _ in 0..3600 {
            if client
                .query_one(&waiting, &[])
                .await
                .expect("pg_locks")
                .get(0)
            {
                blocked = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(blocked, "the holder never queued at the gate");
    }

    let mut waiter = Proc::spawn(phased(&run));
    let report = waiter.wait_for("a lease_wait report", |l| {
        l.contains("\"event\":\"lease_wait\"")
    });
    let report: serde_json::Value = serde_json::from_str(&report).expect("json");
    assert_eq!(report["key"], "db:migrations");
    assert_eq!(
        report["progress"],
        format!("5 of the folder's 6 revisions applied, at {MERGE}"),
        "{report}"
    );
    let holder_pid = holder.child.id();
    let holder_named = if db.is_pg() {
        "(phased/db)".to_string()
    } else {
        format!("phased pid {holder_pid} ")
    };
    assert!(
        report["holder"]
            .as_str()
            .unwrap_or("")
            .contains(&holder_named),
        "{report}"
    );

    holder.kill9();
    drop(gate);
    let waited = waiter.finish();
    assert_eq!(waited.code, Some(0), "{}", waited.describe());
    assert_eq!(
        waited.events("lease_acquired").len(),
        1,
        "{}",
        waited.describe()
    );
    let ran: Vec<serde_json::Value> = waited.events("migration");
    assert_eq!(ran.len(), 1, "{}", waited.describe());
    assert_eq!(ran[0]["revision"], GATE);
    assert_eq!(waited.events("done")[0]["heads"], serde_json::json!([GATE]));

    let (applied, heads) = recorded(&db).await;
    let mut all: Vec<&str> = EXAMPLES.to_vec();
    all.push(GATE);
    assert_eq!(applied, sorted(&all));
    assert_eq!(heads, vec![GATE.to_string()]);
    assert!(db.has_table("gated").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_killed_mid_upgrade_is_taken_over_by_a_waiter_on_postgres() {
    holder_killed_mid_upgrade(TestDb::pg().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_killed_mid_upgrade_is_taken_over_by_a_waiter_on_sqlite() {
    holder_killed_mid_upgrade(TestDb::sqlite()).await;
}

// ---------------------------------------------------------------------------------------------
// The startup safety rule.

const DROP_COLUMN: &str = "d70bc01a0001";

/// A revision dropping the column the email revision added, with an optional opt-in.
fn add_drop_revision(dir: &tempfile::TempDir, opt_in: Option<&str>) {
    let header = opt_in
        .map(|rules| format!("-- destructive: {rules}\n"))
        .unwrap_or_default();
    let text = format!(
        "-- revision: {DROP_COLUMN}\n-- revises: {MERGE}\n-- message: drop the normalised email\n{header}\n\
         -- migrate:up\n-- merged too early?\nALTER TABLE customers\n    DROP COLUMN email_normalized;\n"
    );
    std::fs::write(migrations(dir).join("20261202_0000_drop.sql"), text).expect("write");
}

#[tokio::test]
async fn a_destructive_revision_is_refused_by_upgrade_wait_until_it_opts_in() {
    let db = TestDb::sqlite();
    let dir = copy_migrations();
    add_drop_revision(&dir, None);
    let out = phased(&{
        let mut a = upgrade_args(&db, &migrations(&dir), &["--wait"]);
        a.retain(|s| s != "--format" && s != "json");
        a
    })
    .env_remove("DATABASE_URL")
    .output()
    .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("startup mode (--wait) refuses destructive migrations. Nothing was run."),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("revision {DROP_COLUMN} ("))
            && stderr.contains("rule drop-column"),
        "{stderr}"
    );
    assert!(
        stderr.contains("ALTER TABLE customers DROP COLUMN email_normalized"),
        "{stderr}"
    );
    assert!(stderr.contains("-- destructive: drop-column"), "{stderr}");
    // Refused before anything ran, the examples included.
    assert_eq!(recorded(&db).await.0, Vec::<String>::new());

    add_drop_revision(&dir, Some("drop-column"));
    let out = phased(&upgrade_args(&db, &migrations(&dir), &["--wait"]))
        .env_remove("DATABASE_URL")
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!db.has_column("customers", "email_normalized").await);
    assert_eq!(recorded(&db).await.1, vec![DROP_COLUMN.to_string()]);
}

#[tokio::test]
async fn without_wait_the_operator_applies_a_destructive_revision_as_before() {
    let db = TestDb::sqlite();
    let dir = copy_migrations();
    add_drop_revision(&dir, None);
    let out = phased(&upgrade_args(&db, &migrations(&dir), &[]))
        .env_remove("DATABASE_URL")
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!db.has_column("customers", "email_normalized").await);
}

#[tokio::test]
async fn the_library_refuses_a_destructive_revision_until_it_opts_in_on_postgres() {
    let db = TestDb::pg().await;
    let dir = copy_migrations();
    add_drop_revision(&dir, None);
    let migrator = phased::Migrator::from_dir(migrations(&dir)).expect("migrator");
    match migrator.upgrade(&db.url(), "head").await {
        Err(phased::Error::Destructive(refused)) => {
            assert_eq!(refused.len(), 1, "{refused:?}");
            assert_eq!(refused[0].revision, DROP_COLUMN);
            assert_eq!(refused[0].rule, "drop-column");
            assert_eq!(
                refused[0].statement,
                "ALTER TABLE customers DROP COLUMN email_normalized"
            );
            assert!(refused[0].file.ends_with("20261202_0000_drop.sql"));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let current = migrator.current(&db.url()).await.expect("current");
    assert!(current.applied.is_empty(), "nothing ran: {current:?}");
    assert_eq!(current.pending.len(), 6);

    add_drop_revision(&dir, Some("drop-column"));
    let migrator = phased::Migrator::from_dir(migrations(&dir)).expect("migrator");
    let upgraded = migrator.upgrade(&db.url(), "head").await.expect("upgrade");
    assert_eq!(upgraded.applied.len(), 6);
    assert_eq!(upgraded.heads, vec![DROP_COLUMN.to_string()]);
    assert_eq!(upgraded.waited, Duration::ZERO);
    assert!(!db.has_column("customers", "email_normalized").await);
    assert!(migrator
        .current(&db.url())
        .await
        .expect("current")
        .is_up_to_date());
}

#[tokio::test]
async fn run_wait_refuses_a_destructive_revision_in_a_migrations_step() {
    let db = TestDb::sqlite();
    let dir = copy_migrations();
    add_drop_revision(&dir, None);
    let plan = dir.path().join("plan.yaml");
    std::fs::write(
        &plan,
        "plan: startup-migrations\nphases:\n  - name: schema\n    kind: expand\n    steps:\n      - migrations: { dir: migrations, to: head }\n",
    )
    .expect("plan");
    let run = |extra: &[&str]| {
        let mut a = vec!["run".to_string(), plan.display().to_string()];
        a.extend(args(&["--database"]));
        a.push(db.url());
        a.extend(args(extra));
        phased(&a).output().expect("run")
    };
    let out = run(&["--wait"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("revision {DROP_COLUMN}")) && stderr.contains("rule drop-column"),
        "{stderr}"
    );
    assert_eq!(recorded(&db).await.0, Vec::<String>::new());
    // Without --wait, the plan is the operator's: it runs.
    let out = run(&[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// The wait is bounded, and without --wait nothing changes.

#[tokio::test]
async fn the_wait_is_bounded_and_says_who_held_the_lease() {
    let db = TestDb::sqlite();
    let dir = copy_migrations();
    // The test holds the folder's lease, as another runner would.
    let mut holder = db.target("holder").await;
    let key = "db:migrations";
    let held = phased::with_target!(&mut holder, t => {
        t.ensure_state().await.expect("state");
        t.acquire_lease(key).await.expect("lease")
    });
    assert!(held.is_none());

    // Without --wait: exit 4 at once, as before.
    let out = phased(&upgrade_args(&db, &migrations(&dir), &[]))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(4));

    // With --wait: reports, then gives up at the timeout with exit 4 and says why.
    let out = phased(&upgrade_args(
        &db,
        &migrations(&dir),
        &["--wait", "--wait-timeout", "300ms"],
    ))
    .output()
    .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{stdout}");
    let first: serde_json::Value =
        serde_json::from_str(stdout.lines().next().unwrap_or("")).expect("json");
    assert_eq!(first["event"], "lease_wait", "{stdout}");
    assert_eq!(first["timeout_ms"], 300);
    assert_eq!(
        first["progress"],
        "0 of the folder's 5 revisions applied, at <base>"
    );
    assert!(
        first["holder"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("phased pid {} ", std::process::id())),
        "{first}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: gave up after waiting 300ms for the lease db:migrations"),
        "{stderr}"
    );

    // The library: no wait at all, then a bounded one.
    let migrator = phased::Migrator::from_dir(migrations(&dir))
        .expect("migrator")
        .wait_timeout(Duration::ZERO);
    match migrator.upgrade(&db.url(), "head").await {
        Err(phased::Error::LeaseHeld { key, holder }) => {
            assert_eq!(key, "db:migrations");
            assert!(
                holder.contains("another runner in this process"),
                "{holder}"
            );
        }
        other => panic!("expected LeaseHeld, got {other:?}"),
    }
    let migrator = migrator.wait_timeout(Duration::from_millis(200));
    match migrator.upgrade(&db.url(), "head").await {
        Err(phased::Error::WaitTimedOut {
            key,
            progress,
            waited,
            ..
        }) => {
            assert_eq!(key, "db:migrations");
            assert_eq!(progress, "0 of the folder's 5 revisions applied, at <base>");
            assert_eq!(waited, Duration::from_millis(200));
        }
        other => panic!("expected WaitTimedOut, got {other:?}"),
    }

    // Released: the waiter goes through.
    phased::with_target!(&mut holder, t => t.release_lease(key).await.expect("release"));
    let upgraded = migrator.upgrade(&db.url(), "head").await.expect("upgrade");
    assert_eq!(upgraded.applied.len(), 5);
}

// ---------------------------------------------------------------------------------------------
// `phased run PLAN --wait`.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_wait_waits_for_the_plan_and_finds_its_steps_done_on_postgres() {
    let db = TestDb::pg().await;
    let TestDb::Pg(pg) = &db else { unreachable!() };
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = dir.path().join("plan.yaml");
    std::fs::write(
        &plan,
        format!(
            "plan: startup-wait\ndefaults:\n  lock_timeout: 10m\nphases:\n  - name: expand\n    kind: expand\n    steps:\n      \
             - sql: {{ up: \"SELECT pg_advisory_xact_lock_shared({GATE_LOCK})\", down: \"SELECT 1\" }}\n      \
             - create_table: {{ name: started, columns: [ {{ name: id, type: bigint, primary_key: true }} ] }}\n"
        ),
    )
    .expect("plan");
    let gate = pg.client().await;
    gate.batch_execute(&format!("SELECT pg_advisory_lock({GATE_LOCK})"))
        .await
        .expect("gate");
    let run = {
        let mut a = vec!["run".to_string(), plan.display().to_string()];
        a.extend(args(&["--wait", "--format", "json", "--database"]));
        a.push(db.url());
        a
    };
    let mut holder = Proc::spawn(phased(&run));
    holder.wait_for("the first step starting", |l| {
        l.contains("\"event\":\"step_start\"")
    });
    let mut waiter = Proc::spawn(phased(&run));
    let report = waiter.wait_for("a lease_wait report", |l| {
        l.contains("\"event\":\"lease_wait\"")
    });
    let report: serde_json::Value = serde_json::from_str(&report).expect("json");
    assert_eq!(report["key"], "startup-wait");
    let progress = report["progress"].as_str().unwrap_or("");
    assert!(
        progress.starts_with("0 of the plan's 2 steps done; running expand#1 sql ")
            && progress.ends_with("(attempt 1)"),
        "{report}"
    );
    gate.batch_execute(&format!("SELECT pg_advisory_unlock({GATE_LOCK})"))
        .await
        .expect("open the gate");

    let held = holder.finish();
    assert_eq!(held.code, Some(0), "{}", held.describe());
    assert_eq!(held.events("step_end").len(), 2, "{}", held.describe());
    let waited = waiter.finish();
    assert_eq!(waited.code, Some(0), "{}", waited.describe());
    assert_eq!(
        waited.events("lease_acquired").len(),
        1,
        "{}",
        waited.describe()
    );
    assert!(
        waited.events("step_start").is_empty(),
        "{}",
        waited.describe()
    );
    assert_eq!(
        waited.events("phase_skipped").len(),
        1,
        "{}",
        waited.describe()
    );
    assert!(db.has_table("started").await);
}

// ---------------------------------------------------------------------------------------------
// The library's plan runner.

#[tokio::test]
async fn plan_file_runs_a_plan_then_finds_it_done_and_reports_an_invalid_one_located() {
    let db = TestDb::sqlite();
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = dir.path().join("plan.yaml");
    std::fs::write(
        &plan,
        "plan: startup-library\nphases:\n  - name: expand\n    kind: expand\n    steps:\n      \
         - create_table: { name: things, columns: [ { name: id, type: bigint, primary_key: true } ] }\n  \
         - name: switch\n    kind: switch-flag\n    steps:\n      - flag: { name: use_things, value: true }\n",
    )
    .expect("plan");
    let file = phased::PlanFile::load(&plan).expect("valid plan");
    assert_eq!(file.id(), "startup-library");
    let first = file.run(&db.url()).await.expect("run");
    assert_eq!(
        first.completed,
        vec![
            "expand#1 create_table things",
            "switch#1 flag use_things = true"
        ]
    );
    assert_eq!(first.waited, Duration::ZERO);
    // Another replica starting later finds everything done.
    let again = phased::PlanFile::load(&plan)
        .expect("valid plan")
        .run(&db.url())
        .await
        .expect("run");
    assert!(again.completed.is_empty(), "{again:?}");
    assert!(db.has_table("things").await);

    // `until` stops before a phase.
    let other = TestDb::sqlite();
    let partial = phased::PlanFile::load(&plan)
        .expect("valid plan")
        .until("expand")
        .run(&other.url())
        .await
        .expect("run");
    assert_eq!(partial.completed, vec!["expand#1 create_table things"]);

    std::fs::write(&plan, "plan: broken\nphases:\n  - name: e\n    kind: expand\n    steps:\n      - drop_table: { name: old }\n")
        .expect("plan");
    match phased::PlanFile::load(&plan) {
        Err(phased::Error::Plan(report)) => {
            assert!(report.contains("plan.yaml:6:9"), "{report}");
            assert!(report.contains("`drop_table` is destructive"), "{report}");
        }
        other => panic!("expected Error::Plan, got {other:?}"),
    }
}
