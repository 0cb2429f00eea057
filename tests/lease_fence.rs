//! A runner that loses its lease stops: its PostgreSQL lock session terminated (or ended by
//! `idle_session_timeout`) lets a second runner take the plan's advisory lock, so the first must
//! see the loss within a second, commit no further work (each unit's state write checks the
//! lease generation in its own transaction), and exit 4 saying why. On SQLite the lease row of
//! a runner whose process is gone is taken over, and a taken-over runner is fenced the same way.
//! The tests wait on `pg_stat_activity` / `pg_locks`, the state tables and the runners' output.

use std::path::Path;
use std::time::Duration;

use crate::common::{PgDb, SqliteDb};
use crate::contention::{command, write_plan, Proc};

fn run_args(plan: &Path, url: &str) -> Vec<String> {
    vec![
        "run".to_string(),
        plan.display().to_string(),
        "--database".to_string(),
        url.to_string(),
        "--format".to_string(),
        "json".to_string(),
    ]
}

const PLAN: &str = "plan: fenced
phases:
  - name: expand
    kind: expand
    steps:
      - add_column: { table: items, name: v2, type: integer }
  - name: fill
    kind: migrate
    steps:
      - backfill: { table: items, set: { v2: \"v * 2\" }, where: \"v2 IS NULL\", batch_size: 1, pause: 5ms }
";

/// Terminates the session holding the plan's advisory lock (the lease); returns how many.
async fn terminate_lease_session(client: &tokio_postgres::Client) -> i64 {
    let sql = "SELECT count(pg_terminate_backend(l.pid)) FROM pg_locks l \
               WHERE l.locktype = 'advisory' AND l.granted \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())";
    client.query_one(sql, &[]).await.expect("terminate").get(0)
}

// The lock session of a running backfill is terminated and a second runner started: the first
// runner stops with exit 4 ("the lease was lost"), the second takes the lease and finishes.
#[tokio::test]
async fn a_runner_whose_lock_session_is_terminated_stops_and_a_second_runner_finishes() {
    let db = PgDb::new().await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE items (id bigint PRIMARY KEY, v integer NOT NULL);
             INSERT INTO items SELECT i, i FROM generate_series(1, 3000) i;",
        )
        .await
        .expect("items");
    let dir = tempfile::tempdir().expect("tmp");
    let plan = write_plan(dir.path(), PLAN);
    let mut first = Proc::spawn(command(&run_args(&plan, &db.url), None));
    first.wait_for("a backfill batch", |l| l.contains("\"backfill_progress\""));
    assert_eq!(terminate_lease_session(&client).await, 1);
    // The terminated backend releases the advisory lock as it exits: start the second runner
    // once it has (a condition in pg_locks, checked again until it holds).
    let held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
                AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";
    let mut free = false;
    for _ in 0..3000 {
        let n: i64 = client.query_one(held, &[]).await.expect("pg_locks").get(0);
        if n == 0 {
            free = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(free, "the terminated session still holds the lease");
    let second = Proc::spawn(command(&run_args(&plan, &db.url), None));
    let (first_code, first_text) = first.finish();
    let (second_code, second_text) = second.finish();
    assert_eq!(first_code, Some(4), "first runner:\n{first_text}");
    assert!(
        first_text.contains("the lease was lost"),
        "first runner:\n{first_text}"
    );
    assert_eq!(second_code, Some(0), "second runner:\n{second_text}");
    let left: i64 = client
        .query_one(
            "SELECT count(*) FROM items WHERE v2 IS DISTINCT FROM v * 2",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 0, "second runner:\n{second_text}");
}

// The same with `idle_session_timeout`: the lock session idles between the step's statements
// and the server ends it; the heartbeat keeps it busy, so the runner keeps its lease and
// finishes alone.
#[tokio::test]
async fn idle_session_timeout_does_not_end_a_runner_s_lease() {
    let db = PgDb::new().await;
    let client = db.client().await;
    client
        .batch_execute(&format!(
            "CREATE TABLE items (id bigint PRIMARY KEY, v integer NOT NULL);
             INSERT INTO items SELECT i, i FROM generate_series(1, 600) i;
             ALTER DATABASE \"{}\" SET idle_session_timeout = '1s';",
            db.name
        ))
        .await
        .expect("items");
    let dir = tempfile::tempdir().expect("tmp");
    let plan = write_plan(dir.path(), PLAN);
    let runner = Proc::spawn(command(&run_args(&plan, &db.url), None));
    let (code, text) = runner.finish();
    assert_eq!(code, Some(0), "{text}");
}

// SQLite: the first runner's lease row is made to look like a dead process's (as after a pid
// was reused, or a runner of this process taken over), a second runner takes it over and bumps
// the generation: the first is fenced at its next batch, exits 4, and the second finishes.
#[test]
fn a_sqlite_runner_whose_lease_is_taken_over_stops_at_its_next_unit() {
    let db = SqliteDb::new();
    db.conn()
        .execute_batch(
            "CREATE TABLE items (id INTEGER PRIMARY KEY, v INTEGER NOT NULL);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
             INSERT INTO items (id, v) SELECT i, i FROM n;",
        )
        .expect("items");
    let plan = write_plan(db.dir.path(), PLAN);
    let mut first = Proc::spawn(command(&run_args(&plan, &db.url()), None));
    first.wait_for("a backfill batch", |l| l.contains("\"backfill_progress\""));
    let mut gone = std::process::Command::new("true").spawn().expect("true");
    let dead = gone.id();
    gone.wait().expect("reap");
    let conn = db.conn();
    conn.busy_timeout(Duration::from_secs(60)).expect("busy");
    conn.execute(
        "UPDATE phased_lease SET pid = ?1 WHERE plan = 'fenced'",
        [dead],
    )
    .expect("make the lease row stale");
    let second = Proc::spawn(command(&run_args(&plan, &db.url()), None));
    let (first_code, first_text) = first.finish();
    let (second_code, second_text) = second.finish();
    assert_eq!(first_code, Some(4), "first runner:\n{first_text}");
    assert!(
        first_text.contains("the lease was lost"),
        "first runner:\n{first_text}"
    );
    assert_eq!(second_code, Some(0), "second runner:\n{second_text}");
    let left: i64 = conn
        .query_row(
            "SELECT count(*) FROM items WHERE v2 IS NOT v * 2",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(left, 0);
}

// The lock session ends after the run's last unit committed, before the lease is released:
// the advisory lock ended with the session, so releasing it is done, not an error. (The run
// used to exit 1 with a bare "connection closed" after finishing its work; found by the fault
// sweep.)
#[tokio::test]
async fn releasing_a_lease_whose_lock_session_is_gone_succeeds() {
    use phased::db::prelude::*;
    let db = PgDb::new().await;
    let client = db.client().await;
    let mut target = db.target("gone").await;
    target.ensure_state().await.expect("state tables");
    assert!(target.acquire_lease("gone").await.expect("lease").is_none());
    assert_eq!(terminate_lease_session(&client).await, 1);
    let holders = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                   AND application_name = 'phased/gone' \
                   AND pid IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory')";
    let mut gone = false;
    for _ in 0..3000 {
        let n: i64 = client
            .query_one(holders, &[])
            .await
            .expect("pg_stat_activity")
            .get(0);
        if n == 0 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(gone, "the terminated lock session is still there");
    let released = target.release_lease("gone").await;
    assert!(released.is_ok(), "{released:?}");
}
