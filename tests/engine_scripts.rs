//! `sql` steps with `transactional: false`: each statement is its own unit, the statements done
//! are recorded after each, and a retry or rerun resumes after the last one that completed.
//! Regression tests for the issue "One operation model": PostgreSQL ran such a script as one
//! multi-statement string (one implicit transaction, which two `CREATE INDEX CONCURRENTLY`
//! refuse), and SQLite re-ran the script from the top, so earlier statements ran twice.

use phased::db::StepStatus;
use phased::engine::RunOptions;

use crate::common::{on_both, plan, run, run_ok, TestDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_index_builds_in_one_script_both_run_on_postgres() {
    let db = TestDb::pg().await;
    db.execute("CREATE TABLE t (id bigint PRIMARY KEY, a text, b text)")
        .await;
    let p = plan(
        r#"
plan: two-builds
phases:
  - name: expand
    kind: expand
    steps:
      - sql:
          up: |
            CREATE INDEX CONCURRENTLY t_a_idx ON t (a);
            CREATE INDEX CONCURRENTLY t_b_idx ON t (b);
          down: "DROP INDEX t_b_idx; DROP INDEX t_a_idx"
          transactional: false
"#,
    );
    run_ok(&db, &p).await;
    assert!(db.has_index("t_a_idx").await);
    assert!(db.has_index("t_b_idx").await);
}

const HALF_FAILING: &str = r#"
plan: script-resume
phases:
  - name: expand
    kind: expand
    steps:
      - sql:
          up: "INSERT INTO log (note) VALUES ('first'); INSERT INTO later (note) VALUES ('second')"
          transactional: false
"#;

/// The second statement fails (its table is missing); once the table is there, the rerun
/// resumes with the second statement: the first ran exactly once.
async fn a_rerun_resumes_after_the_last_completed_statement(db: TestDb) {
    db.execute("CREATE TABLE log (note text)").await;
    let p = plan(HALF_FAILING);
    let failed = run(&db, &p, RunOptions::default()).await;
    assert!(failed.is_err(), "the second statement's table is missing");
    assert_eq!(db.scalar("SELECT count(*) FROM log").await, 1);
    let steps = if db.is_pg() {
        "phased.steps"
    } else {
        "phased_steps"
    };
    let checkpoint = db.text(&format!("SELECT checkpoint FROM {steps}")).await;
    assert_eq!(checkpoint.as_deref(), Some(r#"{"statements_done":1}"#));

    db.execute("CREATE TABLE later (note text)").await;
    run_ok(&db, &p).await;
    assert_eq!(
        db.scalar("SELECT count(*) FROM log").await,
        1,
        "the first statement ran again on the rerun"
    );
    assert_eq!(db.scalar("SELECT count(*) FROM later").await, 1);
    let mut target = db.target("script-resume").await;
    let steps = phased::with_target!(&mut target, t => t.load_steps("script-resume").await)
        .expect("load steps");
    assert_eq!(steps[0].status, StepStatus::Done);
}
on_both!(a_rerun_resumes_after_the_last_completed_statement);
