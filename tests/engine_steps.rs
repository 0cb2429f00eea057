//! Engine tests on both targets: every foundation step kind, resume after a fixed failure, drift,
//! and phase selection. Each test gets its own fresh database.

use phased::db::StepStatus;
use phased::engine::{EngineError, Event, RunOptions};

use crate::common::{on_both, pg, plan, plan_in, run, run_ok, TestDb};

const SCHEMA_STEPS: &str = r#"
plan: steps
phases:
  - name: expand
    kind: expand
    steps:
      - create_table:
          name: items
          columns:
            - { name: id, type: integer, primary_key: true }
            - { name: name, type: text, nullable: false }
            - { name: legacy, type: text }
      - create_table:
          name: scratch
          columns: [ { name: id, type: integer, primary_key: true } ]
      - sql: "INSERT INTO items (id, name, legacy) VALUES (1, 'One', 'x'), (2, 'Two', 'y'), (3, 'Three', 'z')"
      - add_column: { table: items, name: name_upper, type: text }
      - add_column: { table: items, name: score, type: integer, nullable: false, default: "7" }
      - create_index: { table: items, name: items_name_upper_idx, columns: [name_upper] }
      - create_index: { table: items, name: items_name_idx, columns: [name], unique: true, where: "name IS NOT NULL" }
  - name: migrate
    kind: migrate
    steps:
      - backfill: { table: items, set: { name_upper: "upper(name)" }, where: "name_upper IS NULL", batch_size: 2 }
  - name: switch
    kind: switch-flag
    steps:
      - flag: { name: use_upper, value: true }
  - name: contract
    kind: contract
    steps:
      - drop_index: { name: items_name_idx }
      - drop_column: { table: items, name: legacy }
      - drop_table: { name: scratch }
"#;

async fn every_schema_step_runs(db: TestDb) {
    let p = plan(SCHEMA_STEPS);
    run_ok(&db, &p).await;
    assert!(db.has_table("items").await);
    assert!(!db.has_table("scratch").await, "drop_table ran");
    assert!(db.has_column("items", "name_upper").await);
    assert!(!db.has_column("items", "legacy").await, "drop_column ran");
    assert!(db.has_index("items_name_upper_idx").await);
    assert!(!db.has_index("items_name_idx").await, "drop_index ran");
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE name_upper = upper(name)")
            .await,
        3
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE score = 7")
            .await,
        3
    );
    let flags = if db.is_pg() {
        "phased.flags"
    } else {
        "phased_flags"
    };
    assert_eq!(
        db.text(&format!(
            "SELECT value FROM {flags} WHERE name = 'use_upper'"
        ))
        .await
        .as_deref(),
        Some("true")
    );
    // A second run is a no-op: every step is skipped.
    let events = run_ok(&db, &p).await;
    assert!(
        !events.iter().any(|e| matches!(e, Event::StepStart { .. })),
        "{events:?}"
    );
    let steps = if db.is_pg() {
        "phased.steps"
    } else {
        "phased_steps"
    };
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM {steps} WHERE status = 'done'"
        ))
        .await,
        12
    );
}
on_both!(every_schema_step_runs);

async fn sql_file_and_non_transactional(db: TestDb) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("up.sql"), "CREATE TABLE from_file (id integer PRIMARY KEY);\nINSERT INTO from_file VALUES (1), (2);\n")
        .expect("write");
    let index = if db.is_pg() {
        "CREATE INDEX CONCURRENTLY from_file_id_idx ON from_file (id)"
    } else {
        "CREATE INDEX from_file_id_idx ON from_file (id)"
    };
    let yaml = format!(
        r#"
plan: files
phases:
  - name: expand
    kind: expand
    steps:
      - sql: {{ file: up.sql, down: "DROP TABLE from_file" }}
      - sql: {{ up: "{index}", transactional: false }}
"#
    );
    let p = plan_in(&yaml, dir.path());
    run_ok(&db, &p).await;
    assert_eq!(db.scalar("SELECT count(*) FROM from_file").await, 2);
    assert!(db.has_index("from_file_id_idx").await);
}
on_both!(sql_file_and_non_transactional);

const FAILING: &str = r#"
plan: resume
phases:
  - name: expand
    kind: expand
    steps:
      - create_table: { name: t, columns: [ { name: id, type: integer, primary_key: true } ] }
      - sql: "INSERT INTO missing_table VALUES (1)"
      - add_column: { table: t, name: c, type: text }
"#;

const FIXED: &str = r#"
plan: resume
phases:
  - name: expand
    kind: expand
    steps:
      - create_table: { name: t, columns: [ { name: id, type: integer, primary_key: true } ] }
      - sql: "INSERT INTO t VALUES (1)"
      - add_column: { table: t, name: c, type: text }
"#;

async fn resume_after_failed_sql_is_fixed(db: TestDb) {
    let (err, _) = run(&db, &plan(FAILING), RunOptions::default())
        .await
        .expect_err("the bad sql step fails");
    match &err {
        EngineError::StepFailed {
            step,
            sql,
            completed,
            ..
        } => {
            assert_eq!(step, "expand#2");
            assert_eq!(sql.as_deref(), Some("INSERT INTO missing_table VALUES (1)"));
            assert_eq!(completed.len(), 1, "{completed:?}");
        }
        other => panic!("expected StepFailed, got {other:?}"),
    }
    let steps = if db.is_pg() {
        "phased.steps"
    } else {
        "phased_steps"
    };
    assert_eq!(
        db.text(&format!("SELECT status FROM {steps} WHERE step_index = 1"))
            .await
            .as_deref(),
        Some("failed")
    );
    assert!(db
        .text(&format!(
            "SELECT last_error FROM {steps} WHERE step_index = 1"
        ))
        .await
        .unwrap_or_default()
        .contains("missing_table"));
    assert!(
        !db.has_column("t", "c").await,
        "nothing after the failed step ran"
    );

    // The failing step was never done, so changing it is a fix, not drift.
    let events = run_ok(&db, &plan(FIXED)).await;
    let started: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::StepStart { step, .. } => Some(format!("{}#{}", step.phase, step.step)),
            _ => None,
        })
        .collect();
    assert_eq!(
        started,
        vec!["expand#2", "expand#3"],
        "the done step is skipped"
    );
    assert_eq!(db.scalar("SELECT count(*) FROM t").await, 1);
    assert!(db.has_column("t", "c").await);
    assert_eq!(
        db.scalar(&format!(
            "SELECT CAST(attempts AS bigint) FROM {steps} WHERE step_index = 1"
        ))
        .await,
        2
    );
}
on_both!(resume_after_failed_sql_is_fixed);

async fn drift_is_refused(db: TestDb) {
    run_ok(&db, &plan(FIXED)).await;
    let changed = FIXED.replace("INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (2)");
    let changed = changed.replace(
        "name: c, type: text",
        "name: c, type: text }\n      - add_column: { table: t, name: d, type: text",
    );
    let (err, events) = run(&db, &plan(&changed), RunOptions::default())
        .await
        .expect_err("drift");
    match err {
        EngineError::Drift { step, .. } => assert_eq!(step, "expand#2"),
        other => panic!("expected drift, got {other:?}"),
    }
    assert!(events.is_empty(), "nothing ran: {events:?}");
    assert!(!db.has_column("t", "d").await);
    assert_eq!(db.scalar("SELECT count(*) FROM t WHERE id = 2").await, 0);
}
on_both!(drift_is_refused);

const THREE_PHASES: &str = r#"
plan: order
phases:
  - name: one
    kind: expand
    steps:
      - create_table: { name: a, columns: [ { name: id, type: integer, primary_key: true } ] }
  - name: two
    kind: expand
    steps:
      - create_table: { name: b, columns: [ { name: id, type: integer, primary_key: true } ] }
  - name: three
    kind: contract
    steps:
      - drop_table: { name: a }
"#;

async fn phase_and_until_keep_order(db: TestDb) {
    let p = plan(THREE_PHASES);
    let only = |name: &str| RunOptions {
        phase: Some(name.to_string()),
        ..RunOptions::default()
    };
    let (err, _) = run(&db, &p, only("two"))
        .await
        .expect_err("one is not done");
    assert!(
        matches!(err, EngineError::GateNotMet(ref m) if m.contains("`one` is not done")),
        "{err}"
    );
    assert!(!db.has_table("b").await);

    run(
        &db,
        &p,
        RunOptions {
            until: Some("two".into()),
            ..RunOptions::default()
        },
    )
    .await
    .map_err(|(e, _)| e)
    .expect("until two");
    assert!(db.has_table("a").await && db.has_table("b").await);

    run(&db, &p, only("three"))
        .await
        .map_err(|(e, _)| e)
        .expect("three");
    assert!(!db.has_table("a").await);

    let (err, _) = run(&db, &p, only("nope")).await.expect_err("unknown phase");
    assert!(
        matches!(err, EngineError::Usage(ref m) if m.contains("one, two, three")),
        "{err}"
    );
}
on_both!(phase_and_until_keep_order);

async fn status_reports_every_step(db: TestDb) {
    let _ = run(&db, &plan(FAILING), RunOptions::default()).await;
    let p = plan(FAILING);
    let mut target = db.target("resume").await;
    let status =
        phased::with_target!(&mut target, t => phased::engine::status::status(t, &p.plan).await)
            .expect("status");
    let steps = &status.phases[0].steps;
    assert_eq!(steps.len(), 3);
    assert_eq!(steps[0].status, StepStatus::Done);
    assert_eq!(steps[1].status, StepStatus::Failed);
    assert!(steps[1]
        .last_error
        .as_deref()
        .unwrap_or("")
        .contains("missing_table"));
    assert_eq!(steps[2].status, StepStatus::Pending);
    assert_eq!(status.phases[0].status, "failed");
}
on_both!(status_reports_every_step);

/// What a `dual_write` trigger does with each write: fills the new column of a row inserted
/// without it, keeps one the writer gave, recomputes it when an update changed the old column
/// and left the new one as it was, and keeps what an update set the new column to.
async fn dual_write_fills_what_the_writer_left(db: TestDb) {
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, email text, email_lower text)")
        .await;
    let p = plan(
        r#"
plan: writes
phases:
  - name: expand
    kind: expand
    steps:
      - dual_write: { table: t, set: { email_lower: "lower(NEW.email)" } }
"#,
    );
    run_ok(&db, &p).await;
    let lower = |id: i32| {
        let db = &db;
        async move {
            db.text(&format!("SELECT email_lower FROM t WHERE id = {id}"))
                .await
        }
    };
    db.execute("INSERT INTO t (id, email) VALUES (1, 'A@X')")
        .await;
    db.execute("INSERT INTO t (id, email, email_lower) VALUES (2, 'B@X', 'given')")
        .await;
    assert_eq!(lower(1).await.as_deref(), Some("a@x"), "filled on insert");
    assert_eq!(lower(2).await.as_deref(), Some("given"), "kept on insert");
    db.execute("UPDATE t SET email = 'C@Y' WHERE id = 1").await;
    assert_eq!(
        lower(1).await.as_deref(),
        Some("c@y"),
        "recomputed on update"
    );
    db.execute("UPDATE t SET email = 'D@Y', email_lower = 'set' WHERE id = 1")
        .await;
    assert_eq!(lower(1).await.as_deref(), Some("set"), "kept on update");
    db.execute("UPDATE t SET email_lower = 'new' WHERE id = 2")
        .await;
    assert_eq!(
        lower(2).await.as_deref(),
        Some("new"),
        "an update of it alone"
    );
}
on_both!(dual_write_fills_what_the_writer_left);

/// On PostgreSQL the trigger's function is not called for an UPDATE that changed every column
/// it fills — the backfill's every row, which would pay a PL/pgSQL call for nothing — and is
/// for one that left any of them as it was. Counted by the session's own function statistics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_write_is_not_called_for_updates_that_set_its_columns_on_postgres() {
    let db = TestDb::pg().await;
    db.execute(
        "CREATE TABLE t (id integer PRIMARY KEY, email text, email_lower text, email_upper text); \
         INSERT INTO t (id, email) SELECT i, 'User' || i FROM generate_series(1, 10) i",
    )
    .await;
    let p = plan(
        r#"
plan: calls
phases:
  - name: expand
    kind: expand
    steps:
      - dual_write: { table: t, set: { email_lower: "lower(NEW.email)", email_upper: "upper(NEW.email)" } }
"#,
    );
    run_ok(&db, &p).await;
    let client = pg(&db).client().await;
    client
        .batch_execute("SET track_functions = 'pl'; BEGIN")
        .await
        .expect("begin");
    let calls = || async {
        client
            .query_one(
                "SELECT coalesce(pg_stat_get_xact_function_calls('phased.phased_dual_write_t'::regproc), 0)",
                &[],
            )
            .await
            .expect("calls")
            .get::<_, i64>(0)
    };
    // What a backfill sends: every new column set.
    client
        .batch_execute("UPDATE t SET email_lower = lower(email), email_upper = upper(email)")
        .await
        .expect("update");
    assert_eq!(calls().await, 0);
    // One left as it was (and still NULL): called, and it fills it.
    client
        .batch_execute("UPDATE t SET email_lower = 'x' || email WHERE id <= 3")
        .await
        .expect("update");
    assert_eq!(calls().await, 3);
    client
        .batch_execute("UPDATE t SET email = email || '!' WHERE id = 4")
        .await
        .expect("update");
    assert_eq!(calls().await, 4);
    client.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(
        db.text("SELECT email_lower || ' ' || email_upper FROM t WHERE id = 4")
            .await
            .as_deref(),
        Some("user4! USER4!")
    );
}

/// A `dual_write`'s `set` runs in the order written (PostgreSQL assigns `NEW.…` one after the
/// other), so an expression can use a column assigned before it; it used to run sorted by
/// column name, so `b_from_z` below saw `z_first` still NULL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_write_assigns_in_the_written_order_on_postgres() {
    let db = TestDb::pg().await;
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, src text, z_first text, b_from_z text)")
        .await;
    let p = plan(
        r#"
plan: order
phases:
  - name: expand
    kind: expand
    steps:
      - dual_write: { table: t, set: { z_first: "upper(NEW.src)", b_from_z: "NEW.z_first || '!'" } }
"#,
    );
    run_ok(&db, &p).await;
    db.execute("INSERT INTO t (id, src) VALUES (1, 'a')").await;
    assert_eq!(
        db.text("SELECT b_from_z FROM t WHERE id = 1")
            .await
            .as_deref(),
        Some("A!")
    );
}
