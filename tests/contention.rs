//! SQLite under contention: many runners starting at the same instant, and another process
//! holding the database's write lock while a backfill runs.
//!
//! Processes that must start at the same instant are spawned blocked on one pipe (their standard
//! input, whose only writer is a `cat` the test controls) and released together by closing it.
//! Nothing waits on a clock: the test waits for lines the runner prints.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use crate::common::SqliteDb;

const PATIENCE: Duration = Duration::from_secs(180);

/// Processes released together (see the module's doc).
pub(crate) struct StartLine {
    cat: Child,
    read: OwnedFd,
}

impl StartLine {
    pub(crate) fn new() -> Self {
        let mut cat = Command::new("cat")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn cat");
        let read = cat.stdout.take().expect("cat's stdout").into();
        Self { cat, read }
    }

    pub(crate) fn release(mut self) {
        drop(self.cat.stdin.take());
        self.cat.wait().expect("cat exits");
    }
}

fn phased_args(plan: &Path, db: &SqliteDb) -> Vec<String> {
    vec![
        "run".to_string(),
        plan.display().to_string(),
        "--database".to_string(),
        db.url(),
        "--format".to_string(),
        "json".to_string(),
    ]
}

pub(crate) fn command(args: &[String], start: Option<&StartLine>) -> Command {
    let bin = assert_cmd::cargo::cargo_bin("phased");
    let mut cmd = match start {
        Some(start) => {
            let mut cmd = Command::new("sh");
            cmd.arg("-c")
                .arg("read _go; exec \"$0\" \"$@\"")
                .arg(bin)
                .args(args)
                .stdin(Stdio::from(start.read.try_clone().expect("dup")));
            cmd
        }
        None => {
            let mut cmd = Command::new(bin);
            cmd.args(args).stdin(Stdio::null());
            cmd
        }
    };
    cmd.env_remove("DATABASE_URL")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// A running phased, its stdout read line by line.
pub(crate) struct Proc {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl Proc {
    pub(crate) fn spawn(mut cmd: Command) -> Proc {
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

    pub(crate) fn wait_for(&mut self, what: &str, wanted: impl Fn(&str) -> bool) {
        loop {
            match self.lines.recv_timeout(PATIENCE) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if wanted(&line) {
                        return;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "the process ended before printing {what}\nstdout:\n{}",
                        self.seen.join("\n")
                    );
                }
            }
        }
    }

    /// Exit code, stdout and stderr as one text for assertions.
    pub(crate) fn finish(mut self) -> (Option<i32>, String) {
        let status = self.child.wait().expect("wait");
        self.seen.extend(self.lines.iter());
        let stderr = self.stderr.join().unwrap_or_default();
        (
            status.code(),
            format!("stdout:\n{}\nstderr:\n{stderr}", self.seen.join("\n")),
        )
    }
}

pub(crate) fn write_plan(dir: &Path, yaml: &str) -> std::path::PathBuf {
    let path = dir.join("plan.yaml");
    std::fs::write(&path, yaml).expect("write plan");
    path
}

fn items(db: &SqliteDb, rows: u32) {
    let conn = db.conn();
    conn.execute_batch("CREATE TABLE items (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
        .expect("create items");
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) \
         INSERT INTO items (id, v) SELECT i, i FROM n",
        [rows],
    )
    .expect("fill items");
}

const BACKFILL_PLAN: &str = "plan: contention
defaults:
  lock_timeout: 1s
  retry: { attempts: 20, backoff: 100ms, max_backoff: 500ms }
phases:
  - name: expand
    kind: expand
    steps:
      - add_column: { table: items, name: v2, type: integer }
  - name: fill
    kind: migrate
    steps:
      - backfill: { table: items, set: { v2: \"v * 2\" }, where: \"v2 IS NULL\", batch_size: 1, pause: 2ms }
";

// Of 20 runners started at the same instant, one runs the plan and every other one exits 4
// (another runner holds the lease), none 1 with `database is locked`.
#[test]
fn twenty_sqlite_runners_started_at_once_one_runs_the_others_exit_4() {
    let db = SqliteDb::new();
    items(&db, 400);
    let plan = write_plan(db.dir.path(), BACKFILL_PLAN);
    let start = StartLine::new();
    let procs: Vec<Proc> = (0..20)
        .map(|_| Proc::spawn(command(&phased_args(&plan, &db), Some(&start))))
        .collect();
    start.release();
    let ends: Vec<(Option<i32>, String)> = procs.into_iter().map(Proc::finish).collect();
    let ran = ends.iter().filter(|(code, _)| *code == Some(0)).count();
    for (code, text) in &ends {
        assert!(
            *code == Some(0) || *code == Some(4),
            "a runner exited {code:?}, not 0 or 4:\n{text}"
        );
        if *code == Some(4) {
            assert!(text.contains("another runner"), "{text}");
        }
    }
    assert!(ran >= 1, "no runner ran the plan");
    let conn = db.conn();
    let left: i64 = conn
        .query_row("SELECT count(*) FROM items WHERE v2 IS NULL", [], |r| {
            r.get(0)
        })
        .expect("count");
    assert_eq!(left, 0);
}

// Another process holds the write lock during a backfill until the runner has retried twice:
// the busy errors are spent from the retry budget (not one retry and out), and once the lock
// is released the backfill finishes and the step is done.
#[test]
fn a_write_lock_held_during_a_sqlite_backfill_is_waited_out_within_the_retry_budget() {
    let db = SqliteDb::new();
    items(&db, 300);
    let plan = write_plan(db.dir.path(), BACKFILL_PLAN);
    let mut runner = Proc::spawn(command(&phased_args(&plan, &db), None));
    runner.wait_for("the backfill's first batch", |l| {
        l.contains("\"backfill_progress\"")
    });
    let holder = db.conn();
    holder
        .busy_timeout(Duration::from_secs(60))
        .expect("busy_timeout");
    holder
        .execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");
    runner.wait_for("a first retry", |l| l.contains("\"step_retry\""));
    runner.wait_for("a second retry", |l| l.contains("\"step_retry\""));
    holder
        .execute_batch("COMMIT")
        .expect("release the write lock");
    let (code, text) = runner.finish();
    assert_eq!(code, Some(0), "{text}");
    let status: String = db
        .conn()
        .query_row(
            "SELECT status FROM phased_steps WHERE plan = 'contention' AND phase = 'fill'",
            [],
            |r| r.get(0),
        )
        .expect("status");
    assert_eq!(status, "done", "{text}");
    let left: i64 = db
        .conn()
        .query_row("SELECT count(*) FROM items WHERE v2 IS NULL", [], |r| {
            r.get(0)
        })
        .expect("count");
    assert_eq!(left, 0);
}

// Runners started together while another process holds the database's write lock during the
// lease holder's backfill: each exits 4 naming the runner that holds the plan's lease, none 1
// with `database is locked` (taking the lease needs the write lock; who holds the lease can be
// read without it).
#[test]
fn runners_started_while_the_sqlite_write_lock_is_held_exit_4_naming_the_holder() {
    let db = SqliteDb::new();
    items(&db, 300);
    let plan = write_plan(db.dir.path(), BACKFILL_PLAN);
    let mut holder_run = Proc::spawn(command(&phased_args(&plan, &db), None));
    holder_run.wait_for("the backfill's first batch", |l| {
        l.contains("\"backfill_progress\"")
    });
    let lock = db.conn();
    lock.busy_timeout(Duration::from_secs(60))
        .expect("busy_timeout");
    lock.execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");
    let start = StartLine::new();
    let procs: Vec<Proc> = (0..10)
        .map(|_| Proc::spawn(command(&phased_args(&plan, &db), Some(&start))))
        .collect();
    start.release();
    for (code, text) in procs.into_iter().map(Proc::finish) {
        assert_eq!(code, Some(4), "{text}");
        assert!(
            text.contains("another runner") && text.contains("phased pid"),
            "{text}"
        );
    }
    lock.execute_batch("COMMIT")
        .expect("release the write lock");
    let (code, text) = holder_run.finish();
    assert_eq!(code, Some(0), "{text}");
}
