//! Online safety against real sessions: phased waits instead of queueing behind a lock holder,
//! names who blocks it, repairs an INVALID index, lets only one runner work on a plan, keeps
//! writers flowing during constraint steps on a big table, and keeps dual-written rows right.
//!
//! Bounds on how long application sessions may wait are enforced by the database itself: the
//! "application" sessions run under their own `lock_timeout` (phased's plus a margin), so a
//! statement that waited longer would fail with SQLSTATE 55P03 and fail the test.

use std::time::Duration;

use phased::engine::{EngineError, Event, RunOptions};
use tokio_postgres::Client;

use crate::common::{backend_pid, pg, phased_cmd, plan, run, run_ok, PgDb, TestDb};

/// phased's lock_timeout in these tests, and the margin application sessions get on top of it.
const LOCK_TIMEOUT_MS: u64 = 500;
const MARGIN_MS: u64 = 1000;

/// An application session whose statements may wait at most lock_timeout + margin for a lock.
async fn app_session(db: &PgDb) -> Client {
    let client = db.client().await;
    client
        .batch_execute(&format!(
            "SET application_name = 'old-app'; SET lock_timeout = '{}ms'",
            LOCK_TIMEOUT_MS + MARGIN_MS
        ))
        .await
        .expect("configure the application session");
    client
}

/// Waits until `sql` (one boolean, on the state tables) holds; panics after `secs` seconds.
async fn wait_until(client: &Client, sql: &str, secs: u64) {
    for _ in 0..secs * 20 {
        let ok: Option<bool> = client
            .query_opt(sql, &[])
            .await
            .ok()
            .flatten()
            .and_then(|r| r.get(0));
        if ok == Some(true) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {sql}");
}

fn add_column_plan(attempts: u32) -> String {
    format!(
        "plan: online-add-column
defaults:
  lock_timeout: {LOCK_TIMEOUT_MS}ms
  retry: {{ attempts: {attempts}, backoff: 100ms, max_backoff: 300ms }}
phases:
  - name: expand
    kind: expand
    steps:
      - add_column: {{ table: items, name: note, type: text }}
"
    )
}

async fn items_table(db: &TestDb) {
    db.execute(
        "CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL);
         INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 1000) g;",
    )
    .await;
}

#[tokio::test]
async fn access_share_holder_makes_phased_wait_without_queueing_readers() {
    let db = TestDb::pg().await;
    items_table(&db).await;
    let pgdb = pg(&db);
    // The long report: ACCESS SHARE on items in an open transaction.
    let report = pgdb.client().await;
    report
        .batch_execute("BEGIN; SELECT count(*) FROM items;")
        .await
        .expect("open the report's transaction");
    let report_pid = backend_pid(&report).await;
    let reader = app_session(pgdb).await;
    let observer = pgdb.client().await;
    let loaded = plan(&add_column_plan(40));

    let app = async {
        // phased has looked and found the report in its way…
        wait_until(
            &observer,
            "SELECT EXISTS (SELECT 1 FROM phased.steps WHERE last_error LIKE 'not attempted%')",
            30,
        )
        .await;
        // …and meanwhile readers are served: none waits past lock_timeout + margin (their own
        // lock_timeout would fail them).
        for _ in 0..20 {
            reader
                .query_one("SELECT count(*) FROM items WHERE id < 100", &[])
                .await
                .expect("a reader waited longer than lock_timeout + margin");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        report.batch_execute("COMMIT").await.expect("commit report");
    };
    let (result, ()) = tokio::join!(run(&db, &loaded, RunOptions::default()), app);
    let events = match result {
        Ok(events) => events,
        Err((e, _)) => panic!("the step should succeed once the report commits: {e}"),
    };
    assert!(db.has_column("items", "note").await);
    let waits: Vec<&Vec<String>> = events
        .iter()
        .filter_map(|e| match e {
            Event::StepWaiting { blockers, lock, .. } => {
                assert_eq!(lock, "ACCESS EXCLUSIVE");
                Some(blockers)
            }
            _ => None,
        })
        .collect();
    assert!(!waits.is_empty(), "phased should have waited: {events:?}");
    assert!(
        waits[0][0].contains(&format!("pid {report_pid} ")),
        "the wait names the report's pid {report_pid}: {:?}",
        waits[0]
    );
    // Looking first means phased never queued, so it never timed out on the lock.
    assert!(
        !events.iter().any(|e| matches!(e, Event::StepRetry { .. })),
        "phased queued for the lock instead of waiting: {events:?}"
    );
}

#[tokio::test]
async fn retries_exhausted_fail_with_exit_1_and_status_names_the_blocker() {
    let db = TestDb::pg().await;
    items_table(&db).await;
    let pgdb = pg(&db);
    let report = pgdb.client().await;
    report
        .batch_execute("BEGIN; SELECT count(*) FROM items;")
        .await
        .expect("open the report's transaction");
    let report_pid = backend_pid(&report).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let plan_path = dir.path().join("plan.yaml");
    std::fs::write(&plan_path, add_column_plan(3)).expect("write plan");

    let output = phased_cmd()
        .args(["run", "--database", &pgdb.url])
        .arg(&plan_path)
        .output()
        .expect("run phased");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains(&format!("blocked by pid {report_pid} ")),
        "the failure names the blocker: {stderr}"
    );
    assert!(!db.has_column("items", "note").await);

    let status = phased_cmd()
        .args(["status", "--database", &pgdb.url])
        .arg(&plan_path)
        .output()
        .expect("phased status");
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert_eq!(status.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("failed"), "{stdout}");
    assert!(
        stdout.contains(&format!("blocked by pid {report_pid} ")),
        "status shows the blocker: {stdout}"
    );

    // Once the report is gone, the same command resumes and finishes.
    report.batch_execute("COMMIT").await.expect("commit");
    phased_cmd()
        .args(["run", "--database", &pgdb.url])
        .arg(&plan_path)
        .assert()
        .success();
    assert!(db.has_column("items", "note").await);
}

fn index_plan(attempts: u32, lock_timeout: &str) -> String {
    format!(
        "plan: online-index
defaults:
  lock_timeout: {lock_timeout}
  retry: {{ attempts: {attempts}, backoff: 50ms, max_backoff: 100ms }}
phases:
  - name: expand
    kind: expand
    steps:
      - create_index: {{ table: items, name: items_name_idx, columns: [name] }}
"
    )
}

async fn index_validity(db: &TestDb) -> Vec<bool> {
    let client = pg(db).client().await;
    client
        .query(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = 'items_name_idx'",
            &[],
        )
        .await
        .expect("pg_index")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Before index_wait_timeout existed, the build's lock_timeout cancelled its wait for the
/// writer and it was retried, each attempt a new build; now it waits for the writer (which it
/// blocks in no way) up to index_wait_timeout, gives up naming it, and says that the INVALID
/// index it left could not be dropped yet (the drop waits for the writer too). The next run
/// drops it and builds again.
#[tokio::test]
async fn concurrent_index_giving_up_on_a_writer_names_it_and_the_next_run_repairs_what_it_left() {
    let db = TestDb::pg().await;
    items_table(&db).await;
    let pgdb = pg(&db);
    // A writer in an open transaction: CREATE INDEX CONCURRENTLY must wait for it after creating
    // the (still invalid) index.
    let writer = pgdb.client().await;
    writer
        .batch_execute("BEGIN; INSERT INTO items VALUES (5000, 'new');")
        .await
        .expect("writer");
    let writer_pid = backend_pid(&writer).await;
    let loaded = plan(&index_plan(2, "300ms").replace(
        "  lock_timeout: 300ms\n",
        "  lock_timeout: 300ms\n  index_wait_timeout: 1s\n",
    ));
    let (err, events) = run(&db, &loaded, RunOptions::default())
        .await
        .expect_err("the build cannot finish while the writer is open");
    assert!(matches!(err, EngineError::StepFailed { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("index_wait_timeout"), "{text}");
    assert!(
        text.contains(&format!("waiting for pid {writer_pid} ")),
        "the error names the writer {writer_pid}: {text}"
    );
    assert!(
        text.contains("dropping it failed too") && text.contains("the next run drops it"),
        "{text}"
    );
    assert!(
        !events.iter().any(|e| matches!(e, Event::StepRetry { .. })),
        "waiting for a transaction is not retried: {events:?}"
    );
    assert_eq!(
        index_validity(&db).await,
        vec![false],
        "an INVALID index is left while the writer is open"
    );

    writer.batch_execute("COMMIT").await.expect("commit");
    run_ok(&db, &loaded).await;
    assert_eq!(index_validity(&db).await, vec![true], "rebuilt and valid");
}

#[tokio::test]
async fn concurrent_index_cancelled_with_pg_cancel_backend_drops_its_invalid_index_before_failing()
{
    let db = TestDb::pg().await;
    items_table(&db).await;
    let pgdb = pg(&db);
    let writer = pgdb.client().await;
    writer
        .batch_execute("BEGIN; INSERT INTO items VALUES (5000, 'new');")
        .await
        .expect("writer");
    let dba = pgdb.client().await;
    let loaded = plan(&index_plan(1, "30s"));
    let cancel = async {
        // The build is waiting for the writer: cancel it as a DBA would.
        wait_until(
            &dba,
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'phased/online-index' \
             AND query LIKE 'CREATE INDEX CONCURRENTLY%' AND wait_event_type = 'Lock')",
            30,
        )
        .await;
        let cancelled: bool = dba
            .query_one(
                "SELECT bool_or(pg_cancel_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name = 'phased/online-index' AND query LIKE 'CREATE INDEX CONCURRENTLY%'",
                &[],
            )
            .await
            .expect("cancel")
            .get(0);
        assert!(cancelled);
        // phased drops the INVALID index the cancelled build left; the drop waits for the
        // writer in turn, until it commits.
        wait_until(
            &dba,
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'phased/online-index' \
             AND query LIKE 'DROP INDEX CONCURRENTLY%' AND wait_event_type = 'Lock')",
            30,
        )
        .await;
        writer.batch_execute("COMMIT").await.expect("commit");
    };
    let (result, ()) = tokio::join!(run(&db, &loaded, RunOptions::default()), cancel);
    let (err, _) = result.expect_err("the cancelled build fails the step");
    let text = err.to_string();
    assert!(text.contains("57014"), "{text}");
    assert!(text.contains("phased dropped the INVALID index"), "{text}");
    assert_eq!(
        index_validity(&db).await,
        Vec::<bool>::new(),
        "nothing is left"
    );

    run_ok(&db, &loaded).await;
    assert_eq!(index_validity(&db).await, vec![true]);
}

fn lease_plan(marker: &std::path::Path) -> String {
    format!(
        "plan: lease-test
phases:
  - name: work
    kind: expand
    steps:
      - command: {{ run: [sh, -c, 'echo ran >> \"{}\"; sleep 3'] }}
",
        marker.display()
    )
}

/// Two `phased run` processes on one plan: the second exits 4 naming the first, which finishes.
/// `held` tells when the first is working on its step (and so holds the lease).
async fn two_runners(db: &TestDb, held: &[&str], holder_named: impl Fn(u32) -> String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let marker = dir.path().join("ran.txt");
    let plan_path = dir.path().join("plan.yaml");
    std::fs::write(&plan_path, lease_plan(&marker)).expect("write plan");
    let url = db.url();
    let mut first = std::process::Command::new(assert_cmd::cargo::cargo_bin("phased"))
        .args(["run", "--database", &url])
        .arg(&plan_path)
        .env_remove("DATABASE_URL")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the first runner");
    let mut holding = false;
    for _ in 0..200 {
        let mut all = true;
        for sql in held {
            if db.scalar(sql).await == 0 {
                all = false;
                break;
            }
        }
        if all {
            holding = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(holding, "the first runner never took the lease");

    let second = phased_cmd()
        .args(["run", "--database", &url])
        .arg(&plan_path)
        .output()
        .expect("second runner");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(4), "stderr: {stderr}");
    assert!(
        stderr.contains("another runner is working on plan `lease-test`")
            && stderr.contains(&holder_named(first.id())),
        "the second runner names the holder: {stderr}"
    );
    let status = first.wait().expect("first runner");
    assert!(status.success(), "the first runner finishes");
    let ran = std::fs::read_to_string(&marker).expect("marker");
    assert_eq!(
        ran.lines().count(),
        1,
        "exactly one runner executed the step"
    );
}

#[tokio::test]
async fn two_runners_on_postgres_only_one_works_the_other_exits_4() {
    let db = TestDb::pg().await;
    two_runners(
        &db,
        &[
            "SELECT count(*) FROM pg_class WHERE relname = 'steps'",
            "SELECT count(*) FROM phased.steps WHERE plan = 'lease-test' AND status = 'running'",
        ],
        |_| "(phased/lease-test)".to_string(),
    )
    .await;
}

#[tokio::test]
async fn two_runners_on_sqlite_only_one_works_the_other_exits_4() {
    let db = TestDb::sqlite();
    two_runners(
        &db,
        &[
            "SELECT count(*) FROM sqlite_schema WHERE name = 'phased_steps'",
            "SELECT count(*) FROM phased_steps WHERE plan = 'lease-test' AND status = 'running'",
        ],
        |pid| format!("phased pid {pid} "),
    )
    .await;
}

/// A second runner while a first holds the lease (in this process): LeaseHeld naming the
/// holder, and nothing executed; once released, the plan runs.
async fn lease_held_in_process(db: TestDb, holder_named: &str) {
    let mut holder = db.target("lease-direct").await;
    let acquired = phased::with_target!(&mut holder, t => {
        use phased::db::prelude::*;
        t.ensure_state().await.expect("state");
        t.acquire_lease("lease-direct").await.expect("lease")
    });
    assert_eq!(acquired, None);
    let loaded = plan(
        "plan: lease-direct
phases:
  - name: p
    kind: switch-flag
    steps:
      - flag: { name: f, value: true }
",
    );
    let (err, _) = run(&db, &loaded, RunOptions::default())
        .await
        .expect_err("the lease is held");
    match &err {
        EngineError::LeaseHeld { plan, holder } => {
            assert_eq!(plan, "lease-direct");
            assert!(holder.contains(holder_named), "{holder}");
        }
        other => panic!("expected LeaseHeld, got {other}"),
    }
    let table = if db.is_pg() {
        "phased.steps"
    } else {
        "phased_steps"
    };
    assert_eq!(
        db.scalar(&format!("SELECT count(*) FROM {table}")).await,
        0,
        "the second runner executed nothing"
    );
    phased::with_target!(&mut holder, t => {
        use phased::db::prelude::*;
        t.release_lease("lease-direct").await.expect("release")
    });
    run_ok(&db, &loaded).await;
}

#[tokio::test]
async fn lease_held_names_the_holder_in_process_on_postgres() {
    lease_held_in_process(TestDb::pg().await, "(phased/lease-direct)").await;
}

#[tokio::test]
async fn lease_held_names_the_holder_in_process_on_sqlite() {
    lease_held_in_process(TestDb::sqlite(), "another runner in this process").await;
}

/// Keeps writing through `client` until `stop` is set: inserts of complete rows and updates.
/// Every statement runs under lock_timeout + margin, so a longer wait fails it.
async fn keep_writing(
    client: &Client,
    first_id: i64,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<u64, String> {
    let mut id = first_id;
    let mut writes = 0;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        client
            .execute(
                "INSERT INTO orders (id, customer_id, note) VALUES ($1, 1, 'live')",
                &[&id],
            )
            .await
            .map_err(|e| format!("insert {id}: {e}"))?;
        client
            .execute(
                "UPDATE orders SET note = 'touched' WHERE id = $1",
                &[&(id - first_id + 1)],
            )
            .await
            .map_err(|e| format!("update: {e}"))?;
        id += 1;
        writes += 2;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(writes)
}

#[tokio::test]
async fn constraint_steps_on_200k_rows_never_block_writers_past_lock_timeout() {
    let db = TestDb::pg().await;
    db.execute(
        "CREATE TABLE customers (id bigint PRIMARY KEY);
         INSERT INTO customers SELECT g FROM generate_series(1, 1000) g;
         CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, note text);
         INSERT INTO orders SELECT g, 1 + g % 1000, 'old' FROM generate_series(1, 200000) g;",
    )
    .await;
    let pgdb = pg(&db);
    let loaded = plan(&format!(
        "plan: big-constraints
defaults:
  lock_timeout: {LOCK_TIMEOUT_MS}ms
  retry: {{ attempts: 30, backoff: 50ms, max_backoff: 500ms }}
backup: {{ before: [] }}
phases:
  - name: contract
    kind: contract
    steps:
      - set_not_null: {{ table: orders, column: note }}
      - add_foreign_key: {{ table: orders, name: orders_customer_fk, columns: [customer_id], references: {{ table: customers, columns: [id] }} }}
      - add_check: {{ table: orders, name: orders_note_nonempty, expression: \"note <> ''\" }}
"
    ));
    let writer_a = app_session(pgdb).await;
    let writer_b = app_session(pgdb).await;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let work = async {
        let result = run(&db, &loaded, RunOptions::default()).await;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        result
    };
    let (result, a, b) = tokio::join!(
        work,
        keep_writing(&writer_a, 1_000_000, &stop),
        keep_writing(&writer_b, 2_000_000, &stop)
    );
    if let Err((e, _)) = result {
        panic!("the constraint steps fail: {e}");
    }
    let a = a.expect("writer A was blocked past lock_timeout + margin");
    let b = b.expect("writer B was blocked past lock_timeout + margin");
    assert!(a > 0 && b > 0, "both writers wrote during the run");
    let not_null = db
        .scalar("SELECT count(*) FROM information_schema.columns WHERE table_name = 'orders' AND column_name = 'note' AND is_nullable = 'NO'")
        .await;
    assert_eq!(not_null, 1);
    let valid = db
        .scalar("SELECT count(*) FROM pg_constraint WHERE conname IN ('orders_customer_fk', 'orders_note_nonempty') AND convalidated")
        .await;
    assert_eq!(valid, 2);
    let helper = db
        .scalar("SELECT count(*) FROM pg_constraint WHERE conname = 'orders_note_not_null'")
        .await;
    assert_eq!(helper, 0, "the helper check is dropped");
}

fn dual_write_plan() -> &'static str {
    "plan: dual-write
backup: { before: [] }
phases:
  - name: expand
    kind: expand
    steps:
      - add_column: { table: accounts, name: email_lower, type: text }
      - dual_write: { table: accounts, set: { email_lower: \"lower(NEW.email)\" } }
  - name: backfill
    kind: migrate
    steps:
      - backfill: { table: accounts, set: { email_lower: \"lower(email)\" }, where: \"email_lower IS NULL\", batch_size: 7 }
  - name: contract
    kind: contract
    steps:
      - drop_dual_write: { table: accounts }
      - set_not_null: { table: accounts, column: email_lower }
"
}

async fn dual_write_keeps_old_app_rows_right(db: TestDb) {
    db.execute(
        "CREATE TABLE accounts (id integer PRIMARY KEY, email text NOT NULL);
         INSERT INTO accounts (id, email) VALUES (1, 'Ann@Example.com'), (2, 'BOB@example.com'), (3, 'cy@EXAMPLE.com');",
    )
    .await;
    let loaded = plan(dual_write_plan());
    run(
        &db,
        &loaded,
        RunOptions {
            until: Some("expand".into()),
            ..Default::default()
        },
    )
    .await
    .map_err(|(e, _)| e)
    .expect("expand");
    // The old application knows nothing of email_lower: it inserts and updates through email.
    db.execute(
        "INSERT INTO accounts (id, email) VALUES (10, 'New@Example.COM');
         INSERT INTO accounts (id, email) VALUES (11, 'Other@Example.com');
         UPDATE accounts SET email = 'Ann.Changed@Example.com' WHERE id = 1;
         UPDATE accounts SET email = 'OTHER2@example.com' WHERE id = 11;",
    )
    .await;
    assert_eq!(
        db.text("SELECT email_lower FROM accounts WHERE id = 10")
            .await,
        Some("new@example.com".into())
    );
    assert_eq!(
        db.text("SELECT email_lower FROM accounts WHERE id = 1")
            .await,
        Some("ann.changed@example.com".into())
    );
    assert_eq!(
        db.text("SELECT email_lower FROM accounts WHERE id = 11")
            .await,
        Some("other2@example.com".into())
    );
    assert_eq!(
        db.text("SELECT email_lower FROM accounts WHERE id = 2")
            .await,
        None,
        "untouched old rows wait for the backfill"
    );
    run_ok(&db, &loaded).await;
    let wrong = db
        .scalar("SELECT count(*) FROM accounts WHERE email_lower IS NULL OR email_lower <> lower(email)")
        .await;
    assert_eq!(wrong, 0);
    assert_eq!(db.scalar("SELECT count(*) FROM accounts").await, 5);
    // After drop_dual_write the old columns no longer feed the new one.
    db.execute("UPDATE accounts SET email = 'LATE@example.com' WHERE id = 2")
        .await;
    assert_eq!(
        db.text("SELECT email_lower FROM accounts WHERE id = 2")
            .await,
        Some("bob@example.com".into())
    );
}

#[tokio::test]
async fn dual_write_keeps_rows_written_through_old_columns_right_on_postgres() {
    dual_write_keeps_old_app_rows_right(TestDb::pg().await).await;
}

#[tokio::test]
async fn dual_write_keeps_rows_written_through_old_columns_right_on_sqlite() {
    dual_write_keeps_old_app_rows_right(TestDb::sqlite()).await;
}

#[tokio::test]
async fn failed_validate_is_retried_without_re_adding_the_constraint() {
    // A step whose NOT VALID constraint was added by an earlier attempt picks up from there.
    let db = TestDb::pg().await;
    db.execute(
        "CREATE TABLE t (id bigint PRIMARY KEY, c integer);
         INSERT INTO t VALUES (1, 5), (2, -1);",
    )
    .await;
    let loaded = plan(
        "plan: check-retry
phases:
  - name: expand
    kind: expand
    steps:
      - add_check: { table: t, name: t_c_positive, expression: \"c > 0\" }
",
    );
    let (err, _) = run(&db, &loaded, RunOptions::default())
        .await
        .expect_err("a violating row fails VALIDATE");
    assert!(err.to_string().contains("t_c_positive"), "{err}");
    assert_eq!(
        db.scalar("SELECT count(*) FROM pg_constraint WHERE conname = 't_c_positive' AND NOT convalidated")
            .await,
        1,
        "the NOT VALID constraint stays, enforcing new rows"
    );
    db.execute("UPDATE t SET c = 1 WHERE id = 2").await;
    run_ok(&db, &loaded).await;
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM pg_constraint WHERE conname = 't_c_positive' AND convalidated"
        )
        .await,
        1
    );
}

#[test]
fn add_column_with_a_volatile_default_is_rejected_with_the_safe_alternative() {
    let source = "plan: volatile
phases:
  - name: expand
    kind: expand
    steps:
      - add_column: { table: accounts, name: created, type: timestamptz, default: \"now()\" }
      - add_column: { table: accounts, name: token, type: uuid, default: \"gen_random_uuid()\" }
      - add_column: { table: accounts, name: flagged, type: boolean, default: \"false\" }
";
    let report = match phased::plan::parse_str("volatile.yaml", source, std::path::Path::new(".")) {
        Ok(_) => panic!("a volatile default must be rejected"),
        Err(report) => report,
    };
    assert_eq!(report.errors().count(), 2, "the constant default is fine");
    insta::assert_snapshot!(report.render_plain());
}

#[tokio::test]
async fn concurrent_index_whose_runner_was_killed_mid_build_is_repaired_by_the_next_run() {
    let db = TestDb::pg().await;
    items_table(&db).await;
    let pgdb = pg(&db);
    let writer = pgdb.client().await;
    writer
        .batch_execute("BEGIN; INSERT INTO items VALUES (5000, 'new');")
        .await
        .expect("writer");
    let dir = tempfile::tempdir().expect("temp dir");
    let plan_path = dir.path().join("plan.yaml");
    std::fs::write(&plan_path, index_plan(1, "2s")).expect("write plan");
    let mut runner = std::process::Command::new(assert_cmd::cargo::cargo_bin("phased"))
        .args(["run", "--database", &pgdb.url])
        .arg(&plan_path)
        .env_remove("DATABASE_URL")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start phased");
    let dba = pgdb.client().await;
    let building = "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'phased/online-index' \
                    AND query LIKE 'CREATE INDEX CONCURRENTLY%' AND state = 'active')";
    wait_until(&dba, building, 30).await;
    runner.kill().expect("kill the runner");
    runner.wait().expect("reap the runner");
    // The orphaned build notices that its runner is gone (client_connection_check_interval)
    // and stops, leaving its INVALID index behind.
    wait_until(&dba, &format!("SELECT NOT ({building})"), 30).await;
    assert_eq!(index_validity(&db).await, vec![false]);
    assert_eq!(
        db.text("SELECT status FROM phased.steps WHERE plan = 'online-index'")
            .await,
        Some("running".into()),
        "the killed run never recorded an outcome"
    );

    writer.batch_execute("COMMIT").await.expect("commit");
    run_ok(&db, &plan(&index_plan(3, "2s"))).await;
    assert_eq!(index_validity(&db).await, vec![true]);
}

#[tokio::test]
async fn dual_write_keeps_rows_right_while_old_app_writes_during_the_backfill_on_postgres() {
    let db = TestDb::pg().await;
    db.execute(
        "CREATE TABLE accounts (id integer PRIMARY KEY, email text NOT NULL);
         INSERT INTO accounts SELECT g, 'User' || g || '@Example.COM' FROM generate_series(1, 3000) g;",
    )
    .await;
    let loaded = plan(&dual_write_plan().replace("batch_size: 7", "batch_size: 100"));
    run(
        &db,
        &loaded,
        RunOptions {
            until: Some("expand".into()),
            ..Default::default()
        },
    )
    .await
    .map_err(|(e, _)| e)
    .expect("expand");
    // The old application keeps inserting and changing emails while the backfill walks the table.
    let old_app = app_session(pg(&db)).await;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let writes = async {
        let mut n: i32 = 0;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            n += 1;
            old_app
                .execute(
                    "INSERT INTO accounts (id, email) VALUES ($1, $2)",
                    &[&(100_000 + n), &format!("Late{n}@Example.COM")],
                )
                .await
                .expect("old app insert");
            old_app
                .execute(
                    "UPDATE accounts SET email = 'Changed' || id || '@EXAMPLE.com' WHERE id = $1",
                    &[&(1 + (n * 37) % 3000)],
                )
                .await
                .expect("old app update");
            tokio::task::yield_now().await;
        }
        n
    };
    let backfill = async {
        let result = run(
            &db,
            &loaded,
            RunOptions {
                until: Some("backfill".into()),
                ..Default::default()
            },
        )
        .await;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        result
    };
    let (result, written) = tokio::join!(backfill, writes);
    result.map_err(|(e, _)| e).expect("backfill");
    assert!(written > 0, "the old app wrote during the backfill");
    assert_eq!(
        db.scalar("SELECT count(*) FROM accounts WHERE email_lower IS DISTINCT FROM lower(email)")
            .await,
        0,
        "every row, old or written meanwhile, has the right email_lower"
    );
    run_ok(&db, &loaded).await;
}

/// A `sql` step's locks come from the parse of its SQL (issue 16): like a built-in step it
/// looks before it queues, is not attempted while a session holds a conflicting lock on its
/// table, and names that session.
#[tokio::test]
async fn sql_step_blocked_by_a_lock_holder_is_not_attempted_and_names_it() {
    let db = TestDb::pg().await;
    items_table(&db).await;
    let pgdb = pg(&db);
    let report = pgdb.client().await;
    report
        .batch_execute("BEGIN; SELECT count(*) FROM items;")
        .await
        .expect("open the report's transaction");
    let report_pid = backend_pid(&report).await;
    let observer = pgdb.client().await;
    let loaded = plan(&format!(
        "plan: online-sql
defaults:
  lock_timeout: {LOCK_TIMEOUT_MS}ms
  retry: {{ attempts: 40, backoff: 100ms, max_backoff: 300ms }}
phases:
  - name: expand
    kind: expand
    steps:
      - sql: {{ up: \"ALTER TABLE items ADD COLUMN note text\", down: \"ALTER TABLE items DROP COLUMN note\" }}
"
    ));
    let app = async {
        wait_until(
            &observer,
            "SELECT EXISTS (SELECT 1 FROM phased.steps WHERE last_error LIKE 'not attempted%')",
            30,
        )
        .await;
        report.batch_execute("COMMIT").await.expect("commit report");
    };
    let (result, ()) = tokio::join!(run(&db, &loaded, RunOptions::default()), app);
    let events = match result {
        Ok(events) => events,
        Err((e, _)) => panic!("the step should succeed once the report commits: {e}"),
    };
    assert!(db.has_column("items", "note").await);
    let waits: Vec<&Vec<String>> = events
        .iter()
        .filter_map(|e| match e {
            Event::StepWaiting { blockers, lock, .. } => {
                assert_eq!(lock, "ACCESS EXCLUSIVE");
                Some(blockers)
            }
            _ => None,
        })
        .collect();
    assert!(
        !waits.is_empty(),
        "the sql step should have waited: {events:?}"
    );
    assert!(
        waits[0][0].contains(&format!("pid {report_pid} ")),
        "the wait names the report's pid {report_pid}: {:?}",
        waits[0]
    );
    assert!(
        !events.iter().any(|e| matches!(e, Event::StepRetry { .. })),
        "the sql step queued for the lock instead of looking first: {events:?}"
    );
}

/// Writes a one-revision folder that adds `items.note` (an ACCESS EXCLUSIVE `ALTER TABLE`).
fn note_migration(base: &std::path::Path) -> std::path::PathBuf {
    let folder = base.join("migrations");
    std::fs::create_dir_all(&folder).expect("migrations folder");
    std::fs::write(
        folder.join("20261120_0900_a1b2c3d4e5f6_add_item_notes.sql"),
        "-- revision: a1b2c3d4e5f6\n-- revises: none\n-- message: add item notes\n-- transactional: true\n\n\
         -- migrate:up\nALTER TABLE items ADD COLUMN note text;\n\n-- migrate:down\nALTER TABLE items DROP COLUMN note;\n",
    )
    .expect("write the migration");
    folder
}

/// `phased db upgrade` and the library (`engine::migrations::migrate`) look before they queue
/// too: a migration whose table a session holds a lock on is not attempted, and the failure
/// names the session.
#[tokio::test]
async fn db_upgrade_blocked_by_a_lock_holder_is_not_attempted_and_names_it() {
    use phased::engine::migrations::{migrate, MigrateOptions, Request, VersionError};
    let db = TestDb::pg().await;
    items_table(&db).await;
    let folder = note_migration(&crate::common::scratch_dir());
    let history = phased::migrations::load(&folder).expect("load the folder");
    let report = pg(&db).client().await;
    report
        .batch_execute("BEGIN; SELECT count(*) FROM items;")
        .await
        .expect("open the report's transaction");
    let report_pid = backend_pid(&report).await;
    let options = MigrateOptions {
        retry: phased::plan::RetryPolicy {
            attempts: 1,
            ..phased::plan::RetryPolicy::default()
        },
        ..MigrateOptions::default()
    };
    let spec = phased::migrations::Spec::Head;
    let mut target = db.target("db-upgrade").await;
    let result = phased::with_target!(&mut target, t => migrate(t, &history, "db:migrations", Request::Upgrade(&spec), options, &mut |_| {}).await);
    match result {
        Err(VersionError::Failed {
            error, completed, ..
        }) => {
            let message = error.to_string();
            assert!(message.starts_with("not attempted"), "{message}");
            assert!(
                message.contains(&format!("pid {report_pid} ")),
                "names the report's pid {report_pid}: {message}"
            );
            assert!(completed.is_empty());
        }
        other => panic!("expected the migration not to be attempted: {other:?}"),
    }
    assert!(!db.has_column("items", "note").await);
    report.batch_execute("COMMIT").await.expect("commit report");
    let mut target = db.target("db-upgrade").await;
    let result = phased::with_target!(&mut target, t => migrate(t, &history, "db:migrations", Request::Upgrade(&spec), options, &mut |_| {}).await);
    assert!(result.is_ok(), "{result:?}");
    assert!(db.has_column("items", "note").await);
}

/// A versioned migration run by a `migrations` step takes its locks from the parse of its SQL
/// (issue 16): with a session holding a lock on the migration's table, the step looks before it
/// queues, does not attempt the migration (it is not applied, nothing waits in the lock queue)
/// and names the session; once the session is gone the step applies it.
#[tokio::test]
async fn migration_blocked_by_a_lock_holder_is_not_attempted_and_names_it() {
    let db = TestDb::pg().await;
    items_table(&db).await;
    let pgdb = pg(&db);
    let base = crate::common::scratch_dir();
    note_migration(&base);
    let report = pgdb.client().await;
    report
        .batch_execute("BEGIN; SELECT count(*) FROM items;")
        .await
        .expect("open the report's transaction");
    let report_pid = backend_pid(&report).await;
    let loaded = crate::common::plan_in(
        &format!(
            "plan: online-migrations
defaults:
  lock_timeout: {LOCK_TIMEOUT_MS}ms
  retry: {{ attempts: 1, backoff: 100ms, max_backoff: 300ms }}
phases:
  - name: expand
    kind: expand
    steps:
      - migrations: {{ dir: migrations, to: head }}
"
        ),
        &base,
    );
    let (error, events) = match run(&db, &loaded, RunOptions::default()).await {
        Ok(events) => {
            panic!("the migration should not be attempted while items is locked: {events:?}")
        }
        Err(failed) => failed,
    };
    let message = error.to_string();
    assert!(
        message.contains("not attempted") && message.contains("ACCESS EXCLUSIVE"),
        "{message}"
    );
    assert!(
        message.contains(&format!("pid {report_pid} ")),
        "the failure names the report's pid {report_pid}: {message}"
    );
    assert!(
        !events.iter().any(|e| matches!(e, Event::StepRetry { .. })),
        "the migration queued for the lock instead of looking first: {events:?}"
    );
    assert!(!db.has_column("items", "note").await);
    assert_eq!(
        db.scalar("SELECT count(*) FROM phased.migrations WHERE revision = 'a1b2c3d4e5f6'")
            .await,
        0,
        "the migration is not recorded as applied"
    );
    let last_error = db
        .text("SELECT last_error FROM phased.steps WHERE plan = 'online-migrations'")
        .await
        .unwrap_or_default();
    assert!(
        last_error.starts_with("not attempted")
            && last_error.contains(&format!("pid {report_pid} ")),
        "{last_error}"
    );
    report.batch_execute("COMMIT").await.expect("commit report");
    run_ok(&db, &loaded).await;
    assert!(db.has_column("items", "note").await);
}
