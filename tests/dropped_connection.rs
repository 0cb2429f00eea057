//! A step connection dropped under phased (`pg_terminate_backend`, a failover, a proxy
//! restart) mid-backfill or mid-`CREATE INDEX CONCURRENTLY`: the runner opens a new one and
//! carries on within the retry budget (the checkpoint and the INVALID-index repair make that
//! safe), and when the budget is spent it records the failure, with the original error, before
//! it exits. The test waits on conditions in `pg_stat_activity` and on the runner's output.

use std::path::Path;
use std::time::Duration;

use crate::common::PgDb;
use crate::contention::{command, write_plan, Proc};

fn run_args(plan: &Path, db: &PgDb) -> Vec<String> {
    vec![
        "run".to_string(),
        plan.display().to_string(),
        "--database".to_string(),
        db.url.clone(),
        "--format".to_string(),
        "json".to_string(),
    ]
}

/// Terminates phased's sessions for `plan` other than the one holding the lease (the step
/// connection and any spare one of its pool); returns how many.
async fn terminate_step_sessions(client: &tokio_postgres::Client, plan: &str) -> i64 {
    let sql = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
               WHERE datname = current_database() AND application_name = $1 \
               AND pid NOT IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted)";
    let app = format!("phased/{plan}");
    client
        .query_one(sql, &[&app])
        .await
        .expect("terminate")
        .get(0)
}

/// Waits until a session of phased runs a statement starting with `prefix` (a condition in
/// pg_stat_activity, checked again until it holds).
async fn wait_for_statement(client: &tokio_postgres::Client, prefix: &str) {
    let sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
               AND application_name LIKE 'phased/%' AND query LIKE $1 || '%' AND state = 'active'";
    for _ in 0..6000 {
        let n: i64 = client
            .query_one(sql, &[&prefix])
            .await
            .expect("pg_stat_activity")
            .get(0);
        if n > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no phased session ran `{prefix}…`");
}

fn backfill_plan(attempts: u32) -> String {
    format!(
        "plan: dropped
defaults:
  retry: {{ attempts: {attempts}, backoff: 50ms, max_backoff: 200ms }}
phases:
  - name: expand
    kind: expand
    steps:
      - add_column: {{ table: items, name: v2, type: integer }}
  - name: fill
    kind: migrate
    steps:
      - backfill: {{ table: items, set: {{ v2: \"v * 2\" }}, where: \"v2 IS NULL\", batch_size: 1, pause: 2ms }}
"
    )
}

async fn items(client: &tokio_postgres::Client) {
    client
        .batch_execute(
            "CREATE TABLE items (id bigint PRIMARY KEY, v integer NOT NULL);
             INSERT INTO items SELECT i, i FROM generate_series(1, 400) i;",
        )
        .await
        .expect("items");
}

// The step connection is terminated after the backfill's first batches: the runner reconnects,
// resumes from its checkpoint and finishes, exit 0.
#[tokio::test]
async fn a_step_connection_dropped_mid_backfill_is_reopened_and_the_backfill_finishes() {
    let db = PgDb::new().await;
    let client = db.client().await;
    items(&client).await;
    let dir = tempfile::tempdir().expect("tmp");
    let plan = write_plan(dir.path(), &backfill_plan(5));
    let mut runner = Proc::spawn(command(&run_args(&plan, &db), None));
    runner.wait_for("a backfill batch", |l| l.contains("\"backfill_progress\""));
    assert!(terminate_step_sessions(&client, "dropped").await >= 1);
    let (code, text) = runner.finish();
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("\"step_retry\""), "{text}");
    let left: i64 = client
        .query_one(
            "SELECT count(*) FROM items WHERE v2 IS DISTINCT FROM v * 2",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 0, "{text}");
    let status: String = client
        .query_one(
            "SELECT status FROM phased.steps WHERE plan = 'dropped' AND phase = 'fill'",
            &[],
        )
        .await
        .expect("status")
        .get(0);
    assert_eq!(status, "done");
}

// With no retry left, the dropped connection fails the step: a `step_failed` event, exit 1,
// and the failure recorded in the state with the original error (not left `running`).
#[tokio::test]
async fn a_step_connection_dropped_with_no_retry_left_records_the_failure() {
    let db = PgDb::new().await;
    let client = db.client().await;
    items(&client).await;
    let dir = tempfile::tempdir().expect("tmp");
    let plan = write_plan(dir.path(), &backfill_plan(1));
    let mut runner = Proc::spawn(command(&run_args(&plan, &db), None));
    runner.wait_for("a backfill batch", |l| l.contains("\"backfill_progress\""));
    assert!(terminate_step_sessions(&client, "dropped").await >= 1);
    let (code, text) = runner.finish();
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("\"step_failed\""), "{text}");
    let row = client
        .query_one(
            "SELECT status, coalesce(last_error, '') FROM phased.steps WHERE plan = 'dropped' AND phase = 'fill'",
            &[],
        )
        .await
        .expect("status");
    let (status, error): (String, String) = (row.get(0), row.get(1));
    assert_eq!(status, "failed", "{text}");
    assert!(
        error.contains("terminating connection") || error.contains("connection closed"),
        "{error}"
    );
}

// The step connection is terminated while `CREATE INDEX CONCURRENTLY` waits for a writer's
// transaction: the runner reconnects, drops the INVALID index the build left and builds it
// again once the writer is gone, exit 0, the index valid.
#[tokio::test]
async fn a_step_connection_dropped_mid_create_index_concurrently_is_reopened_and_the_index_built() {
    let db = PgDb::new().await;
    let client = db.client().await;
    items(&client).await;
    let writer = db.client().await;
    writer
        .batch_execute("BEGIN; INSERT INTO items VALUES (100000, 1)")
        .await
        .expect("writer");
    let dir = tempfile::tempdir().expect("tmp");
    let plan = write_plan(
        dir.path(),
        "plan: dropped
defaults:
  retry: { attempts: 5, backoff: 50ms, max_backoff: 200ms }
phases:
  - name: expand
    kind: expand
    steps:
      - create_index: { table: items, name: items_v_idx, columns: [v] }
",
    );
    let runner = Proc::spawn(command(&run_args(&plan, &db), None));
    wait_for_statement(&client, "CREATE INDEX CONCURRENTLY").await;
    assert!(terminate_step_sessions(&client, "dropped").await >= 1);
    writer.batch_execute("COMMIT").await.expect("commit");
    let (code, text) = runner.finish();
    assert_eq!(code, Some(0), "{text}");
    let valid: bool = client
        .query_one(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'items_v_idx'::regclass",
            &[],
        )
        .await
        .expect("index")
        .get(0);
    assert!(valid, "{text}");
}

/// The step connection dropped while `pg_dump` writes the backup before a phase: the backup is
/// recorded on a connection opened again, and the run finishes (it used to exit 1, "the backup
/// before phase `contract` failed: connection closed"; found by the fault sweep). A stand-in
/// `pg_dump` terminates phased's step session and waits until it is gone, then hands over to
/// the real one.
#[tokio::test]
async fn a_step_connection_dropped_during_the_backup_is_reopened_to_record_it() {
    use crate::common::{phased_cmd, real_tool, scratch_dir, Shims};
    let db = PgDb::new().await;
    let dir = scratch_dir();
    let plan = dir.join("plan.yaml");
    std::fs::write(
        &plan,
        "plan: dropped\nbackup: { before: [contract], dir: backups }\nphases:\n  - name: contract\n    kind: contract\n    steps:\n      - sql: \"CREATE TABLE after_backup (id integer)\"\n",
    )
    .expect("write the plan");
    let psql = format!("'{}' -Atq '{}' -c", real_tool("psql"), db.url);
    let step_sessions = "FROM pg_stat_activity WHERE datname = current_database() \
                         AND application_name = 'phased/dropped' \
                         AND pid NOT IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted)";
    let shims = Shims::new();
    shims.add(
        "pg_dump",
        &format!(
            "case \"$*\" in *--file=*)\n\
               {psql} \"SELECT count(pg_terminate_backend(pid)) {step_sessions}\" >/dev/null || exit 99\n\
               i=0; while [ \"$({psql} \"SELECT count(*) {step_sessions}\")\" != 0 ]; do\n\
                 i=$((i + 1)); [ $i -gt 600 ] && exit 98; sleep 0.05; done;;\n\
             esac\n\
             exec '{}' \"$@\"\n",
            real_tool("pg_dump")
        ),
    );
    shims.add(
        "pg_restore",
        &format!("exec '{}' \"$@\"\n", real_tool("pg_restore")),
    );
    let out = phased_cmd()
        .arg("run")
        .arg(&plan)
        .args(["--database", &db.url])
        .env("PHASED_PG_BIN", shims.dir.path())
        .output()
        .expect("phased run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let client = db.client().await;
    let recorded: i64 = client
        .query_one("SELECT count(*) FROM phased.backups WHERE verified", &[])
        .await
        .expect("backups")
        .get(0);
    assert_eq!(recorded, 1);
    let made: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname = 'after_backup'",
            &[],
        )
        .await
        .expect("pg_class")
        .get(0);
    assert_eq!(made, 1);
}
