//! `change_type` on both targets with the two-application harness: the old and the new
//! application both write `total_cents` by its one name while each phase runs; every statement
//! succeeds, the shadow equals `up` of the column on every row before contract, the swap keeps
//! every value with its index, constraint, default and NOT NULL; rollback from each phase
//! before contract keeps every row either application wrote; a kill -9 mid-backfill on 200k
//! rows resumes to every row right.

use std::process::Command;
use std::time::{Duration, Instant};

use phased::engine::events::Recorder;
use phased::engine::rollback::{rollback, RollbackOptions};
use phased::plan::LoadedPlan;

use crate::common::two_apps::{phase_under_writers, App, Writer};
use crate::common::{on_both, phased_cmd, plan, TestDb};

const CHANGE_TYPE: &str = r#"
plan: widen
changes:
  - change_type: { table: orders, column: total_cents, type: bigint }
"#;

const SHADOW: &str = "phased_new_total_cents";

/// 300 orders; on PostgreSQL with a CHECK on the column too (SQLite cannot drop a column a
/// CHECK uses: `change_type` refuses it there, see below).
async fn orders(db: &TestDb) {
    let check = if db.is_pg() {
        " CONSTRAINT orders_total_check CHECK (total_cents >= 0)"
    } else {
        ""
    };
    db.execute(&format!(
        "CREATE TABLE orders (id integer PRIMARY KEY, total_cents integer NOT NULL DEFAULT 0{check}, note text);
         CREATE INDEX orders_total_idx ON orders (total_cents);"
    ))
    .await;
    let rows: Vec<String> = (1..=300).map(|i| format!("({i}, {})", i * 10)).collect();
    db.execute(&format!(
        "INSERT INTO orders (id, total_cents) VALUES {}",
        rows.join(", ")
    ))
    .await;
}

/// Both applications use the name `total_cents`; the new one also leaves it to the default.
const OLD_WRITES: &[&str] = &[
    "INSERT INTO orders (id, total_cents) VALUES (100000000 + {i}, {i})",
    "UPDATE orders SET total_cents = total_cents + 1 WHERE id = {i} % 300 + 1",
];
const NEW_WRITES: &[&str] = &[
    "INSERT INTO orders (id, note) VALUES (200000000 + {i}, 'new')",
    "UPDATE orders SET note = 'n{i}', total_cents = {i} WHERE id = ({i} * 7) % 300 + 1",
];

/// Rows whose shadow is not `up` of the column (the consistency promised before contract).
async fn inconsistent(app: &App, db: &TestDb) -> Option<String> {
    let differs = if db.is_pg() {
        "IS DISTINCT FROM"
    } else {
        "IS NOT"
    };
    app.value(&format!(
        "SELECT count(*) FROM orders WHERE {SHADOW} {differs} CAST(total_cents AS bigint)"
    ))
    .await
}

async fn column_type(db: &TestDb) -> Option<String> {
    match db {
        TestDb::Pg(_) => db
            .text("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'orders'::regclass AND attname = 'total_cents'")
            .await,
        TestDb::Sqlite(_) => db
            .text("SELECT type FROM pragma_table_info('orders') WHERE name = 'total_cents'")
            .await,
    }
}

async fn roll_back_all(db: &TestDb, loaded: &LoadedPlan) -> Vec<String> {
    let mut target = db.target(loaded.plan.id()).await;
    let mut recorder = Recorder::default();
    match phased::with_target!(&mut target, t => rollback(t, loaded, &RollbackOptions::default(), &mut recorder).await)
    {
        Ok(undone) => undone,
        Err(e) => panic!("rollback failed: {e}"),
    }
}

async fn change_type_with_two_apps(db: TestDb) {
    orders(&db).await;
    let loaded = plan(CHANGE_TYPE);
    let phases: Vec<&str> = loaded.plan.phases().map(|p| p.name()).collect();
    assert_eq!(phases, ["expand", "migrate", "contract"]);

    let old = Writer::start(&db, "old app", 0, OLD_WRITES).await;
    phase_under_writers(&db, &loaded, "expand", vec![old]).await;
    let app = App::open(&db, "check").await;
    // A row the old application writes after expand has the shadow at once (rows written
    // before the trigger existed wait for the backfill).
    app.exec("INSERT INTO orders (id, total_cents) VALUES (99999999, 42)")
        .await;
    assert_eq!(
        app.value(&format!("SELECT {SHADOW} FROM orders WHERE id = 99999999"))
            .await
            .as_deref(),
        Some("42")
    );

    let old = Writer::start(&db, "old app", 10_000_000, OLD_WRITES).await;
    let new = Writer::start(&db, "new app", 10_000_000, NEW_WRITES).await;
    let rounds = phase_under_writers(&db, &loaded, "migrate", vec![old, new]).await;
    assert!(rounds.iter().all(|&n| n > 0));

    // Before contract: every row, whoever wrote it, has the shadow equal to `up` of the column.
    assert_eq!(inconsistent(&app, &db).await.as_deref(), Some("0"));
    let old_rows = db
        .scalar("SELECT count(*) FROM orders WHERE id BETWEEN 100000000 AND 199999999")
        .await;
    let new_rows = db
        .scalar("SELECT count(*) FROM orders WHERE id >= 200000000")
        .await;
    assert!(old_rows > 0 && new_rows > 0);
    let before = app
        .rows("SELECT id, total_cents, note FROM orders ORDER BY id")
        .await;

    // Contract under the new application's inserts (new keys only, so the rows before stay).
    let new = Writer::start(
        &db,
        "new app",
        20_000_000,
        &["INSERT INTO orders (id, total_cents) VALUES (200000000 + {i}, {i})"],
    )
    .await;
    phase_under_writers(&db, &loaded, "contract", vec![new]).await;

    assert_eq!(column_type(&db).await.as_deref(), Some("bigint"));
    assert!(!db.has_column("orders", SHADOW).await);
    let after = app
        .rows("SELECT id, total_cents, note FROM orders WHERE id < 220000000 ORDER BY id")
        .await;
    assert_eq!(after, before, "every value kept through the swap");
    // The index is back under its name, on the column; NOT NULL and the default hold.
    assert!(db.has_index("orders_total_idx").await);
    let indexed = match &db {
        TestDb::Pg(_) => "SELECT count(*) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) WHERE i.indexrelid = 'orders_total_idx'::regclass AND a.attname = 'total_cents' AND i.indisvalid",
        TestDb::Sqlite(_) => "SELECT count(*) FROM pragma_index_info('orders_total_idx') WHERE name = 'total_cents'",
    };
    assert_eq!(db.scalar(indexed).await, 1);
    assert!(app
        .try_exec("INSERT INTO orders (id, total_cents) VALUES (-1, NULL)")
        .await
        .is_err_and(|e| e.to_lowercase().contains("null")));
    app.exec("INSERT INTO orders (id) VALUES (-2)").await;
    assert_eq!(
        app.value("SELECT total_cents FROM orders WHERE id = -2")
            .await
            .as_deref(),
        Some("0")
    );
    // The new type's range, which the old column refused.
    app.exec("INSERT INTO orders (id, total_cents) VALUES (-3, 5000000000)")
        .await;
    if db.is_pg() {
        assert!(app
            .try_exec("INSERT INTO orders (id, total_cents) VALUES (-4, -1)")
            .await
            .is_err_and(|e| e.contains("orders_total_check")));
        assert_eq!(
            db.scalar("SELECT count(*) FROM pg_constraint WHERE conname = 'orders_total_check' AND convalidated")
                .await,
            1
        );
    }
    let triggers = match &db {
        TestDb::Pg(_) => "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'phased_sync%'",
        TestDb::Sqlite(_) => {
            "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND name LIKE 'phased_sync%'"
        }
    };
    assert_eq!(db.scalar(triggers).await, 0);
    // Re-running is a no-op.
    let events = crate::common::run_ok(&db, &loaded).await;
    assert!(!events
        .iter()
        .any(|e| matches!(e, phased::engine::Event::StepStart { .. })));
}
on_both!(change_type_with_two_apps);

/// Rollback after `phase` (expand, or expand and migrate): the shadow and its trigger go, the
/// column keeps its type, and every row both applications wrote stays as written.
async fn rolled_back_after(db: &TestDb, phase: &str) {
    orders(db).await;
    let loaded = plan(CHANGE_TYPE);
    let old = Writer::start(db, "old app", 0, OLD_WRITES).await;
    phase_under_writers(db, &loaded, "expand", vec![old]).await;
    if phase == "migrate" {
        let old = Writer::start(db, "old app", 10_000_000, OLD_WRITES).await;
        let new = Writer::start(db, "new app", 10_000_000, NEW_WRITES).await;
        phase_under_writers(db, &loaded, "migrate", vec![old, new]).await;
    } else {
        let new = Writer::start(db, "new app", 10_000_000, NEW_WRITES).await;
        let (_, errors) = new.stop().await;
        assert!(errors.is_empty(), "{errors:?}");
    }
    let check = App::open(db, "check").await;
    let rows = check
        .rows("SELECT id, total_cents, note FROM orders ORDER BY id")
        .await;
    assert!(
        db.scalar("SELECT count(*) FROM orders WHERE id >= 200000000")
            .await
            > 0
    );

    let undone = roll_back_all(db, &loaded).await;
    assert!(!undone.is_empty());
    assert!(!db.has_column("orders", SHADOW).await);
    assert_eq!(
        column_type(db).await.map(|t| t.to_lowercase()).as_deref(),
        Some("integer")
    );
    assert_eq!(
        check
            .rows("SELECT id, total_cents, note FROM orders ORDER BY id")
            .await,
        rows
    );
    // The old application writes on, as before the plan.
    App::open(db, "old app")
        .await
        .exec("INSERT INTO orders (id, total_cents) VALUES (-5, 7)")
        .await;
}

async fn rolled_back_after_expand(db: TestDb) {
    rolled_back_after(&db, "expand").await;
}
on_both!(rolled_back_after_expand);

async fn rolled_back_after_migrate(db: TestDb) {
    rolled_back_after(&db, "migrate").await;
}
on_both!(rolled_back_after_migrate);

/// The classic: an `integer` serial primary key that other tables reference, widened to
/// `bigint`. The swap keeps the sequence, the primary key (from the index built concurrently)
/// and the foreign key (dropped, added back NOT VALID, validated).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_referenced_serial_primary_key_widens_on_postgres() {
    let db = TestDb::pg().await;
    db.execute(
        "CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL);
         CREATE TABLE invoices (id serial PRIMARY KEY, customer_id integer NOT NULL CONSTRAINT invoices_customer_fk REFERENCES customers (id));
         INSERT INTO customers (name) SELECT 'c' || g FROM generate_series(1, 200) g;
         INSERT INTO invoices (customer_id) SELECT (g % 200) + 1 FROM generate_series(1, 400) g;",
    )
    .await;
    let loaded = plan(
        "plan: widen-pk\nchanges:\n  - change_type: { table: customers, column: id, type: bigint }\n",
    );
    let old = Writer::start(
        &db,
        "old app",
        0,
        &[
            "INSERT INTO customers (name) VALUES ('old {i}')",
            "INSERT INTO invoices (customer_id) VALUES ({i} % 200 + 1)",
        ],
    )
    .await;
    phase_under_writers(&db, &loaded, "expand", vec![old]).await;
    let old = Writer::start(
        &db,
        "old app",
        1_000_000,
        &["INSERT INTO customers (name) VALUES ('old {i}')"],
    )
    .await;
    phase_under_writers(&db, &loaded, "migrate", vec![old]).await;
    let customers = db.scalar("SELECT count(*) FROM customers").await;
    let new = Writer::start(
        &db,
        "new app",
        2_000_000,
        &["INSERT INTO customers (name) VALUES ('new {i}')"],
    )
    .await;
    phase_under_writers(&db, &loaded, "contract", vec![new]).await;

    assert_eq!(
        db.text("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'customers'::regclass AND attname = 'id'")
            .await
            .as_deref(),
        Some("bigint")
    );
    assert!(db.scalar("SELECT count(*) FROM customers").await > customers);
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM pg_constraint WHERE conname = 'customers_pkey' AND contype = 'p'"
        )
        .await,
        1
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM pg_constraint WHERE conname = 'invoices_customer_fk' AND convalidated")
            .await,
        1
    );
    // The sequence survived the old column and still feeds the new one.
    let app = App::open(&db, "new app").await;
    app.exec("INSERT INTO customers (name) VALUES ('after')")
        .await;
    assert!(app
        .try_exec("INSERT INTO invoices (customer_id) VALUES (-42)")
        .await
        .is_err_and(|e| e.contains("invoices_customer_fk")));
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM (SELECT id FROM customers GROUP BY id HAVING count(*) > 1) d"
        )
        .await,
        0
    );
}

/// SQLite's `DROP COLUMN` refuses a column in a CHECK: the expand part refuses first, saying
/// so, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_refuses_a_column_in_a_check() {
    let db = TestDb::sqlite();
    db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total_cents INTEGER CHECK (total_cents >= 0))")
        .await;
    let loaded = plan(CHANGE_TYPE);
    let err = match crate::common::run(&db, &loaded, Default::default()).await {
        Ok(_) => panic!("change_type of a column in a CHECK ran on SQLite"),
        Err((e, _)) => e.to_string(),
    };
    assert!(err.contains("is in a CHECK constraint"), "{err}");
    assert!(!db.has_column("orders", SHADOW).await);
}

/// `phased plan` shows each part under the phase where it runs.
#[test]
fn plan_shows_the_parts_under_their_phases() {
    let dir = crate::common::scratch_dir();
    std::fs::write(dir.join("p.yaml"), CHANGE_TYPE).expect("write the plan");
    let out = phased_cmd()
        .current_dir(&dir)
        .args(["plan", "--offline", "--dialect", "postgres", "p.yaml"])
        .output()
        .expect("phased plan");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let at = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("`{needle}` is not in:\n{text}"))
    };
    assert!(
        at("phase expand (expand)")
            < at("ADD COLUMN IF NOT EXISTS \"phased_new_total_cents\" bigint")
    );
    assert!(
        at("CREATE TRIGGER \"phased_sync_orders_phased_new_total_cents\"")
            < at("phase migrate (migrate)")
    );
    assert!(at("phase migrate (migrate)") < at("backfill orders (phased_new_total_cents)"));
    assert!(
        at("backfill orders (phased_new_total_cents)")
            < at("change_type orders.total_cents → bigint: indexes, constraints and NOT NULL on the new column")
    );
    assert!(
        at("phase contract (contract)")
            < at("change_type orders.total_cents → bigint: swap in the new column")
    );
    assert!(
        at("phase contract (contract)")
            < at("RENAME COLUMN \"phased_new_total_cents\" TO \"total_cents\"")
    );
}

const ROWS: i64 = 200_000;

/// kill -9 mid-backfill of a 200k-row table, held between batches by the throttle file so the
/// kill lands mid-way whatever the machine's speed; the rerun resumes and every row is right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_backfill_resumes_on_postgres() {
    let db = TestDb::pg().await;
    db.execute(&format!(
        "CREATE TABLE orders (id integer PRIMARY KEY, total_cents integer NOT NULL);
         INSERT INTO orders SELECT g, g % 1000 FROM generate_series(1, {ROWS}) g;"
    ))
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = dir.path().join("plan.yaml");
    std::fs::write(
        &plan,
        "plan: widen\nchanges:\n  - change_type: { table: orders, column: total_cents, type: bigint, backfill: { batch_size: 500, pause: 10ms } }\n",
    )
    .expect("write plan");
    let throttle = dir.path().join("pause");
    // The state tables, so the test can watch them from the first batch on.
    let mut target = db.target("widen").await;
    phased::with_target!(&mut target, t => t.ensure_state().await).expect("state tables");
    let throttle_arg = throttle.display().to_string();
    let (mut child, stderr) =
        crate::common::spawn_run(&plan, &db.url(), &["--throttle-file", &throttle_arg]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while db
        .scalar("SELECT count(*) FROM phased.steps WHERE rows_done > 0")
        .await
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the first batches"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::write(&throttle, "").expect("throttle file");
    while !stderr.lock().map(|s| s.contains("paused")).unwrap_or(false) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the backfill to pause"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = child.wait().expect("wait");
    assert_eq!(exit.code(), None, "killed by the signal");

    let done = db.scalar("SELECT max(rows_done) FROM phased.steps").await;
    assert!(done > 0 && done < ROWS, "mid-backfill: {done}");
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM orders WHERE {SHADOW} IS NOT NULL"
        ))
        .await,
        done,
        "the committed batches, no more"
    );

    std::fs::remove_file(&throttle).expect("remove throttle file");
    crate::common::rerun_succeeds(&plan, &db.url());
    assert_eq!(
        db.text("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'orders'::regclass AND attname = 'total_cents'")
            .await
            .as_deref(),
        Some("bigint")
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM orders WHERE total_cents = id % 1000")
            .await,
        ROWS
    );
}

/// `phased plan` against the database before anything ran: every part renders from the
/// catalog as it is (the copies and the swap shown as they will run), and nothing changes.
async fn plan_against_the_database_before_anything_ran(db: TestDb) {
    orders(&db).await;
    let dir = crate::common::scratch_dir();
    std::fs::write(dir.join("p.yaml"), CHANGE_TYPE).expect("write the plan");
    let out = phased_cmd()
        .current_dir(&dir)
        .args(["plan", "p.yaml", "--database", &db.url()])
        .output()
        .expect("phased plan");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = if db.is_pg() {
        "CREATE INDEX CONCURRENTLY \"phased_new_orders_total_idx\" ON public.orders USING btree (\"phased_new_total_cents\")"
    } else {
        "DROP INDEX IF EXISTS \"orders_total_idx\""
    };
    assert!(text.contains(expected), "{expected}\nnot in\n{text}");
    assert!(
        text.contains("RENAME COLUMN \"phased_new_total_cents\" TO \"total_cents\""),
        "{text}"
    );
    assert!(!db.has_column("orders", SHADOW).await);
}
on_both!(plan_against_the_database_before_anything_ran);

/// A `change_type` of `customers.id` (a serial primary key) that `invoices` references, with
/// its own lock_timeout long enough for the waits the tests below arrange, and no backup.
const WIDEN_REFERENCED: &str = r#"
plan: widen-referenced
defaults:
  retry: { attempts: 3, backoff: 50ms, max_backoff: 100ms }
backup: { before: [] }
changes:
  - change_type: { table: customers, column: id, type: bigint, lock_timeout: 30s }
"#;

const FK_DEFINITION: &str =
    "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'invoices_customer_fk'";

/// Customers and invoices referencing them, and the plan run up to its contract phase.
async fn referenced_up_to_contract(db: &TestDb) -> std::path::PathBuf {
    db.execute(
        "CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL);
         CREATE TABLE invoices (id serial PRIMARY KEY, customer_id integer NOT NULL CONSTRAINT invoices_customer_fk REFERENCES customers (id) ON DELETE CASCADE);
         INSERT INTO customers (name) SELECT 'c' || g FROM generate_series(1, 200) g;
         INSERT INTO invoices (customer_id) SELECT (g % 200) + 1 FROM generate_series(1, 400) g;",
    )
    .await;
    let dir = crate::common::scratch_dir();
    let plan = dir.join("plan.yaml");
    std::fs::write(&plan, WIDEN_REFERENCED).expect("write the plan");
    let out = phased_cmd()
        .arg("run")
        .arg(&plan)
        .args(["--database", &db.url(), "--until", "migrate"])
        .output()
        .expect("phased run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    plan
}

/// Polls `sql` (a count) until it is positive, failing after a minute.
async fn wait_until(db: &TestDb, what: &str, sql: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while db.scalar(sql).await == 0 {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// kill -9 after the swap committed and before the foreign key that references the column
/// was validated. Made deterministic with locks: a session holds the serial's sequence, so the
/// swap waits inside its transaction (holding `invoices`); a second session queues for SHARE
/// on `invoices` behind it, and so gets it the moment the swap commits, before the validation
/// (SHARE UPDATE EXCLUSIVE) can; the runner is killed while its validation waits. Rollback then
/// says the swap committed and what to do (never "nothing to undo") and undoes nothing; the
/// rerun, after the key was dropped by hand meanwhile, adds it back and validates it: it is as
/// it was before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_the_swap_and_the_validation_resumes_on_postgres() {
    let db = TestDb::pg().await;
    let plan = referenced_up_to_contract(&db).await;
    let before = db.text(FK_DEFINITION).await;
    assert_eq!(
        before.as_deref(),
        Some("FOREIGN KEY (customer_id) REFERENCES customers(id) ON DELETE CASCADE")
    );

    let pg = crate::common::pg(&db);
    let sequence = pg.client().await;
    sequence
        .batch_execute("BEGIN; ALTER SEQUENCE customers_id_seq INCREMENT BY 1")
        .await
        .expect("hold the sequence");
    let (mut child, stderr) = crate::common::spawn_run(&plan, &db.url(), &["--phase", "contract"]);
    wait_until(
        &db,
        "the swap waits for the sequence",
        "SELECT count(*) FROM pg_locks WHERE relation = 'customers_id_seq'::regclass AND NOT granted",
    )
    .await;
    let share = pg.client().await;
    let queued = tokio::spawn(async move {
        share
            .batch_execute("BEGIN; LOCK TABLE invoices IN SHARE MODE")
            .await
            .expect("SHARE on invoices");
        share
    });
    wait_until(
        &db,
        "the SHARE lock queues behind the swap",
        "SELECT count(*) FROM pg_locks WHERE relation = 'invoices'::regclass AND mode = 'ShareLock' AND NOT granted",
    )
    .await;
    sequence.batch_execute("ROLLBACK").await.expect("release");
    let share = queued.await.expect("the SHARE session");
    wait_until(
        &db,
        "the validation waits behind the SHARE lock",
        "SELECT count(*) FROM pg_locks WHERE relation = 'invoices'::regclass AND mode = 'ShareUpdateExclusiveLock' AND NOT granted",
    )
    .await;
    let status = Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    assert_eq!(child.wait().expect("wait").code(), None, "killed");
    share.batch_execute("ROLLBACK").await.expect("release");
    let printed = stderr.lock().map(|s| s.clone()).unwrap_or_default();
    // The killed runner's sessions end (the one that waited ends once it sees the client gone).
    wait_until(
        &db,
        "the killed runner's sessions are gone",
        "SELECT CASE WHEN count(*) = 0 THEN 1::int8 ELSE 0::int8 END FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'phased%'",
    )
    .await;

    // The swap committed; the key is back NOT VALID; the step is not done, and says so.
    assert_eq!(
        db.text("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'customers'::regclass AND attname = 'id'")
            .await
            .as_deref(),
        Some("bigint"),
        "{printed}"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM pg_constraint WHERE conname = 'invoices_customer_fk' AND NOT convalidated")
            .await,
        1
    );
    assert_eq!(
        db.text("SELECT status FROM phased.steps WHERE phase = 'contract'")
            .await
            .as_deref(),
        Some("running")
    );

    // Rollback: says where the step stands and what to do; undoes nothing.
    let back = phased_cmd()
        .arg("rollback")
        .arg(&plan)
        .args(["--database", &db.url(), "--yes"])
        .output()
        .expect("phased rollback");
    let said = String::from_utf8_lossy(&back.stderr);
    assert_eq!(back.status.code(), Some(1), "{said}");
    for expected in [
        "the swap of `customers.id` committed",
        "\"invoices_customer_fk\" on invoices: NOT VALID now",
        "`phased run` finishes the step",
        "`phased restore BACKUP`",
    ] {
        assert!(said.contains(expected), "`{expected}` not in:\n{said}");
    }
    assert!(!said.contains("nothing to undo"), "{said}");
    assert!(db.has_column("customers", "id").await);
    assert_eq!(
        db.text("SELECT status FROM phased.steps WHERE phase = 'contract'")
            .await
            .as_deref(),
        Some("running")
    );

    // Someone drops the unvalidated key meanwhile; the rerun adds it back and validates it.
    db.execute("ALTER TABLE invoices DROP CONSTRAINT invoices_customer_fk")
        .await;
    crate::common::rerun_succeeds(&plan, &db.url());
    assert_eq!(db.text(FK_DEFINITION).await, before);
    assert_eq!(
        db.scalar("SELECT count(*) FROM pg_constraint WHERE conname = 'invoices_customer_fk' AND convalidated")
            .await,
        1
    );
    assert_eq!(
        db.text("SELECT status FROM phased.steps WHERE phase = 'contract'")
            .await
            .as_deref(),
        Some("done")
    );
    let app = App::open(&db, "new app").await;
    assert!(app
        .try_exec("INSERT INTO invoices (customer_id) VALUES (-42)")
        .await
        .is_err_and(|e| e.contains("invoices_customer_fk")));
}

/// The swap locks `invoices` too (it drops and adds back its foreign key): a session reading
/// `invoices` is seen by the look before queueing, and the swap waits for it (here, with few
/// attempts, gives up naming it) instead of queueing behind it; `phased plan` looks at
/// `invoices` as well, and offline says the referencing tables are locked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_swap_looks_at_the_referencing_table_before_queueing_on_postgres() {
    let db = TestDb::pg().await;
    let plan = referenced_up_to_contract(&db).await;

    let shown = phased_cmd()
        .arg("plan")
        .arg(&plan)
        .args(["--database", &db.url()])
        .output()
        .expect("phased plan");
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.status.success(), "{text}");
    let contract = text.find("phase contract").unwrap_or_default();
    assert!(
        text[contract..].contains("= \"\\\"invoices\\\"\", []"),
        "no look at invoices in:\n{}",
        &text[contract..]
    );
    let offline = phased_cmd()
        .arg("plan")
        .arg(&plan)
        .args(["--offline", "--dialect", "postgres"])
        .output()
        .expect("phased plan --offline");
    let text = String::from_utf8_lossy(&offline.stdout);
    assert!(
        text.contains("the tables with foreign keys referencing customers.id"),
        "{text}"
    );

    let reader = crate::common::pg(&db).client().await;
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM invoices")
        .await
        .expect("a long reader");
    let run = phased_cmd()
        .arg("run")
        .arg(&plan)
        .args(["--database", &db.url()])
        .output()
        .expect("phased run");
    let said = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{said}");
    assert!(
        said.contains("hold locks on `invoices` that conflict with the ACCESS EXCLUSIVE lock"),
        "{said}"
    );
    // Not attempted: nothing queued, nothing swapped.
    assert_eq!(
        db.text("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'customers'::regclass AND attname = 'id'")
            .await
            .as_deref(),
        Some("integer")
    );
    reader.batch_execute("COMMIT").await.expect("commit");
    crate::common::rerun_succeeds(&plan, &db.url());
    assert_eq!(
        db.scalar("SELECT count(*) FROM pg_constraint WHERE conname = 'invoices_customer_fk' AND convalidated")
            .await,
        1
    );
}
