//! Every state write that records a runner's work proves the lease generation in its own
//! transaction. A runner whose lease was taken over (its generation moved on, as when another
//! runner took the lease after its lock session ended) must record nothing more: no attempt, no
//! status, no checkpoint, no script progress, no versioned migration, no backup. Before this,
//! several of these writes (a step's status and checkpoint, a script's progress, a migration's
//! record, a backup's record) did not look at the fence at all, and the others looked at it in
//! a statement of its own, before the write, so a takeover in between went unseen.

use phased::db::backup::BackupRecord;
use phased::db::{
    BatchRequest, Database, DbError, MigrationRun, StepKey, StepStart, StepStatus, Timeouts, Unit,
};

use crate::common::{on_both, TestDb};

const PLAN: &str = "fenced";

fn key() -> StepKey {
    StepKey {
        plan: PLAN.to_string(),
        phase: "expand".to_string(),
        index: 0,
    }
}

/// What another runner taking the lease over does to the generation.
fn take_over_sql(db: &TestDb) -> &'static str {
    if db.is_pg() {
        "UPDATE phased.leases SET generation = generation + 1 WHERE plan = 'fenced'"
    } else {
        "UPDATE phased_lease_generations SET generation = generation + 1 WHERE plan = 'fenced'"
    }
}

fn steps_table(db: &TestDb) -> &'static str {
    if db.is_pg() {
        "phased.steps"
    } else {
        "phased_steps"
    }
}

fn lost<T: std::fmt::Debug>(what: &str, result: Result<T, DbError>) {
    assert!(
        matches!(result, Err(DbError::LeaseLost(_))),
        "{what} under a lease taken over: {result:?}"
    );
}

/// The step's row, as comparable text: status, attempts, checkpoint, rows_total, last_error.
async fn step_row(db: &TestDb) -> Option<String> {
    let t = steps_table(db);
    let cast = if db.is_pg() { "::text" } else { "" };
    db.text(&format!(
        "SELECT status || '|' || attempts{cast} || '|' || coalesce(checkpoint, '-') || '|' || \
         coalesce(rows_total{cast}, '-') || '|' || coalesce(last_error, '-') FROM {t} \
         WHERE plan = 'fenced' AND phase = 'expand' AND step_index = 0"
    ))
    .await
}

async fn takes_lease_and_begins<T: Database>(t: &mut T) {
    t.ensure_state().await.expect("state tables");
    assert!(t.acquire_lease(PLAN).await.expect("lease").is_none());
    let key = key();
    t.begin_step(&StepStart {
        key: &key,
        kind: "sql",
        label: "sql",
        checksum: "c",
    })
    .await
    .expect("begin under the runner's own lease");
}

async fn writes_refused<T: Database>(t: &mut T, db: &TestDb) {
    takes_lease_and_begins(t).await;
    let before = step_row(db).await;
    assert_eq!(before.as_deref(), Some("running|1|-|-|-"));
    db.execute(take_over_sql(db)).await;
    let key = key();
    lost(
        "begin_step",
        t.begin_step(&StepStart {
            key: &key,
            kind: "sql",
            label: "sql",
            checksum: "c",
        })
        .await,
    );
    lost("fail_step", t.fail_step(&key, "boom").await);
    lost("finish_step", t.finish_step(&key).await);
    lost(
        "set_step_status",
        t.set_step_status(&key, StepStatus::RolledBack).await,
    );
    lost("set_checkpoint", t.set_checkpoint(&key, Some("[7]")).await);
    lost("set_rows_total", t.set_rows_total(&key, 10).await);
    let heads = vec!["r1".to_string()];
    lost(
        "run_migration",
        t.run_migration(
            &MigrationRun {
                revision: "r1",
                checksum: "c",
                up: true,
                script: "CREATE TABLE from_migration (id integer)",
                transactional: true,
                heads_after: &heads,
                timeouts: Timeouts::default(),
                step: Some(&key),
            },
            &mut |_| {},
        )
        .await,
    );
    lost(
        "record_backup",
        t.record_backup(&BackupRecord {
            id: 0,
            plan: PLAN.to_string(),
            phase: "contract".to_string(),
            path: "/nowhere/backup".to_string(),
            size_bytes: 1,
            sha256: "0".repeat(64),
            duration_ms: 1,
            verified: true,
            created_at: "2026-11-28T00:00:00Z".to_string(),
        })
        .await,
    );
    assert_eq!(step_row(db).await, before, "the step's record changed");
    assert!(!db.has_table("from_migration").await);
    let recorded = if db.is_pg() {
        "SELECT (SELECT count(*) FROM phased.migrations) + (SELECT count(*) FROM phased.backups)"
    } else {
        "SELECT (SELECT count(*) FROM phased_migrations) + (SELECT count(*) FROM phased_backups)"
    };
    assert_eq!(
        db.scalar(recorded).await,
        0,
        "a migration or backup was recorded"
    );
}

/// Each write that records work, made by a runner whose lease another runner took over, is
/// refused with "lease lost" and changes nothing.
async fn a_runner_whose_lease_was_taken_over_records_no_further_work(db: TestDb) {
    let mut target = db.target(PLAN).await;
    phased::with_target!(&mut target, t => writes_refused(t, &db).await);
}
on_both!(a_runner_whose_lease_was_taken_over_records_no_further_work);

/// One batch of `items`: fills `v2` for the next `limit` rows after `after`.
async fn batch<T: Database>(
    t: &mut T,
    after: Option<&str>,
    limit: u64,
) -> Result<phased::db::BatchOutcome, DbError> {
    let key = key();
    let columns = vec!["id".to_string()];
    let set = vec![("v2".to_string(), "v * 2".to_string())];
    t.backfill_batch(&BatchRequest {
        key: &key,
        table: "items",
        key_columns: &columns,
        set: &set,
        predicate: Some("v2 IS NULL"),
        after,
        limit,
        timeouts: Timeouts::default(),
        rows_per_second: 0.0,
        key_types_hint: &[],
        down: false,
        pace: None,
    })
    .await
}

async fn batch_refused<T: Database>(t: &mut T, db: &TestDb) {
    takes_lease_and_begins(t).await;
    let first = batch(t, None, 3)
        .await
        .expect("a batch under the runner's own lease");
    assert_eq!(first.rows, 3);
    let last = first.last_key.expect("the first batch's last key");
    let before = step_row(db).await;
    assert_eq!(before, Some(format!("running|1|{last}|-|-")));
    db.execute(take_over_sql(db)).await;
    lost("a backfill batch", batch(t, Some(&last), 3).await);
    assert_eq!(step_row(db).await, before, "the checkpoint moved");
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE v2 IS NOT NULL")
            .await,
        3,
        "a taken-over runner's batch changed rows"
    );
}

/// A backfill batch of a runner whose lease was taken over writes no row and no checkpoint: its
/// transaction reads the lease generation (locked `FOR SHARE` on PostgreSQL) before its UPDATE.
async fn a_taken_over_backfill_writes_no_batch(db: TestDb) {
    db.execute(
        "CREATE TABLE items (id bigint PRIMARY KEY, v integer NOT NULL, v2 integer);
         INSERT INTO items (id, v) VALUES (1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (7, 7);",
    )
    .await;
    let mut target = db.target(PLAN).await;
    phased::with_target!(&mut target, t => batch_refused(t, &db).await);
}
on_both!(a_taken_over_backfill_writes_no_batch);

async fn script_progress_refused<T: Database>(t: &mut T, db: &TestDb) {
    takes_lease_and_begins(t).await;
    // The script's first statement stands for the takeover happening while it runs: the
    // statement completes, then the record of its completion must be refused.
    let script = format!(
        "{}; CREATE TABLE after_takeover (id integer)",
        take_over_sql(db)
    );
    let key = key();
    lost(
        "a script's next statement",
        t.apply(
            &key,
            &[Unit::Script(script)],
            Timeouts::default(),
            StepStatus::Done,
            &mut |_| {},
        )
        .await,
    );
    assert_eq!(
        step_row(db).await.as_deref(),
        Some("running|1|-|-|-"),
        "a taken-over runner recorded its script's progress"
    );
    assert!(!db.has_table("after_takeover").await);
}

/// A `transactional: false` script whose lease is taken over while a statement runs records
/// no progress for it (the new holder runs it again from its own record) and runs no more.
async fn a_taken_over_script_records_no_progress(db: TestDb) {
    let mut target = db.target(PLAN).await;
    phased::with_target!(&mut target, t => script_progress_refused(t, &db).await);
}
on_both!(a_taken_over_script_records_no_progress);

/// A runner whose lease is taken over while `pg_dump` writes the backup before a phase stops
/// as a runner that lost its lease — exit 4, "the lease was lost" — with the backup unrecorded
/// and the phase not started. (Found by the fault sweep: it exited 1 as a failed backup.) A
/// stand-in `pg_dump` moves the generation on, as a runner taking the lease over would, then
/// hands over to the real one.
#[tokio::test]
async fn a_lease_lost_during_the_backup_exits_4() {
    use crate::common::{phased_cmd, real_tool, scratch_dir, Shims};
    let db = TestDb::pg().await;
    let dir = scratch_dir();
    let plan = dir.join("plan.yaml");
    std::fs::write(
        &plan,
        "plan: fenced\nbackup: { before: [contract], dir: backups }\nphases:\n  - name: contract\n    kind: contract\n    steps:\n      - sql: \"CREATE TABLE after_backup (id integer)\"\n",
    )
    .expect("write the plan");
    let shims = Shims::new();
    shims.add(
        "pg_dump",
        &format!(
            "'{}' -Atq '{}' -c \"{}\" >/dev/null || exit 99\nexec '{}' \"$@\"\n",
            real_tool("psql"),
            db.url(),
            take_over_sql(&db),
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
        .args(["--database", &db.url()])
        .env("PHASED_PG_BIN", shims.dir.path())
        .output()
        .expect("phased run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("the lease was lost"), "{stderr}");
    assert_eq!(db.scalar("SELECT count(*) FROM phased.backups").await, 0);
    assert!(!db.has_table("after_backup").await);
}
