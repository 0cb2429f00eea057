//! How the state is written when things go wrong: rollback's status and checkpoint in one
//! write, and a failure that cannot be recorded reported with the step's own error first.
//! Regression tests for the issue "One operation model".

use crate::common::{self, on_both, plan, run_ok, TestDb};

const BACKFILL: &str = r#"
plan: rollback-state
phases:
  - name: expand
    kind: expand
    steps:
      - add_column: { table: t, name: c, type: text }
  - name: backfill
    kind: migrate
    steps:
      - backfill: { table: t, set: { c: "'filled'" }, batch_size: 7, pause: 0s }
"#;

/// Rolling a backfill back used to write its status, then clear its checkpoint, in two writes:
/// a crash between them left a rolled-back backfill that the next run resumed past the end of
/// the table. A trigger on the state table plays the crash: it refuses any write that clears
/// the checkpoint of a step already marked rolled back, which only the second of two writes
/// would do. Rollback must go through, and the next run fill every row again.
async fn rollback_forgets_progress_in_the_same_write_as_the_status(db: TestDb) {
    db.execute("CREATE TABLE t (id integer PRIMARY KEY)").await;
    db.execute(if db.is_pg() {
        "INSERT INTO t SELECT generate_series(1, 30)"
    } else {
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 30) INSERT INTO t SELECT i FROM n"
    })
    .await;
    let p = plan(BACKFILL);
    run_ok(&db, &p).await;
    db.execute(if db.is_pg() {
        "CREATE FUNCTION crash() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'crash between two writes'; END $$; \
         CREATE TRIGGER crash BEFORE UPDATE ON phased.steps FOR EACH ROW \
         WHEN (OLD.status = 'rolled_back' AND NEW.checkpoint IS NULL AND OLD.checkpoint IS NOT NULL) EXECUTE FUNCTION crash()"
    } else {
        "CREATE TRIGGER crash BEFORE UPDATE ON phased_steps FOR EACH ROW \
         WHEN OLD.status = 'rolled_back' AND NEW.checkpoint IS NULL AND OLD.checkpoint IS NOT NULL \
         BEGIN SELECT RAISE(ABORT, 'crash between two writes'); END"
    })
    .await;
    let mut target = db.target(p.plan.id()).await;
    let mut events = phased::engine::events::Recorder::default();
    let undone = phased::with_target!(&mut target, t => phased::engine::rollback::rollback(
        t,
        &p,
        &phased::engine::rollback::RollbackOptions::default(),
        &mut events,
    )
    .await);
    assert!(
        undone.is_ok(),
        "rollback: {:?}",
        undone.err().map(|e| e.to_string())
    );
    let steps = if db.is_pg() {
        "phased.steps"
    } else {
        "phased_steps"
    };
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM {steps} WHERE checkpoint IS NOT NULL OR rows_done <> 0"
        ))
        .await,
        0
    );
    run_ok(&db, &p).await;
    assert_eq!(
        db.scalar("SELECT count(*) FROM t WHERE c = 'filled'").await,
        30
    );
}
on_both!(rollback_forgets_progress_in_the_same_write_as_the_status);

/// A step that loses its connection cannot record its own failure either; the error shown must
/// be the step's ("terminating connection …"), not the recording's ("connection closed").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_that_cannot_be_recorded_shows_the_steps_own_error_first() {
    let db = TestDb::pg().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("plan.yaml");
    std::fs::write(
        &file,
        r#"
plan: lost-connection
phases:
  - name: expand
    kind: expand
    steps:
      - sql: { up: "SELECT pg_terminate_backend(pg_backend_pid())", down: "SELECT 1" }
"#,
    )
    .expect("write plan");
    let out = common::phased_cmd()
        .args(["run", &file.display().to_string(), "--database", &db.url()])
        .output()
        .expect("phased run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let own = stderr
        .find("terminating connection due to administrator command")
        .unwrap_or_else(|| panic!("the step's own error is not shown:\n{stderr}"));
    if let Some(recording) = stderr.find("could not be recorded") {
        assert!(own < recording, "{stderr}");
    }
}

const WALK_BACK: &str = r#"
plan: walk-back
phases:
  - name: backfill
    kind: migrate
    steps:
      - backfill:
          table: t
          set: { c: "'new'" }
          batch_size: 7
          pause: 0s
          down: { set: { c: "'old'" }, where: "c = 'new'" }
"#;

async fn rollback_all(db: &TestDb, p: &phased::plan::LoadedPlan) -> Result<Vec<String>, String> {
    let mut target = db.target(p.plan.id()).await;
    let mut events = phased::engine::events::Recorder::default();
    phased::with_target!(&mut target, t => phased::engine::rollback::rollback(
        t,
        p,
        &phased::engine::rollback::RollbackOptions::default(),
        &mut events,
    )
    .await)
    .map_err(|e| e.to_string())
}

/// A backfill's `down: { set, where }` is walked in batches by the backfill engine, with its
/// own checkpoint: a walk that fails part-way leaves the step failed (not done), `rollback`
/// again resumes the walk, and the rows end up as they were.
async fn a_backfills_down_is_walked_in_batches_and_resumes(db: TestDb) {
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, c text NOT NULL)")
        .await;
    db.execute(if db.is_pg() {
        "INSERT INTO t SELECT i, 'old' FROM generate_series(1, 30) i"
    } else {
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 30) INSERT INTO t SELECT i, 'old' FROM n"
    })
    .await;
    let p = plan(WALK_BACK);
    run_ok(&db, &p).await;
    assert_eq!(
        db.scalar("SELECT count(*) FROM t WHERE c = 'new'").await,
        30
    );

    // The walk back stops at row 20: a trigger refuses to put it back.
    db.execute(if db.is_pg() {
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'row 20 refused'; END $$; \
         CREATE TRIGGER refuse BEFORE UPDATE ON t FOR EACH ROW WHEN (NEW.id = 20 AND NEW.c = 'old') EXECUTE FUNCTION refuse()"
    } else {
        "CREATE TRIGGER refuse BEFORE UPDATE ON t FOR EACH ROW WHEN NEW.id = 20 AND NEW.c = 'old' \
         BEGIN SELECT RAISE(ABORT, 'row 20 refused'); END"
    })
    .await;
    let failed = rollback_all(&db, &p).await;
    assert!(
        failed.as_ref().is_err_and(|e| e.contains("row 20 refused")),
        "{failed:?}"
    );
    // Batches of 7 committed before the one holding row 20: rows 1 to 14 are back.
    assert_eq!(
        db.scalar("SELECT count(*) FROM t WHERE c = 'old'").await,
        14
    );
    let steps = if db.is_pg() {
        "phased.steps"
    } else {
        "phased_steps"
    };
    assert_eq!(
        db.text(&format!("SELECT status FROM {steps}"))
            .await
            .as_deref(),
        Some("failed")
    );
    // The walk's own checkpoint (PostgreSQL keeps key values as text, SQLite as JSON values).
    let checkpoint: serde_json::Value = serde_json::from_str(
        &db.text(&format!("SELECT checkpoint FROM {steps}"))
            .await
            .expect("a checkpoint"),
    )
    .expect("JSON");
    let last = &checkpoint["down"][0];
    assert!(last == "14" || last == 14, "{checkpoint}");

    db.execute(if db.is_pg() {
        "DROP TRIGGER refuse ON t"
    } else {
        "DROP TRIGGER refuse"
    })
    .await;
    let undone = rollback_all(&db, &p).await;
    assert!(undone.is_ok(), "{undone:?}");
    assert_eq!(
        db.scalar("SELECT count(*) FROM t WHERE c = 'old'").await,
        30
    );
    assert_eq!(
        db.text(&format!("SELECT status FROM {steps}"))
            .await
            .as_deref(),
        Some("rolled_back")
    );

    // And a run after it fills every row again.
    run_ok(&db, &p).await;
    assert_eq!(
        db.scalar("SELECT count(*) FROM t WHERE c = 'new'").await,
        30
    );
}
on_both!(a_backfills_down_is_walked_in_batches_and_resumes);
