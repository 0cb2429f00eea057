//! Backfills on both targets: killed with SIGKILL and resumed, every kind of key, a `where:`,
//! an application writing meanwhile, `batch_size: auto` adapting, the throttle file, and the
//! errors for keys it cannot walk. Assertions read the state and the rows, never the clock.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use phased::engine::{Event, RunOptions};

use crate::common::{plan, run, run_ok, TestDb};

/// The state table holding step records, per dialect.
fn steps_table(db: &TestDb) -> &'static str {
    if db.is_pg() {
        "phased.steps"
    } else {
        "phased_steps"
    }
}

/// Creates `items (id, v, touched, filled)` with `rows` rows, ids 1..=rows, v = id.
async fn seed_items(db: &TestDb, rows: i64) {
    let sql = if db.is_pg() {
        format!(
            "CREATE TABLE items (id bigint PRIMARY KEY, v integer NOT NULL, touched integer NOT NULL DEFAULT 0, filled text);
             INSERT INTO items (id, v) SELECT i, i FROM generate_series(1, {rows}) AS i;"
        )
    } else {
        format!(
            "CREATE TABLE items (id INTEGER PRIMARY KEY, v INTEGER NOT NULL, touched INTEGER NOT NULL DEFAULT 0, filled TEXT);
             INSERT INTO items (id, v) WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) SELECT i, i FROM n;"
        )
    };
    db.execute(&sql).await;
}

/// Creates the state tables, so a test can watch them from the first batch on.
async fn ensure_state(db: &TestDb, plan_id: &str) {
    let mut target = db.target(plan_id).await;
    phased::with_target!(&mut target, t => t.ensure_state().await).expect("state tables");
}

async fn rows_done(db: &TestDb, plan_id: &str) -> i64 {
    db.scalar(&format!(
        "SELECT COALESCE((SELECT max(rows_done) FROM {} WHERE plan = '{plan_id}' AND kind = 'backfill'), 0)",
        steps_table(db)
    ))
    .await
}

/// The backfill progress events of a run: (rows_done, batch_size, paused).
fn progress(events: &[Event]) -> Vec<(u64, u64, Option<String>)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::BackfillProgress {
                rows_done,
                batch_size,
                paused,
                ..
            } => Some((*rows_done, *batch_size, paused.clone())),
            _ => None,
        })
        .collect()
}

fn write_plan(dir: &Path, yaml: &str) -> PathBuf {
    let path = dir.join("plan.yaml");
    std::fs::write(&path, yaml).expect("write plan");
    path
}

fn spawn_run(db: &TestDb, plan: &Path) -> Child {
    std::process::Command::new(assert_cmd::cargo::cargo_bin("phased"))
        .arg("run")
        .arg(plan)
        .arg("--database")
        .arg(db.url())
        .arg("--format")
        .arg("json")
        .env_remove("DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start phased")
}

/// Polls until `rows_done` reaches `at_least`; a guard (not an assertion on speed) stops a
/// test that would otherwise hang.
async fn wait_for_rows(db: &TestDb, plan_id: &str, at_least: i64, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if rows_done(db, plan_id).await >= at_least {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("phased exited ({status}) before the backfill reached {at_least} rows");
        }
        assert!(
            Instant::now() < deadline,
            "the backfill never reached {at_least} rows"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const KILL_PLAN: &str = r#"
plan: killed
phases:
  - name: backfill
    kind: migrate
    steps:
      - backfill:
          table: items
          set: { touched: "touched + 1", filled: "'v' || v" }
          batch_size: 200
          pause: 20ms
"#;

/// SIGKILL the real CLI mid-backfill, then run it again: the checkpoint had advanced and matched
/// the committed rows exactly, the rerun starts from it, and every row is touched exactly once.
async fn killed_mid_backfill_resumes_from_the_checkpoint(db: TestDb) {
    const ROWS: i64 = 20_000;
    seed_items(&db, ROWS).await;
    ensure_state(&db, "killed").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let plan_path = write_plan(dir.path(), KILL_PLAN);

    let mut child = spawn_run(&db, &plan_path);
    wait_for_rows(&db, "killed", 1_000, &mut child).await;
    child.kill().expect("SIGKILL phased");
    let status = child.wait().expect("reap phased");
    assert!(!status.success(), "phased was killed, not finished");

    let table = steps_table(&db);
    let done_at_kill = rows_done(&db, "killed").await;
    assert!(
        (1_000..ROWS).contains(&done_at_kill),
        "the checkpoint had advanced but not finished: {done_at_kill}"
    );
    assert_eq!(
        db.text(&format!("SELECT status FROM {table} WHERE plan = 'killed'"))
            .await
            .as_deref(),
        Some("running"),
        "a killed run leaves its step running"
    );
    let checkpoint = db
        .text(&format!(
            "SELECT checkpoint FROM {table} WHERE plan = 'killed'"
        ))
        .await
        .expect("a checkpoint");
    // Work and checkpoint commit together: the rows touched are exactly those up to the
    // checkpoint, and the count the state recorded.
    let last_key: Vec<serde_json::Value> = serde_json::from_str(&checkpoint).expect("json key");
    let last_id: i64 = match &last_key[0] {
        serde_json::Value::String(s) => s.parse().expect("numeric key"),
        other => other.as_i64().expect("numeric key"),
    };
    assert_eq!(
        last_id, done_at_kill,
        "ids are 1..n, so the last key is the count"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE touched = 1")
            .await,
        done_at_kill
    );
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM items WHERE touched = 0 AND id > {last_id}"
        ))
        .await,
        ROWS - done_at_kill
    );

    // `status` shows where it stopped.
    let status = crate::common::phased_cmd()
        .arg("status")
        .arg(&plan_path)
        .arg("--database")
        .arg(db.url())
        .output()
        .expect("phased status");
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(
        stdout.contains(&format!(
            "{done_at_kill} rows written, {} remaining",
            ROWS - done_at_kill
        )) && stdout.contains("rows/s")
            && stdout.contains(&format!("checkpoint key {checkpoint}")),
        "status output:\n{stdout}"
    );

    // The rerun resumes: its first progress report starts at the checkpoint's count.
    let rerun = crate::common::phased_cmd()
        .arg("run")
        .arg(&plan_path)
        .arg("--database")
        .arg(db.url())
        .arg("--format")
        .arg("json")
        .output()
        .expect("phased run");
    let stdout = String::from_utf8_lossy(&rerun.stdout);
    assert!(
        rerun.status.success(),
        "rerun failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    let reports: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "backfill_progress")
        .collect();
    assert_eq!(
        reports.first().map(|r| r["rows_done"].as_i64()),
        Some(Some(done_at_kill)),
        "the rerun starts from the checkpoint: {reports:?}"
    );
    assert_eq!(
        reports.last().map(|r| r["rows_done"].as_i64()),
        Some(Some(ROWS))
    );

    assert_eq!(rows_done(&db, "killed").await, ROWS);
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM items WHERE touched <> 1 OR filled IS NULL OR filled <> 'v' || v"
        )
        .await,
        0,
        "every row processed exactly once"
    );
    assert_eq!(
        db.text(&format!("SELECT status FROM {table} WHERE plan = 'killed'"))
            .await
            .as_deref(),
        Some("done")
    );
}

#[tokio::test]
async fn pg_killed_mid_backfill_resumes_from_the_checkpoint() {
    killed_mid_backfill_resumes_from_the_checkpoint(TestDb::pg().await).await;
}

#[tokio::test]
async fn sqlite_killed_mid_backfill_resumes_from_the_checkpoint() {
    killed_mid_backfill_resumes_from_the_checkpoint(TestDb::sqlite()).await;
}

/// A one-step backfill plan with small batches (and a short pause unless `extra` sets one).
fn backfill_plan(table: &str, set: &str, extra: &str) -> String {
    let extra = if extra.contains("pause:") {
        extra.to_string()
    } else {
        format!("          pause: 5ms\n{extra}")
    };
    format!(
        r#"
plan: fill
phases:
  - name: backfill
    kind: migrate
    steps:
      - backfill:
          table: {table}
          set: {set}
          batch_size: 37
{extra}
"#
    )
}

/// A composite key whose first column repeats across batch boundaries, and a text key.
async fn composite_and_text_keys(db: TestDb) {
    db.execute(
        "CREATE TABLE pairs (a integer NOT NULL, b text NOT NULL, v integer NOT NULL, filled text, PRIMARY KEY (a, b));
         CREATE TABLE words (k text PRIMARY KEY, v integer NOT NULL, filled text);",
    )
    .await;
    let seed = if db.is_pg() {
        "INSERT INTO pairs (a, b, v) SELECT i % 7, 'k' || i, i FROM generate_series(1, 1000) AS i;
         INSERT INTO words (k, v) SELECT 'Key-' || (i * 7919 % 1000) || CASE WHEN i % 2 = 0 THEN ' x' ELSE '' END, i FROM generate_series(1, 1000) AS i;"
    } else {
        "INSERT INTO pairs (a, b, v) WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000) SELECT i % 7, 'k' || i, i FROM n;
         INSERT INTO words (k, v) WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000) SELECT 'Key-' || (i * 7919 % 1000) || CASE WHEN i % 2 = 0 THEN ' x' ELSE '' END, i FROM n;"
    };
    db.execute(seed).await;

    let pairs = plan(&backfill_plan(
        "pairs",
        r#"{ filled: "b || '/' || v" }"#,
        "",
    ));
    let events = run_ok(&db, &pairs).await;
    assert_eq!(progress(&events).last().map(|p| p.0), Some(1000));
    assert_eq!(
        db.scalar("SELECT count(*) FROM pairs WHERE filled IS NULL OR filled <> b || '/' || v")
            .await,
        0
    );
    assert_eq!(rows_done(&db, "fill").await, 1000);

    let words = plan(
        &backfill_plan("words", r#"{ filled: "upper(k)" }"#, "")
            .replace("plan: fill", "plan: fill-words"),
    );
    run_ok(&db, &words).await;
    assert_eq!(
        db.scalar("SELECT count(*) FROM words WHERE filled IS NULL OR filled <> upper(k)")
            .await,
        0
    );
    assert_eq!(rows_done(&db, "fill-words").await, 1000);
}

#[tokio::test]
async fn pg_composite_and_text_keys() {
    composite_and_text_keys(TestDb::pg().await).await;
}

#[tokio::test]
async fn sqlite_composite_and_text_keys() {
    composite_and_text_keys(TestDb::sqlite()).await;
}

#[tokio::test]
async fn pg_uuid_key() {
    let db = TestDb::pg().await;
    db.execute(
        "CREATE TABLE tokens (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), v integer NOT NULL, filled text);
         INSERT INTO tokens (v) SELECT i FROM generate_series(1, 1000) AS i;",
    )
    .await;
    run_ok(
        &db,
        &plan(&backfill_plan(
            "tokens",
            r#"{ filled: "id::text || v" }"#,
            "",
        )),
    )
    .await;
    assert_eq!(
        db.scalar("SELECT count(*) FROM tokens WHERE filled IS NULL OR filled <> id::text || v")
            .await,
        0
    );
    assert_eq!(rows_done(&db, "fill").await, 1000);
}

/// Rows the `where:` excludes stay untouched and are not counted.
async fn where_excludes_rows(db: TestDb) {
    seed_items(&db, 3000).await;
    let p = plan(&backfill_plan(
        "items",
        r#"{ filled: "'v' || v" }"#,
        r#"          where: "v % 3 <> 0""#,
    ));
    let events = run_ok(&db, &p).await;
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE v % 3 = 0 AND filled IS NOT NULL")
            .await,
        0,
        "excluded rows untouched"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE v % 3 <> 0 AND (filled IS NULL OR filled <> 'v' || v)")
            .await,
        0
    );
    assert_eq!(rows_done(&db, "fill").await, 2000);
    assert_eq!(
        db.scalar(&format!(
            "SELECT rows_total FROM {} WHERE plan = 'fill'",
            steps_table(&db)
        ))
        .await,
        2000
    );
    assert_eq!(progress(&events).last().map(|p| p.0), Some(2000));
}

#[tokio::test]
async fn pg_where_excludes_rows() {
    where_excludes_rows(TestDb::pg().await).await;
}

#[tokio::test]
async fn sqlite_where_excludes_rows() {
    where_excludes_rows(TestDb::sqlite()).await;
}

const DUAL_WRITE_PLAN: &str = r#"
plan: emails
phases:
  - name: expand
    kind: expand
    steps:
      - add_column: { table: accounts, name: email_lower, type: text }
      - dual_write: { table: accounts, set: { email_lower: "lower(NEW.email)" } }
  - name: backfill
    kind: migrate
    steps:
      - backfill:
          table: accounts
          set: { email_lower: "lower(email)" }
          where: "email_lower IS NULL"
          batch_size: 100
          pause: 10ms
"#;

/// An application session writing through one connection (the "old app": it knows nothing of
/// `email_lower`).
enum App {
    Pg(tokio_postgres::Client),
    Sqlite(rusqlite::Connection),
}

impl App {
    async fn open(db: &TestDb) -> App {
        match db {
            TestDb::Pg(p) => App::Pg(p.client().await),
            TestDb::Sqlite(s) => App::Sqlite(s.conn()),
        }
    }

    async fn exec(&self, sql: &str) {
        match self {
            App::Pg(c) => {
                c.batch_execute(sql)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
            App::Sqlite(c) => c
                .execute_batch(sql)
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
        }
    }

    async fn rows_done(&self, table: &str) -> i64 {
        let sql = format!(
            "SELECT COALESCE((SELECT max(rows_done) FROM {table} WHERE plan = 'emails' AND kind = 'backfill'), 0)"
        );
        match self {
            App::Pg(c) => c.query_one(&sql, &[]).await.expect("rows_done").get(0),
            App::Sqlite(c) => c.query_row(&sql, [], |r| r.get(0)).expect("rows_done"),
        }
    }
}

/// Rows inserted, updated and deleted by the old app while the backfill runs all end correct.
async fn concurrent_writes_with_dual_write_end_correct(db: TestDb) {
    const ROWS: i64 = 5000;
    let seed = if db.is_pg() {
        format!("CREATE TABLE accounts (id bigint PRIMARY KEY, email text NOT NULL);
                 INSERT INTO accounts SELECT i, 'User' || i || '@Example.COM' FROM generate_series(1, {ROWS}) AS i;")
    } else {
        format!("CREATE TABLE accounts (id INTEGER PRIMARY KEY, email TEXT NOT NULL);
                 INSERT INTO accounts WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS}) SELECT i, 'User' || i || '@Example.COM' FROM n;")
    };
    db.execute(&seed).await;
    let p = plan(DUAL_WRITE_PLAN);
    run(
        &db,
        &p,
        RunOptions {
            until: Some("expand".into()),
            ..Default::default()
        },
    )
    .await
    .map_err(|(e, _)| e.to_string())
    .expect("expand");
    ensure_state(&db, "emails").await;

    let dir = tempfile::tempdir().expect("temp dir");
    let throttle = dir.path().join("hold");
    let table = steps_table(&db);
    let app = App::open(&db).await;
    let hold = throttle.clone();
    let writer = async move {
        // Once the backfill has committed a batch, hold it with the throttle file while the old
        // app writes behind and ahead of the checkpoint, then keep writing until it ends.
        while app.rows_done(table).await == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        std::fs::write(&hold, "").expect("throttle file");
        for i in 0..50i64 {
            let id = 1 + (i * 97) % ROWS;
            app.exec(&format!(
                "UPDATE accounts SET email = 'Changed' || {i} || '@MAIL.org' WHERE id = {id}"
            ))
            .await;
            app.exec(&format!(
                "INSERT INTO accounts (id, email) VALUES ({}, 'New{i}@Example.COM')",
                ROWS + 1 + i
            ))
            .await;
            // Let the backfill (on this same thread) reach its throttle check meanwhile.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        app.exec("DELETE FROM accounts WHERE id IN (2, 4000)").await;
        let done_while_writing = app.rows_done(table).await;
        std::fs::remove_file(&hold).expect("remove throttle file");
        done_while_writing
    };
    let options = RunOptions {
        phase: Some("backfill".into()),
        throttle_file: Some(throttle.clone()),
        ..Default::default()
    };
    let (result, done_while_writing) = tokio::join!(run(&db, &p, options), writer);
    let events = result.map_err(|(e, _)| e.to_string()).expect("backfill");
    assert!(
        done_while_writing > 0 && done_while_writing < ROWS,
        "the old app wrote while the backfill was mid-way ({done_while_writing} rows done)"
    );
    assert!(
        progress(&events).iter().any(|p| p.2.is_some()),
        "the backfill waited for the writes"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM accounts").await,
        ROWS + 50 - 2
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM accounts WHERE email_lower IS NULL OR email_lower <> lower(email)")
            .await,
        0,
        "every row, old or written meanwhile, is correct"
    );
}

#[tokio::test]
async fn pg_concurrent_writes_with_dual_write_end_correct() {
    concurrent_writes_with_dual_write_end_correct(TestDb::pg().await).await;
}

#[tokio::test]
async fn sqlite_concurrent_writes_with_dual_write_end_correct() {
    concurrent_writes_with_dual_write_end_correct(TestDb::sqlite()).await;
}

/// `batch_size: auto` starts at 1000 rows and shrinks toward the target batch time when each
/// row is made slow.
async fn auto_batch_size_shrinks_when_batches_are_slow(db: TestDb, rows: i64, slow: &str) {
    seed_items(&db, rows).await;
    let p = plan(&format!(
        r#"
plan: auto
phases:
  - name: backfill
    kind: migrate
    steps:
      - backfill:
          table: items
          set: {{ touched: "{slow}" }}
          batch_size: auto
          target_batch_time: 200ms
"#
    ));
    let events = run_ok(&db, &p).await;
    let reports = progress(&events);
    assert_eq!(
        reports.first().map(|r| r.1),
        Some(phased::engine::backfill::AUTO_START)
    );
    let last = reports.last().map(|r| r.1).expect("reports");
    assert!(
        last <= phased::engine::backfill::AUTO_START / 2,
        "batch size shrank from {} to {last}: {reports:?}",
        phased::engine::backfill::AUTO_START
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE touched <> 1")
            .await,
        0
    );
}

#[tokio::test]
async fn pg_auto_batch_size_shrinks_when_batches_are_slow() {
    let db = TestDb::pg().await;
    // Each row sleeps 2ms: a 1000-row batch takes 2s against a 200ms target.
    db.execute(
        "CREATE FUNCTION slow_one() RETURNS integer LANGUAGE plpgsql VOLATILE AS $$ BEGIN PERFORM pg_sleep(0.002); RETURN 1; END $$",
    )
    .await;
    auto_batch_size_shrinks_when_batches_are_slow(db, 1500, "slow_one()").await;
}

#[tokio::test]
async fn sqlite_auto_batch_size_shrinks_when_batches_are_slow() {
    // SQLite has no sleep: each row counts to 20,000 in a correlated recursive query.
    let slow = "(WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20000 + 0 * items.id) SELECT count(*) FROM c) / 20000";
    auto_batch_size_shrinks_when_batches_are_slow(TestDb::sqlite(), 1500, slow).await;
}

/// With quick batches, `batch_size: auto` grows past its starting size.
async fn auto_batch_size_grows_when_batches_are_fast(db: TestDb) {
    seed_items(&db, 30_000).await;
    let p = plan(
        r#"
plan: auto
phases:
  - name: backfill
    kind: migrate
    steps:
      - backfill: { table: items, set: { touched: "1" }, batch_size: auto, target_batch_time: 2s }
"#,
    );
    let reports = progress(&run_ok(&db, &p).await);
    let largest = reports.iter().map(|r| r.1).max().unwrap_or(0);
    assert!(
        largest > phased::engine::backfill::AUTO_START,
        "batch size grew: {reports:?}"
    );
    assert_eq!(rows_done(&db, "auto").await, 30_000);
}

#[tokio::test]
async fn pg_auto_batch_size_grows_when_batches_are_fast() {
    auto_batch_size_grows_when_batches_are_fast(TestDb::pg().await).await;
}

#[tokio::test]
async fn sqlite_auto_batch_size_grows_when_batches_are_fast() {
    auto_batch_size_grows_when_batches_are_fast(TestDb::sqlite()).await;
}

/// The throttle file, created while the backfill runs, pauses it and says so; removing the file
/// resumes it to the end.
async fn throttle_file_pauses_and_resumes(db: TestDb) {
    const ROWS: i64 = 5000;
    seed_items(&db, ROWS).await;
    ensure_state(&db, "fill").await;
    let p = plan(&backfill_plan(
        "items",
        r#"{ filled: "'v' || v" }"#,
        "          pause: 10ms",
    ));
    let dir = tempfile::tempdir().expect("temp dir");
    let throttle = dir.path().join("pause-deploys");
    let app = App::open(&db).await;
    let table = steps_table(&db);
    let file = throttle.clone();
    let operator = async move {
        loop {
            let sql = format!(
                "SELECT COALESCE((SELECT max(rows_done) FROM {table} WHERE plan = 'fill'), 0)"
            );
            let done: i64 = match &app {
                App::Pg(c) => c.query_one(&sql, &[]).await.expect("rows_done").get(0),
                App::Sqlite(c) => c.query_row(&sql, [], |r| r.get(0)).expect("rows_done"),
            };
            if done > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        std::fs::write(&file, "").expect("throttle file");
        tokio::time::sleep(Duration::from_secs(1)).await;
        std::fs::remove_file(&file).expect("remove throttle file");
    };
    let options = RunOptions {
        throttle_file: Some(throttle.clone()),
        ..Default::default()
    };
    let (result, ()) = tokio::join!(run(&db, &p, options), operator);
    let events = result.map_err(|(e, _)| e.to_string()).expect("backfill");
    let reports = progress(&events);
    let paused_at = reports
        .iter()
        .position(|r| r.2.as_deref().is_some_and(|m| m.contains("throttle file")))
        .unwrap_or_else(|| panic!("a paused report: {reports:?}"));
    let (done_when_paused, _, _) = reports[paused_at];
    assert!(
        done_when_paused > 0 && (done_when_paused as i64) < ROWS,
        "paused mid-way: {reports:?}"
    );
    let (done_when_resumed, _, reason) = &reports[paused_at + 1];
    assert_eq!(reason, &None, "resumed: {reports:?}");
    assert_eq!(
        *done_when_resumed, done_when_paused,
        "no batch ran while paused"
    );
    assert_eq!(reports.last().map(|r| r.0), Some(ROWS as u64));
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE filled IS NULL")
            .await,
        0
    );
}

#[tokio::test]
async fn pg_throttle_file_pauses_and_resumes() {
    throttle_file_pauses_and_resumes(TestDb::pg().await).await;
}

#[tokio::test]
async fn sqlite_throttle_file_pauses_and_resumes() {
    throttle_file_pauses_and_resumes(TestDb::sqlite()).await;
}

/// The step's error message, from a run expected to fail.
async fn failure(db: &TestDb, yaml: &str) -> String {
    match run(db, &plan(yaml), RunOptions::default()).await {
        Ok(_) => panic!("the run should have failed"),
        Err((e, _)) => e.to_string(),
    }
}

#[tokio::test]
async fn pg_table_without_primary_key_asks_for_a_key() {
    let db = TestDb::pg().await;
    db.execute(
        "CREATE TABLE logs (line text NOT NULL, filled text); INSERT INTO logs VALUES ('a', NULL);",
    )
    .await;
    let error = failure(&db, &backfill_plan("logs", r#"{ filled: "line" }"#, "")).await;
    assert!(
        error.contains("table `logs` has no primary key") && error.contains("`key: [column, …]`"),
        "{error}"
    );
}

/// A `key:` is checked before any batch: its columns exist, are NOT NULL and are unique.
async fn named_key_is_checked(db: TestDb) {
    db.execute(
        "CREATE TABLE people (id integer PRIMARY KEY, email text NOT NULL, nick text, team integer NOT NULL, filled text);
         CREATE UNIQUE INDEX people_email ON people (email);
         INSERT INTO people VALUES (1, 'a@x', NULL, 1, NULL), (2, 'b@x', 'bee', 1, NULL), (3, 'c@x', NULL, 2, NULL);",
    )
    .await;
    let with_key = |key: &str| {
        backfill_plan(
            "people",
            r#"{ filled: "upper(email)" }"#,
            &format!("          key: {key}"),
        )
    };

    let error = failure(&db, &with_key("[mail]")).await;
    assert!(
        error.contains("names column `mail`, which table `people` does not have")
            && error.contains("id, email, nick, team, filled"),
        "{error}"
    );
    let error = failure(&db, &with_key("[nick]")).await;
    assert!(error.contains("`people.nick` is nullable"), "{error}");
    let error = failure(&db, &with_key("[team]")).await;
    assert!(
        error.contains("is not covered by a unique index"),
        "{error}"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM people WHERE filled IS NOT NULL")
            .await,
        0,
        "nothing ran with a bad key"
    );

    run_ok(&db, &plan(&with_key("[email]"))).await;
    assert_eq!(
        db.scalar("SELECT count(*) FROM people WHERE filled = upper(email)")
            .await,
        3
    );
}

#[tokio::test]
async fn pg_named_key_is_checked() {
    named_key_is_checked(TestDb::pg().await).await;
}

#[tokio::test]
async fn sqlite_named_key_is_checked() {
    named_key_is_checked(TestDb::sqlite()).await;
}

/// With no replica attached, `max_replica_lag` reads `pg_stat_replication` and never pauses.
#[tokio::test]
async fn pg_max_replica_lag_without_replicas_never_pauses() {
    let db = TestDb::pg().await;
    seed_items(&db, 2000).await;
    let events = run_ok(
        &db,
        &plan(&backfill_plan(
            "items",
            r#"{ filled: "'v' || v" }"#,
            "          max_replica_lag: 1s",
        )),
    )
    .await;
    assert!(progress(&events).iter().all(|r| r.2.is_none()));
    assert_eq!(rows_done(&db, "fill").await, 2000);
}

/// Off a terminal, progress is a plain line every few seconds, and the last one always shows.
#[tokio::test]
async fn sqlite_plain_progress_ends_with_the_final_count() {
    let db = TestDb::sqlite();
    seed_items(&db, 3000).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let plan_path = write_plan(
        dir.path(),
        &backfill_plan("items", r#"{ filled: "'v' || v" }"#, ""),
    );
    let output = crate::common::phased_cmd()
        .arg("run")
        .arg(&plan_path)
        .arg("--database")
        .arg(db.url())
        .output()
        .expect("phased run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("backfill#1 backfill items (filled): 3000/3000 rows ("),
        "{stderr}"
    );
}

/// A batch that meets a lock held past `lock_timeout` fails, is retried like any step, and the
/// retry resumes from the checkpoint: every row is touched exactly once.
async fn lock_timeout_retries_from_the_checkpoint(db: TestDb) {
    const ROWS: i64 = 3000;
    seed_items(&db, ROWS).await;
    ensure_state(&db, "locked").await;
    let p = plan(
        r#"
plan: locked
defaults:
  lock_timeout: 100ms
  retry: { attempts: 100, backoff: 20ms, max_backoff: 100ms }
phases:
  - name: backfill
    kind: migrate
    steps:
      - backfill: { table: items, set: { touched: "touched + 1" }, batch_size: 100, pause: 10ms }
"#,
    );
    let app = App::open(&db).await;
    let table = steps_table(&db);
    let pg = db.is_pg();
    // PostgreSQL: a row lock ahead, taken before the run and held until the batch that meets
    // it has timed out and been retried (a condition, not a time: on a loaded machine the
    // backfill may take any time to get there).
    if pg {
        app.exec("BEGIN; SELECT * FROM items WHERE id = 2500 FOR UPDATE")
            .await;
    }
    let holder = move || async move {
        if pg {
            let sql = format!(
                "SELECT COALESCE((SELECT max(attempts) FROM {table} WHERE plan = 'locked'), 0)"
            );
            loop {
                let attempts: i32 = match &app {
                    App::Pg(c) => c.query_one(&sql, &[]).await.expect("attempts").get(0),
                    App::Sqlite(_) => unreachable!(),
                };
                if attempts > 1 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            app.exec("COMMIT").await;
            return;
        }
        loop {
            let sql = format!(
                "SELECT COALESCE((SELECT max(rows_done) FROM {table} WHERE plan = 'locked'), 0)"
            );
            let done: i64 = match &app {
                App::Pg(c) => c.query_one(&sql, &[]).await.expect("rows_done").get(0),
                App::Sqlite(c) => c.query_row(&sql, [], |r| r.get(0)).expect("rows_done"),
            };
            if done > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // SQLite: the database's write lock, once a checkpoint is written.
        app.exec("BEGIN IMMEDIATE").await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        app.exec("COMMIT").await;
    };
    // The holder is another session on its own thread, as an application would be (SQLite's
    // busy wait blocks the thread the backfill runs on).
    let holder = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(holder())
    });
    let result = run(&db, &p, RunOptions::default()).await;
    holder.join().expect("lock holder");
    let events = result.map_err(|(e, _)| e.to_string()).expect("backfill");
    assert!(
        events.iter().any(|e| matches!(e, Event::StepRetry { .. })),
        "the batch timed out on the lock and was retried"
    );
    assert!(
        db.scalar(&format!(
            "SELECT CAST(attempts AS bigint) FROM {} WHERE plan = 'locked'",
            steps_table(&db)
        ))
        .await
            > 1
    );
    assert_eq!(rows_done(&db, "locked").await, ROWS);
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE touched <> 1")
            .await,
        0,
        "no batch ran twice, none was skipped"
    );
}

#[tokio::test]
async fn pg_lock_timeout_retries_from_the_checkpoint() {
    lock_timeout_retries_from_the_checkpoint(TestDb::pg().await).await;
}

#[tokio::test]
async fn sqlite_lock_timeout_retries_from_the_checkpoint() {
    lock_timeout_retries_from_the_checkpoint(TestDb::sqlite()).await;
}

/// The checkpoint a batch stores is the key it reports, character for character, for keys
/// JSON must escape, and a walk from each stored checkpoint visits every row once: batches of
/// one, up and down (a rollback's walk keeps its checkpoint apart, as `{"down": …}`).
async fn stored_checkpoints_are_the_reported_keys(db: TestDb) {
    use phased::db::{BatchRequest, StepKey, StepStart, Timeouts};
    db.execute(
        "CREATE TABLE odd (a integer NOT NULL, b text NOT NULL, v integer NOT NULL, filled text, PRIMARY KEY (a, b))",
    )
    .await;
    let keys = [
        r#"quote " inside"#,
        r"back\slash",
        "new\nline",
        "tab\there",
        "été ☃",
        "control \u{1} char",
        "/slash/",
    ];
    for (i, k) in keys.iter().enumerate() {
        // Standard SQL literals on both: a backslash is itself, no key holds a `'`.
        db.execute(&format!(
            "INSERT INTO odd (a, b, v) VALUES ({}, '{k}', {i})",
            i % 2
        ))
        .await;
    }
    let step = StepKey {
        plan: "odd".to_string(),
        phase: "fill".to_string(),
        index: 0,
    };
    let columns = vec!["a".to_string(), "b".to_string()];
    let mut target = db.target("odd").await;
    for (down, set) in [(false, "b || '!'"), (true, "NULL")] {
        let set = vec![("filled".to_string(), set.to_string())];
        let mut after: Option<String> = None;
        let mut rows = 0;
        loop {
            let outcome = phased::with_target!(&mut target, t => {
                t.ensure_state().await.expect("state tables");
                if after.is_none() && !down {
                    t.begin_step(&StepStart { key: &step, kind: "backfill", label: "odd", checksum: "c" })
                        .await
                        .expect("step");
                }
                t.backfill_batch(&BatchRequest {
                    key: &step,
                    table: "odd",
                    key_columns: &columns,
                    set: &set,
                    predicate: None,
                    after: after.as_deref(),
                    limit: 1,
                    timeouts: Timeouts::default(),
                    rows_per_second: 0.0,
                    key_types_hint: &[],
                    down,
                    pace: None,
                })
                .await
            })
            .expect("a batch");
            let Some(last) = outcome.last_key else { break };
            rows += outcome.rows;
            let stored = db
                .text(&format!(
                    "SELECT checkpoint FROM {} WHERE plan = 'odd'",
                    steps_table(&db)
                ))
                .await;
            let expected = if down {
                format!(r#"{{"down":{last}}}"#)
            } else {
                last.clone()
            };
            assert_eq!(stored.as_deref(), Some(expected.as_str()), "down: {down}");
            after = Some(last);
        }
        assert_eq!(rows, keys.len() as u64, "down: {down}");
    }
    assert_eq!(
        db.scalar("SELECT count(*) FROM odd WHERE filled IS NOT NULL")
            .await,
        0
    );
}

#[tokio::test]
async fn pg_stored_checkpoints_are_the_reported_keys() {
    stored_checkpoints_are_the_reported_keys(TestDb::pg().await).await;
}

#[tokio::test]
async fn sqlite_stored_checkpoints_are_the_reported_keys() {
    stored_checkpoints_are_the_reported_keys(TestDb::sqlite()).await;
}

/// A table whose columns are named like the parts of a batch's own statement (`phased_key`,
/// `phased_last_1`, `phased_looked`, `batch`, `phased_row`), one of them in the key, all used
/// unqualified in `set:` and `where:`: they are the table's, never ambiguous, in every batch.
async fn columns_named_like_the_batch_statement_s_own(db: TestDb) {
    db.execute(
        "CREATE TABLE clash (phased_last_1 integer NOT NULL, id integer NOT NULL, \
           phased_key integer NOT NULL, phased_looked integer NOT NULL, batch integer NOT NULL, \
           phased_row integer, filled integer, PRIMARY KEY (phased_last_1, id))",
    )
    .await;
    db.execute(
        "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < 100) \
         INSERT INTO clash (phased_last_1, id, phased_key, phased_looked, batch, phased_row) \
         SELECT i % 3, i, i * 10, i * 100, 1, CASE WHEN i % 4 = 0 THEN NULL ELSE i END FROM g",
    )
    .await;
    let yaml = r#"
plan: clash
phases:
  - name: backfill
    kind: migrate
    steps:
      - backfill:
          table: clash
          set: { filled: "phased_key + phased_looked + batch + phased_last_1" }
          where: "filled IS NULL AND phased_row IS NOT NULL"
          batch_size: 7
          pause: 0s
"#;
    run_ok(&db, &plan(yaml)).await;
    assert_eq!(
        db.scalar("SELECT count(*) FROM clash WHERE phased_row IS NOT NULL AND filled = phased_key + phased_looked + batch + phased_last_1")
            .await,
        75
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM clash WHERE phased_row IS NULL AND filled IS NULL")
            .await,
        25
    );
}

#[tokio::test]
async fn pg_columns_named_like_the_batch_statement_s_own() {
    columns_named_like_the_batch_statement_s_own(TestDb::pg().await).await;
}

#[tokio::test]
async fn sqlite_columns_named_like_the_batch_statement_s_own() {
    columns_named_like_the_batch_statement_s_own(TestDb::sqlite()).await;
}

/// A table its statistics put at 100,000 rows or more gets the planner's estimate as its total,
/// not a count (a scan of the whole table before the first batch). Statistics taken before
/// half the rows were filled (autovacuum off) say all 150,000 are left — scaled by the planner
/// to the pages the UPDATE added, some 225,000 — where a count finds 75,000: the first total is
/// the estimate, the walk fills the 75,000, and its last report ends at them.
#[tokio::test]
async fn pg_a_large_table_s_total_is_the_planner_s_estimate() {
    let db = TestDb::pg().await;
    db.execute(
        "CREATE TABLE big (id bigint PRIMARY KEY, v integer NOT NULL, filled integer) \
           WITH (autovacuum_enabled = false);
         INSERT INTO big (id, v) SELECT i, i FROM generate_series(1, 150000) AS i;
         ANALYZE big;
         UPDATE big SET filled = v WHERE id % 2 = 0;",
    )
    .await;
    let yaml = r#"
plan: big
phases:
  - name: backfill
    kind: migrate
    steps:
      - backfill: { table: big, set: { filled: "v" }, where: "filled IS NULL", pause: 0s, target_batch_time: 50ms }
"#;
    let events = run_ok(&db, &plan(yaml)).await;
    let totals: Vec<(u64, Option<u64>)> = events
        .iter()
        .filter_map(|e| match e {
            Event::BackfillProgress {
                rows_done,
                rows_total,
                ..
            } => Some((*rows_done, *rows_total)),
            _ => None,
        })
        .collect();
    let first = totals.first().and_then(|t| t.1).expect("a first total");
    assert!(
        (140_000..=300_000).contains(&first),
        "the planner's estimate, not the count of 75,000: {totals:?}"
    );
    assert_eq!(totals.last(), Some(&(75_000, Some(75_000))), "{totals:?}");
    assert_eq!(
        db.scalar("SELECT count(*) FROM big WHERE filled IS DISTINCT FROM v")
            .await,
        0
    );
}

/// Under 100,000 rows by the statistics (or none taken yet) the total is counted.
#[tokio::test]
async fn pg_a_small_table_s_total_is_counted() {
    let db = TestDb::pg().await;
    db.execute(
        "CREATE TABLE small (id bigint PRIMARY KEY, v integer NOT NULL, filled integer) \
           WITH (autovacuum_enabled = false);
         INSERT INTO small (id, v) SELECT i, i FROM generate_series(1, 1000) AS i;
         ANALYZE small;
         UPDATE small SET filled = v WHERE id % 2 = 0;",
    )
    .await;
    let yaml = r#"
plan: small
phases:
  - name: backfill
    kind: migrate
    steps:
      - backfill: { table: small, set: { filled: "v" }, where: "filled IS NULL", pause: 0s }
"#;
    let events = run_ok(&db, &plan(yaml)).await;
    let first = events.iter().find_map(|e| match e {
        Event::BackfillProgress { rows_total, .. } => *rows_total,
        _ => None,
    });
    assert_eq!(first, Some(500), "counted, where the statistics say 1,000");
}
