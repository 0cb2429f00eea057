//! Ctrl-C and SIGTERM sent to a real `phased run` process: it stops at a safe point, records
//! where, releases the lease, says how to resume and exits 130 (SIGINT) or 143 (SIGTERM); the
//! rerun resumes and ends where an uninterrupted run would. Waits are on conditions seen in the
//! database or on the process's output, never on sleeps.

use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{phased_cmd, TestDb};

const ROWS: i64 = 20_000;

/// A running `phased run`, with what it printed on stderr so far.
struct Running {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

fn start(plan: &std::path::Path, db: &TestDb, extra: &[&str]) -> Running {
    let (child, stderr) = crate::common::spawn_run(plan, &db.url(), extra);
    Running { child, stderr }
}

/// A test that fails must not leave its phased running.
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name}");
    }

    fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits for the process to end; its exit code.
    fn wait(&mut self) -> Option<i32> {
        let status = self.child.wait().expect("wait for phased");
        // A run stopped by a signal it handled (130, 143) prints "interrupted (SIG…)" as it
        // exits; the reader thread has that last line only once the pipe closed: give it the
        // chance. (Waiting for "interrupted" alone returned at once: the earlier progress line
        // "paused: interrupted" has it too.)
        if matches!(status.code(), Some(130 | 143)) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && !self.stderr().contains("interrupted (SIG") {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        status.code()
    }
}

/// Polls `check` until it holds (within a minute, for a loaded machine).
async fn until<F: AsyncFn() -> bool>(what: &str, check: F) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The state tables, so the test can watch them from the first batch on.
async fn ensure_state(db: &TestDb, plan: &str) {
    let mut target = db.target(plan).await;
    phased::with_target!(&mut target, t => t.ensure_state().await).expect("state tables");
}

fn steps_table(db: &TestDb) -> &'static str {
    if db.is_pg() {
        "phased.steps"
    } else {
        "phased_steps"
    }
}

async fn seed(db: &TestDb) {
    db.execute(&if db.is_pg() {
        format!(
            "CREATE TABLE items (id bigint PRIMARY KEY, touched integer NOT NULL DEFAULT 0); \
             INSERT INTO items (id) SELECT generate_series(1, {ROWS})"
        )
    } else {
        format!(
            "CREATE TABLE items (id INTEGER PRIMARY KEY, touched INTEGER NOT NULL DEFAULT 0); \
             INSERT INTO items (id) WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS}) SELECT i FROM n"
        )
    })
    .await;
}

/// Every row is touched by a batch; a batch applied twice would leave a 2.
const PLAN: &str = r#"
plan: interrupted
phases:
  - name: backfill
    kind: migrate
    steps:
      - backfill: { table: items, set: { touched: "touched + 1" }, batch_size: 200, pause: 20ms, down: { set: { touched: "0" } } }
"#;

/// A seeded table, the backfill plan in a temp folder, the state tables made, and `phased run`
/// started on it — with a throttle file at `pause` in that folder when `throttled` (present
/// from the start when `paused`).
struct Backfilling {
    dir: tempfile::TempDir,
    plan: std::path::PathBuf,
    run: Running,
}

async fn start_backfill(db: &TestDb, throttled: bool, paused: bool) -> Backfilling {
    seed(db).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = dir.path().join("plan.yaml");
    std::fs::write(&plan, PLAN).expect("write plan");
    let throttle = dir.path().join("pause");
    if paused {
        std::fs::write(&throttle, "").expect("throttle file");
    }
    ensure_state(db, "interrupted").await;
    let throttle_arg = throttle.display().to_string();
    let extra: &[&str] = if throttled {
        &["--throttle-file", &throttle_arg]
    } else {
        &[]
    };
    let run = start(&plan, db, extra);
    Backfilling { dir, plan, run }
}

/// Mid-backfill, paused by the throttle file (so the signal lands at a known point whatever the
/// machine's speed), the signal stops the run between batches.
async fn a_signal_mid_backfill_stops_between_batches(db: TestDb, signal: &str, code: i32) {
    let Backfilling { dir, plan, mut run } = start_backfill(&db, true, false).await;
    let throttle = dir.path().join("pause");
    let steps = steps_table(&db);
    until("the first batches", async || {
        db.scalar(&format!("SELECT count(*) FROM {steps} WHERE rows_done > 0"))
            .await
            > 0
    })
    .await;
    std::fs::write(&throttle, "").expect("throttle file");
    until("the backfill to pause", async || {
        run.stderr().contains("paused")
    })
    .await;
    run.signal(signal);
    assert_eq!(run.wait(), Some(code), "{}", run.stderr());
    let stderr = run.stderr();
    assert!(
        stderr.contains(&format!("interrupted (SIG{signal})")),
        "{stderr}"
    );
    assert!(stderr.contains("resumes from step backfill#1"), "{stderr}");

    // Recorded where it stopped; no batch half-applied; the lease is free.
    assert_eq!(
        db.text(&format!("SELECT status FROM {steps}"))
            .await
            .as_deref(),
        Some("failed")
    );
    let error = db.text(&format!("SELECT last_error FROM {steps}")).await;
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains(&format!("interrupted by SIG{signal}"))),
        "{error:?}"
    );
    let done = db.scalar(&format!("SELECT rows_done FROM {steps}")).await;
    assert!(done > 0 && done < ROWS, "{done}");
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE touched = 1")
            .await,
        done
    );
    let status = phased_cmd()
        .arg("status")
        .arg(&plan)
        .args(["--database", &db.url()])
        .output()
        .expect("phased status");
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("runner: none"),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );

    // The rerun resumes from the checkpoint and touches every row exactly once.
    std::fs::remove_file(&throttle).expect("remove throttle file");
    crate::common::rerun_succeeds(&plan, &db.url());
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE touched = 1")
            .await,
        ROWS
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_mid_backfill_on_postgres() {
    a_signal_mid_backfill_stops_between_batches(TestDb::pg().await, "INT", 130).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_backfill_on_sqlite() {
    a_signal_mid_backfill_stops_between_batches(TestDb::sqlite(), "TERM", 143).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_mid_backfill_on_sqlite() {
    a_signal_mid_backfill_stops_between_batches(TestDb::sqlite(), "INT", 130).await;
}

/// A `CREATE INDEX CONCURRENTLY` waiting for an old transaction is cancelled by the signal;
/// the run exits 143, and once the old transaction is gone the rerun builds a valid index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_concurrent_index_build_on_postgres() {
    let db = TestDb::pg().await;
    seed(&db).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = dir.path().join("plan.yaml");
    std::fs::write(
        &plan,
        r#"
plan: interrupted-index
phases:
  - name: expand
    kind: expand
    steps:
      - create_index: { table: items, name: items_touched_idx, columns: [touched], lock_timeout: 10min }
"#,
    )
    .expect("write plan");
    // An old transaction with a snapshot: the build waits for it.
    let TestDb::Pg(pg) = &db else {
        unreachable!("a PostgreSQL test database")
    };
    let old = pg.client().await;
    old.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM items")
        .await
        .expect("an old transaction");

    let mut run = start(&plan, &db, &[]);
    until("the build to wait for the old transaction", async || {
        db.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'CREATE INDEX CONCURRENTLY%' \
             AND wait_event_type = 'Lock'",
        )
        .await
            > 0
    })
    .await;
    run.signal("TERM");
    assert_eq!(run.wait(), Some(143), "{}", run.stderr());
    let stderr = run.stderr();
    assert!(stderr.contains("interrupted (SIGTERM)"), "{stderr}");
    assert!(stderr.contains("resumes from step expand#1"), "{stderr}");
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'CREATE INDEX CONCURRENTLY%' AND state = 'active'"
        )
        .await,
        0,
        "the build is still running"
    );

    old.batch_execute("COMMIT").await.expect("commit");
    crate::common::rerun_succeeds(&plan, &db.url());
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM pg_index WHERE indexrelid = 'items_touched_idx'::regclass AND indisvalid"
        )
        .await,
        1
    );
}

/// `status` tells a live runner from a dead one by the lease: while the run works it names the
/// runner; after a kill -9 (no chance to record anything) it says the step shown `running` has
/// no runner and that `phased run` resumes it.
async fn status_tells_a_live_runner_from_a_dead_one(db: TestDb) {
    let Backfilling {
        dir: _dir,
        plan,
        mut run,
    } = start_backfill(&db, true, true).await;
    until("the backfill to pause", async || {
        run.stderr().contains("paused")
    })
    .await;
    let status = || {
        let out = phased_cmd()
            .arg("status")
            .arg(&plan)
            .args(["--database", &db.url()])
            .output()
            .expect("phased status");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let live = status();
    assert!(live.contains("runner: alive"), "{live}");

    run.signal("KILL");
    assert_eq!(run.wait(), None, "killed");
    let dead = status();
    assert!(
        dead.contains("runner: none — a step shows `running` but no runner holds the lease"),
        "{dead}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_tells_a_live_runner_from_a_dead_one_on_postgres() {
    status_tells_a_live_runner_from_a_dead_one(TestDb::pg().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_tells_a_live_runner_from_a_dead_one_on_sqlite() {
    status_tells_a_live_runner_from_a_dead_one(TestDb::sqlite()).await;
}

/// `status --watch` follows a running backfill from another process: in a pipe it prints a
/// line each time the state changed, and the rows written go up.
async fn status_watch_follows_a_running_backfill(db: TestDb) {
    let Backfilling {
        dir: _dir,
        plan,
        run: _run,
    } = start_backfill(&db, false, false).await;
    let steps = steps_table(&db);
    until("the first batches", async || {
        db.scalar(&format!("SELECT count(*) FROM {steps} WHERE rows_done > 0"))
            .await
            > 0
    })
    .await;
    let watch = phased_cmd()
        .arg("status")
        .arg(&plan)
        .args([
            "--database",
            &db.url(),
            "--watch",
            "--interval",
            "50ms",
            "--count",
            "40",
        ])
        .output()
        .expect("phased status --watch");
    assert!(watch.status.success());
    let out = String::from_utf8_lossy(&watch.stdout);
    let written: Vec<u64> = out
        .lines()
        .filter_map(|l| {
            l.split(" rows written")
                .next()?
                .rsplit('(')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(
        written.windows(2).any(|w| w[1] > w[0]),
        "the rows written did not go up:\n{out}"
    );
    assert!(out.lines().all(|l| l.contains("runner: ")), "{out}");
    assert!(!out.contains('\u{1b}'), "escape codes in a pipe:\n{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_follows_a_running_backfill_on_postgres() {
    status_watch_follows_a_running_backfill(TestDb::pg().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_follows_a_running_backfill_on_sqlite() {
    status_watch_follows_a_running_backfill(TestDb::sqlite()).await;
}

/// `phased pause|resume|pace` from another process: the running backfill stops before its next
/// batch and says who paused it; the pause outlives a kill -9 of the runner and holds the next
/// run too; `pace` and `resume` let it finish, every row touched exactly once.
async fn an_operator_pauses_and_resumes_a_backfill_from_another_process(db: TestDb) {
    let Backfilling {
        dir: _dir,
        plan,
        mut run,
    } = start_backfill(&db, false, false).await;
    let steps = steps_table(&db);
    until("the first batches", async || {
        db.scalar(&format!("SELECT count(*) FROM {steps} WHERE rows_done > 0"))
            .await
            > 0
    })
    .await;
    let operator = |args: &[&str]| {
        let out = phased_cmd()
            .args(args)
            .arg(&plan)
            .args(["--database", &db.url()])
            .output()
            .expect("phased");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let said = operator(&["pause"]);
    assert!(said.contains("paused"), "{said}");
    until("the runner to pause", async || {
        run.stderr().contains("paused by ")
    })
    .await;
    let done = db.scalar(&format!("SELECT rows_done FROM {steps}")).await;
    assert!(done > 0 && done < ROWS, "{done}");
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE touched = 1")
            .await,
        done
    );
    let status = operator(&["status"]);
    assert!(status.contains("backfills: paused by "), "{status}");

    // The pause outlives the runner: a new run waits before its first batch.
    run.signal("KILL");
    assert_eq!(run.wait(), None);
    let mut next = start(&plan, &db, &[]);
    until("the next run to see the pause", async || {
        next.stderr().contains("paused by ")
    })
    .await;
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE touched = 1")
            .await,
        done
    );

    // A cap from the operator, honoured by the running backfill and shown in its progress …
    let paced = operator(&["pace", "--max-rows-per-second", "200"]);
    assert!(paced.contains("at most 200 rows a second"), "{paced}");
    operator(&["resume"]);
    until("the runner to go at the operator's pace", async || {
        next.stderr().contains("at most 200 rows/s")
    })
    .await;
    let status = operator(&["status"]);
    assert!(status.contains("backfills: at most 200 rows/s"), "{status}");
    assert!(
        status.contains("pace now: fixed, batch 2.0 ms + pause"),
        "status shows the running backfill's pace: {status}"
    );
    // … and `pace --auto` from another process lifts it: the steps' own pace again.
    let auto = operator(&["pace", "--auto"]);
    assert!(auto.contains("back to the steps' own pace"), "{auto}");
    assert_eq!(next.wait(), Some(0), "{}", next.stderr());
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE touched = 1")
            .await,
        ROWS
    );
    let stderr = next.stderr();
    let last = stderr
        .lines()
        .rfind(|l| l.contains(&format!("{ROWS}/{ROWS} rows")))
        .unwrap_or_else(|| panic!("a last progress line:\n{stderr}"));
    assert!(
        last.contains("fixed, batch") && !last.contains("at most"),
        "the last batches ran at the plan's own pace: {last}"
    );
    let status = operator(&["status"]);
    assert!(!status.contains("backfills: at most"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_pauses_and_resumes_a_backfill_on_postgres() {
    an_operator_pauses_and_resumes_a_backfill_from_another_process(TestDb::pg().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_pauses_and_resumes_a_backfill_on_sqlite() {
    an_operator_pauses_and_resumes_a_backfill_from_another_process(TestDb::sqlite()).await;
}
