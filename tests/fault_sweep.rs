//! A reduced fault sweep that stays in the suite: `phased run` is killed with kill -9 right
//! after each event it prints (NDJSON), on both targets; then re-run to completion. Every point
//! must converge to what an uninterrupted run leaves: the same schema, the same data, every step
//! done. (docs/reliability.md describes the full campaign this guards.)

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::common::{phased_cmd, TestDb};

const PLAN: &str = r#"
plan: sweep
backup: { before: [] }
phases:
  - name: setup
    kind: expand
    steps:
      - create_table: { name: accounts, columns: [ { name: id, type: bigint, primary_key: true }, { name: email, type: text, nullable: false } ] }
      - sql: { up: "INSERT INTO accounts (id, email) SELECT i, 'User' || i || '@Example.COM' FROM generate_series(1, 3000) i", down: "DELETE FROM accounts" }
  - name: expand
    kind: expand
    steps:
      - add_column: { table: accounts, name: email_lower, type: text }
      - dual_write: { table: accounts, set: { email_lower: "lower(NEW.email)" } }
      - create_index: { table: accounts, name: accounts_email_lower_idx, columns: [email_lower] }
  - name: backfill
    kind: migrate
    steps:
      - backfill: { table: accounts, set: { email_lower: "lower(email)" }, where: "email_lower IS NULL", batch_size: 250, pause: 0s }
  - name: switch
    kind: switch-flag
    steps:
      - flag: { name: read_email_lower, value: true }
  - name: contract
    kind: contract
    steps:
      - drop_dual_write: { table: accounts }
      - set_not_null: { table: accounts, column: email_lower }
"#;

/// The plan for a target: SQLite has no generate_series; a recursive CTE does the same.
fn plan_for(db: &TestDb) -> String {
    if db.is_pg() {
        PLAN.to_string()
    } else {
        PLAN.replace(
            "SELECT i, 'User' || i || '@Example.COM' FROM generate_series(1, 3000) i",
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000) SELECT i, 'User' || i || '@Example.COM' FROM n",
        )
    }
}

/// What a finished run leaves: the user schema, the data, and every step's status.
async fn end_state(db: &TestDb) -> (Vec<String>, i64, i64, Vec<String>) {
    let mut target = db.target("sweep").await;
    let schema =
        phased::with_target!(&mut target, t => t.schema_snapshot().await).expect("schema snapshot");
    let rows = db.scalar("SELECT count(*) FROM accounts").await;
    let right = db
        .scalar("SELECT count(*) FROM accounts WHERE email_lower = lower(email)")
        .await;
    let steps = phased::with_target!(&mut target, t => t.load_steps("sweep").await)
        .expect("steps")
        .into_iter()
        .map(|r| format!("{}#{} {}", r.phase, r.index + 1, r.status.as_str()))
        .collect();
    (schema, rows, right, steps)
}

fn plan_file(db: &TestDb) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = dir.path().join("plan.yaml");
    std::fs::write(&plan, plan_for(db)).expect("write plan");
    (dir, plan)
}

fn run_to_completion(plan: &std::path::Path, db: &TestDb) {
    // A kill can leave a runner's lease to be taken over, or a step to retry: a few reruns.
    for attempt in 1..=3 {
        let out = phased_cmd()
            .arg("run")
            .arg(plan)
            .args(["--database", &db.url()])
            .output()
            .expect("phased run");
        if out.status.success() {
            return;
        }
        assert!(
            attempt < 3,
            "the rerun did not converge: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The events an uninterrupted run prints, one per line.
fn events_of(plan: &std::path::Path, db: &TestDb) -> usize {
    let out = phased_cmd()
        .arg("run")
        .arg(plan)
        .args(["--database", &db.url(), "--format", "json"])
        .output()
        .expect("phased run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Runs the plan and kills it with kill -9 right after it printed event number `at`.
fn kill_after_event(plan: &std::path::Path, db: &TestDb, at: usize) {
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("phased"))
        .arg("run")
        .arg(plan)
        .args(["--database", &db.url(), "--format", "json"])
        .env_remove("DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start phased run");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    for _ in 0..=at {
        if lines.next().is_none() {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

async fn sweep(make: impl AsyncFn() -> TestDb) {
    let reference_db = make().await;
    let (_dir, plan) = plan_file(&reference_db);
    let events = events_of(&plan, &reference_db);
    let reference = end_state(&reference_db).await;
    assert_eq!(reference.1, 3000);
    assert_eq!(reference.2, 3000);
    // Points spread over the run's events, the first and the last included: ten in the suite,
    // more with PHASED_SWEEP_POINTS (scripts/fault-sweep).
    let wanted: usize = std::env::var("PHASED_SWEEP_POINTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|n| *n >= 2)
        .unwrap_or(10);
    let points: Vec<usize> = (0..wanted)
        .map(|i| i * (events - 1) / (wanted - 1))
        .collect();
    let dialect = if reference_db.is_pg() {
        "postgres"
    } else {
        "sqlite"
    };
    for (n, at) in points.iter().copied().enumerate() {
        let db = make().await;
        let (_dir, plan) = plan_file(&db);
        kill_after_event(&plan, &db, at);
        run_to_completion(&plan, &db);
        let state = end_state(&db).await;
        assert_eq!(state, reference, "killed after event {at} of {events}");
        eprintln!(
            "fault-sweep {dialect} point {}/{}: kill -9 after event {at} of {events}: converged",
            n + 1,
            points.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_any_event_a_rerun_converges_on_postgres() {
    sweep(async || TestDb::pg().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_any_event_a_rerun_converges_on_sqlite() {
    sweep(async || TestDb::sqlite()).await;
}
