//! Catalog operations (issue 14) against real databases: each runs, re-runs as a no-op, rolls
//! back to the schema it started from (a schema dump: `pg_dump --schema-only` on PostgreSQL,
//! the catalog lines `phased verify` compares on SQLite), and passes `verify`. `drop_index` and
//! `drop_constraint` record what they drop, so rollback puts back the same definitions, the
//! index valid and the constraint validated. `add_unique` refuses duplicates before building
//! anything, naming keys. An old-application session keeps writing through every operation.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use phased::engine::events::Recorder;
use phased::engine::rollback::RollbackOptions;
use phased::engine::verify::VerifyOutcome;
use phased::engine::{EngineError, Event, RunOptions};
use phased::plan::LoadedPlan;

use crate::common::{on_both, plan, run, run_ok, TestDb};

/// The table every scenario starts from, written so both dialects take it.
const ORDERS: &str = "
CREATE TABLE customers (id integer PRIMARY KEY);
INSERT INTO customers VALUES (1), (2);
CREATE TABLE orders (
  id integer PRIMARY KEY,
  status text DEFAULT 'old',
  note text NOT NULL,
  email text,
  qty integer,
  customer_id integer,
  CONSTRAINT orders_qty_check CHECK (qty >= 0),
  CONSTRAINT orders_email_key UNIQUE (email),
  CONSTRAINT orders_customer_fk FOREIGN KEY (customer_id) REFERENCES customers (id)
);
CREATE INDEX orders_qty_idx ON orders (qty) WHERE qty > 0;
INSERT INTO orders (id, status, note, email, qty, customer_id) VALUES
  (1, 'a', 'n1', 'a@x', 1, 1), (2, 'b', 'n2', 'b@x', 2, 2), (3, 'c', 'n3', NULL, 0, NULL);
";

/// The schema as a dump: `pg_dump --schema-only` (phased's own schema left out) on
/// PostgreSQL; on SQLite the lines `phased verify` compares (tables with their columns,
/// defaults, NOT NULL, keys, foreign keys and constraint clauses; indexes; triggers).
async fn schema(db: &TestDb) -> String {
    match db {
        TestDb::Pg(p) => {
            let out = std::process::Command::new("pg_dump")
                .args([
                    "--schema-only",
                    "--no-owner",
                    "--no-privileges",
                    "--exclude-schema=phased",
                    "--dbname",
                    &p.url,
                ])
                .output()
                .expect("run pg_dump");
            assert!(
                out.status.success(),
                "pg_dump: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            // `\restrict KEY` lines carry a random key per dump.
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
                .collect::<Vec<_>>()
                .join("\n")
        }
        TestDb::Sqlite(_) => {
            let mut target = db.target("schema").await;
            let lines = phased::with_target!(&mut target, t => t.schema_snapshot().await)
                .expect("schema snapshot");
            lines.join("\n")
        }
    }
}

async fn rollback(db: &TestDb, loaded: &LoadedPlan) -> Result<Vec<String>, EngineError> {
    let mut target = db.target(loaded.plan.id()).await;
    let mut recorder = Recorder::default();
    let options = RollbackOptions { to: None };
    phased::with_target!(&mut target, t => phased::engine::rollback::rollback(t, loaded, &options, &mut recorder).await)
}

async fn verify(db: &TestDb, loaded: &LoadedPlan) -> VerifyOutcome {
    let mut target = db.target(loaded.plan.id()).await;
    let mut recorder = Recorder::default();
    phased::with_target!(&mut target, t => phased::engine::verify::verify(t, loaded, &mut recorder).await)
        .unwrap_or_else(|e| panic!("verify: {e}"))
}

/// Runs `sql` on a separate session and returns the error text, if it failed.
async fn attempt(db: &TestDb, sql: &str) -> Option<String> {
    match db {
        TestDb::Pg(p) => p.client().await.batch_execute(sql).await.err().map(|e| {
            e.as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_else(|| e.to_string())
        }),
        TestDb::Sqlite(s) => s.conn().execute_batch(sql).err().map(|e| e.to_string()),
    }
}

/// The expand-phase operations, on either dialect (PostgreSQL adds the ones SQLite has no
/// place for: comments and enums).
fn expand_plan(db: &TestDb, id: &str) -> String {
    let postgres_only = if db.is_pg() {
        "      - set_comment: { table: orders, column: note, comment: \"what the customer wrote\" }
      - set_comment: { table: orders, comment: \"one row per order\" }
      - create_enum: { name: order_state, values: [new, paid] }
      - add_enum_value: { enum: order_state, value: shipped, after: paid }
"
    } else {
        ""
    };
    format!(
        "plan: {id}
backup: {{ before: [] }}
defaults: {{ lock_timeout: 2s }}
phases:
  - name: expand
    kind: expand
    steps:
      - set_default: {{ table: orders, column: status, default: \"'new'\" }}
      - drop_not_null: {{ table: orders, column: note }}
      - add_unique: {{ table: orders, name: orders_customer_qty_key, columns: [customer_id, qty] }}
      - rename_constraint: {{ table: orders, from: orders_qty_check, to: orders_qty_not_negative }}
      - rename_index: {{ table: orders, from: orders_qty_idx, to: orders_positive_qty_idx }}
{postgres_only}"
    )
}

async fn expand_operations_run_rerun_and_roll_back_to_the_same_schema(db: TestDb) {
    db.execute(ORDERS).await;
    let before = schema(&db).await;
    let loaded = plan(&expand_plan(&db, "catalog-expand"));
    run_ok(&db, &loaded).await;

    // Each did what it says.
    db.execute("INSERT INTO orders (id, note) VALUES (10, 'x')")
        .await;
    assert_eq!(
        db.text("SELECT status FROM orders WHERE id = 10")
            .await
            .as_deref(),
        Some("new"),
        "set_default: rows inserted without a status get the new default"
    );
    db.execute("INSERT INTO orders (id, note) VALUES (11, NULL)")
        .await;
    let repeated = attempt(
        &db,
        "INSERT INTO orders (id, note, customer_id, qty) VALUES (12, 'y', 1, 1)",
    )
    .await;
    assert!(
        repeated
            .as_deref()
            .is_some_and(|e| e.contains("unique") || e.contains("UNIQUE")),
        "add_unique: a repeated (customer_id, qty) is refused: {repeated:?}"
    );
    let negative = attempt(
        &db,
        "INSERT INTO orders (id, note, qty) VALUES (13, 'z', -1)",
    )
    .await;
    assert!(
        negative
            .as_deref()
            .is_some_and(|e| e.contains("orders_qty_not_negative")),
        "rename_constraint: the check holds under its new name: {negative:?}"
    );
    if db.is_pg() {
        assert_eq!(
            db.text("SELECT col_description('orders'::regclass, 3)")
                .await
                .as_deref(),
            Some("what the customer wrote")
        );
        assert_eq!(
            db.text("SELECT string_agg(enumlabel, ',' ORDER BY enumsortorder) FROM pg_enum WHERE enumtypid = 'order_state'::regtype")
                .await
                .as_deref(),
            Some("new,paid,shipped")
        );
        assert_eq!(
            db.scalar("SELECT count(*) FROM pg_constraint WHERE conname = 'orders_customer_qty_key' AND contype = 'u'")
                .await,
            1
        );
    }
    assert!(
        db.has_index("orders_positive_qty_idx").await,
        "rename_index"
    );
    assert!(!db.has_index("orders_qty_idx").await, "rename_index");
    db.execute("DELETE FROM orders WHERE id >= 10").await;
    let after = schema(&db).await;
    assert_ne!(after, before);

    // A re-run finds every step done and changes nothing.
    let events = run_ok(&db, &loaded).await;
    let skipped = events
        .iter()
        .filter(|e| matches!(e, Event::StepSkipped { .. } | Event::PhaseSkipped { .. }))
        .count();
    assert!(skipped > 0, "{events:?}");
    assert!(
        !events.iter().any(|e| matches!(e, Event::StepStart { .. })),
        "a re-run starts no step: {events:?}"
    );
    assert_eq!(schema(&db).await, after);

    // Rollback leaves the schema as it was.
    let undone = rollback(&db, &loaded)
        .await
        .unwrap_or_else(|e| panic!("rollback: {e}"));
    assert_eq!(undone.len(), loaded.plan.step_refs().len());
    assert_eq!(schema(&db).await, before);

    // And verify, on a database with the same schema, agrees.
    let fresh = if db.is_pg() {
        TestDb::pg().await
    } else {
        TestDb::sqlite()
    };
    fresh.execute(ORDERS).await;
    let outcome = verify(&fresh, &loaded).await;
    assert!(outcome.passed(), "{outcome:?}");
}
on_both!(expand_operations_run_rerun_and_roll_back_to_the_same_schema);

/// A contract phase that drops an index, constraints of every kind and a default, and then
/// fails on its last step, so it is not complete and can be rolled back.
fn drops_plan(id: &str) -> String {
    format!(
        "plan: {id}
backup: {{ before: [] }}
defaults: {{ lock_timeout: 2s, retry: {{ attempts: 1 }} }}
phases:
  - name: contract
    kind: contract
    steps:
      - drop_index: {{ name: orders_qty_idx, table: orders }}
      - drop_constraint: {{ table: orders, name: orders_qty_check }}
      - drop_constraint: {{ table: orders, name: orders_email_key }}
      - drop_constraint: {{ table: orders, name: orders_customer_fk }}
      - drop_default: {{ table: orders, column: status }}
      - sql: {{ up: \"SELECT * FROM no_such_table\", down: \"SELECT 1\" }}
"
    )
}

async fn dropped_index_and_constraints_come_back_as_they_were(db: TestDb) {
    db.execute(ORDERS).await;
    let before = schema(&db).await;
    let definitions = "SELECT string_agg(conname || ' ' || pg_get_constraintdef(oid) || ' ' || convalidated, '; ' ORDER BY conname) FROM pg_constraint WHERE conrelid = 'orders'::regclass";
    let index_definition = "SELECT pg_get_indexdef('orders_qty_idx'::regclass)";
    let (constraints_before, index_before) = if db.is_pg() {
        (db.text(definitions).await, db.text(index_definition).await)
    } else {
        (None, None)
    };
    let loaded = plan(&drops_plan("catalog-drops"));
    match run(&db, &loaded, RunOptions::default()).await {
        Err((EngineError::StepFailed { step, .. }, _)) => assert_eq!(step, "contract#6"),
        other => panic!("the last step fails: {:?}", other.map(|_| ())),
    }
    // Dropped: the index, the constraints and the default.
    assert!(!db.has_index("orders_qty_idx").await);
    assert_eq!(attempt(&db, "INSERT INTO orders (id, note, email, qty, customer_id) VALUES (20, 'n', 'a@x', -5, 99)").await, None);
    assert_eq!(
        db.text("SELECT status FROM orders WHERE id = 20").await,
        None
    );
    db.execute("DELETE FROM orders WHERE id = 20").await;

    let undone = rollback(&db, &loaded)
        .await
        .unwrap_or_else(|e| panic!("rollback: {e}"));
    assert_eq!(undone.len(), 6, "{undone:?}");
    assert_eq!(schema(&db).await, before, "the schema is as it was");
    let refused = attempt(
        &db,
        "INSERT INTO orders (id, note, email, qty) VALUES (21, 'n', 'a@x', 1)",
    )
    .await;
    assert!(refused.is_some(), "the UNIQUE constraint is back");
    assert!(
        attempt(
            &db,
            "INSERT INTO orders (id, note, qty) VALUES (22, 'n', -1)"
        )
        .await
        .is_some(),
        "the CHECK is back"
    );
    db.execute("INSERT INTO orders (id, note) VALUES (23, 'n')")
        .await;
    assert_eq!(
        db.text("SELECT status FROM orders WHERE id = 23")
            .await
            .as_deref(),
        Some("old"),
        "the default is back"
    );
    if db.is_pg() {
        assert_eq!(
            db.text(definitions).await,
            constraints_before,
            "same definitions, validated"
        );
        assert_eq!(
            db.text(index_definition).await,
            index_before,
            "same index definition"
        );
        assert_eq!(
            db.scalar("SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname IN ('orders_qty_idx', 'orders_email_key') AND i.indisvalid").await,
            2,
            "the indexes are valid"
        );
        assert_eq!(
            db.scalar("SELECT count(*) FROM pg_constraint WHERE conrelid = 'orders'::regclass AND NOT convalidated").await,
            0,
            "every constraint is validated"
        );
    }
}
on_both!(dropped_index_and_constraints_come_back_as_they_were);

/// A drop whose record and drop committed but whose status did not (a crash in between): the
/// rerun finds the index gone, keeps what was recorded, and rollback still puts it back.
async fn a_rerun_after_the_drop_keeps_the_recorded_definition(db: TestDb) {
    db.execute(ORDERS).await;
    let before = schema(&db).await;
    let yaml = drops_plan("catalog-rerun");
    let loaded = plan(&yaml);
    let _ = run(
        &db,
        &loaded,
        RunOptions {
            until: None,
            ..RunOptions::default()
        },
    )
    .await;
    let steps = if db.is_pg() {
        "phased.steps"
    } else {
        "phased_steps"
    };
    // As if each drop had crashed after it committed but before recording itself done (the
    // window a `CONCURRENTLY` drop has; the others record and drop in one transaction).
    db.execute(&format!(
        "UPDATE {steps} SET status = 'failed' WHERE plan = 'catalog-rerun' AND step_index < 4"
    ))
    .await;
    match run(&db, &loaded, RunOptions::default()).await {
        Err((EngineError::StepFailed { step, .. }, _)) => assert_eq!(step, "contract#6"),
        other => panic!("the last step fails again: {:?}", other.map(|_| ())),
    }
    let recorded = db
        .text(&format!(
            "SELECT checkpoint FROM {steps} WHERE plan = 'catalog-rerun' AND step_index = 0"
        ))
        .await
        .unwrap_or_default();
    assert!(
        recorded.contains("orders_qty_idx") && recorded.contains("qty > 0"),
        "{recorded}"
    );
    rollback(&db, &loaded)
        .await
        .unwrap_or_else(|e| panic!("rollback: {e}"));
    assert_eq!(schema(&db).await, before);
}
on_both!(a_rerun_after_the_drop_keeps_the_recorded_definition);

async fn add_unique_with_duplicates_is_refused_before_any_build_naming_keys(db: TestDb) {
    db.execute(ORDERS).await;
    db.execute("INSERT INTO orders (id, note, customer_id) VALUES (30, 'dup', 1), (31, 'dup', 1), (32, 'other', 2), (33, 'other', 2), (34, 'n', NULL), (35, 'n', NULL)").await;
    let before = schema(&db).await;
    let loaded = plan(
        "plan: catalog-dups
backup: { before: [] }
defaults: { retry: { attempts: 1 } }
phases:
  - name: expand
    kind: expand
    steps:
      - add_unique: { table: orders, name: orders_note_customer_key, columns: [note, customer_id] }
",
    );
    let error = match run(&db, &loaded, RunOptions::default()).await {
        Err((EngineError::StepFailed { error, .. }, _)) => error,
        other => panic!("duplicates are refused: {:?}", other.map(|_| ())),
    };
    assert!(
        // (PostgreSQL quotes every value: customer_id='1'.)
        error.contains("(note='dup', customer_id=")
            && error.contains("(note='other', customer_id="),
        "names the repeated keys: {error}"
    );
    assert!(
        !error.contains("NULL"),
        "rows with a NULL in the key may repeat: {error}"
    );
    assert!(
        !db.has_index("orders_note_customer_key").await,
        "nothing was built"
    );
    assert_eq!(schema(&db).await, before);
}
on_both!(add_unique_with_duplicates_is_refused_before_any_build_naming_keys);

#[tokio::test]
async fn enum_values_cannot_be_rolled_back_and_verify_says_so() {
    let db = TestDb::pg().await;
    db.execute("CREATE TYPE order_state AS ENUM ('new', 'paid')")
        .await;
    let loaded = plan(
        "plan: catalog-enum
backup: { before: [] }
phases:
  - name: expand
    kind: expand
    steps:
      - create_enum: { name: refund_reason, values: [damaged, late] }
      - add_enum_value: { enum: refund_reason, value: lost }
      - add_enum_value: { enum: order_state, value: refunded, before: paid }
",
    );
    let outcome = verify(&db, &loaded).await;
    match &outcome {
        VerifyOutcome::Irreversible { steps } => {
            assert_eq!(
                steps.len(),
                1,
                "only the value added to a type the plan did not create: {steps:?}"
            );
            assert_eq!(steps[0].step, "expand#3");
            assert!(
                steps[0].reason.contains("cannot remove a value"),
                "{}",
                steps[0].reason
            );
        }
        other => panic!("verify reports the enum value: {other:?}"),
    }
    run_ok(&db, &loaded).await;
    run_ok(&db, &loaded).await;
    assert_eq!(
        db.text("SELECT string_agg(enumlabel, ',' ORDER BY enumsortorder) FROM pg_enum WHERE enumtypid = 'order_state'::regtype").await.as_deref(),
        Some("new,refunded,paid")
    );
    match rollback(&db, &loaded).await {
        Err(EngineError::Irreversible {
            step,
            reason,
            undone,
            ..
        }) => {
            assert_eq!(step, "expand#3");
            assert!(reason.contains("cannot remove a value"), "{reason}");
            assert!(undone.is_empty(), "{undone:?}");
        }
        other => panic!("rollback stops at the enum value: {other:?}"),
    }
}

#[tokio::test]
async fn a_plan_with_an_enum_is_refused_on_sqlite_before_anything_runs() {
    let db = TestDb::sqlite();
    db.execute(ORDERS).await;
    let loaded = plan(
        "plan: catalog-enum-sqlite
backup: { before: [] }
phases:
  - name: expand
    kind: expand
    steps:
      - set_default: { table: orders, column: status, default: \"'new'\" }
      - create_enum: { name: order_state, values: [new, paid] }
",
    );
    match run(&db, &loaded, RunOptions::default()).await {
        Err((EngineError::Usage(message), _)) => {
            assert!(
                message.starts_with("step expand#2 `create_enum order_state` cannot run on sqlite"),
                "{message}"
            );
            assert!(message.contains("PostgreSQL-only"), "{message}");
        }
        other => panic!("refused: {:?}", other.map(|_| ())),
    }
    db.execute("INSERT INTO orders (id, note) VALUES (40, 'n')")
        .await;
    assert_eq!(
        db.text("SELECT status FROM orders WHERE id = 40")
            .await
            .as_deref(),
        Some("old"),
        "nothing ran, not even the step before"
    );
}

#[test]
fn drop_constraint_and_drop_default_stand_in_contract_only() {
    let yaml = "plan: catalog-placement
phases:
  - name: expand
    kind: expand
    steps:
      - drop_constraint: { table: orders, name: orders_qty_check }
      - drop_default: { table: orders, column: status }
";
    let report = match phased::plan::parse_str("test.yaml", yaml, std::path::Path::new(".")) {
        Err(report) => report.render_plain(),
        Ok(_) => panic!("validate refuses destructive steps outside contract"),
    };
    assert!(
        report.contains("`drop_constraint` is destructive and cannot stand in `expand`"),
        "{report}"
    );
    assert!(report.contains("`drop_default` is destructive"), "{report}");
    assert!(
        report.contains("test.yaml:6:") && report.contains("test.yaml:7:"),
        "located: {report}"
    );
}

/// The old application keeps inserting and updating through every operation, on a session
/// whose own lock_timeout (phased's plus a margin) would fail any statement that waited
/// longer: none may fail.
async fn old_app_keeps_writing_through_every_operation(db: TestDb) {
    db.execute(ORDERS).await;
    let loaded = plan(&format!(
        "{}  - name: contract
    kind: contract
    steps:
      - drop_index: {{ name: orders_qty_idx, table: orders }}
      - drop_constraint: {{ table: orders, name: orders_customer_fk }}
      - drop_default: {{ table: orders, column: status }}
",
        expand_plan(&db, "catalog-online")
            .replace("lock_timeout: 2s", "lock_timeout: 500ms, retry: { attempts: 20, backoff: 50ms, max_backoff: 200ms }")
            // The rename is the old app's: it keeps writing the old name until contract.
            .replace("      - rename_constraint: { table: orders, from: orders_qty_check, to: orders_qty_not_negative }\n", "")
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let writer = {
        let stop = stop.clone();
        let writes = writes.clone();
        let url = db.url();
        let is_pg = db.is_pg();
        let path = match &db {
            TestDb::Sqlite(s) => Some(s.path.clone()),
            TestDb::Pg(_) => None,
        };
        tokio::spawn(async move {
            let mut id = 1000;
            if is_pg {
                let client = crate::common::pg_connect(&url)
                    .await
                    .expect("old app connects");
                client
                    .batch_execute("SET application_name = 'old-app'; SET lock_timeout = '1500ms'")
                    .await
                    .expect("configure the old app");
                while !stop.load(Ordering::SeqCst) {
                    id += 1;
                    client
                        .execute(
                            "INSERT INTO orders (id, status, note, email, qty) VALUES ($1, 'old', 'n', NULL, 1)",
                            &[&id],
                        )
                        .await
                        .unwrap_or_else(|e| panic!("old app insert {id}: {e}"));
                    client
                        .execute("UPDATE orders SET qty = qty + 1 WHERE id = $1", &[&id])
                        .await
                        .unwrap_or_else(|e| panic!("old app update {id}: {e}"));
                    writes.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            } else {
                // rusqlite blocks: the old app runs on a thread of its own.
                tokio::task::spawn_blocking(move || {
                    let conn = rusqlite::Connection::open(path.expect("sqlite path"))
                        .expect("old app opens");
                    conn.busy_timeout(Duration::from_millis(1500))
                        .expect("busy_timeout");
                    while !stop.load(Ordering::SeqCst) {
                        id += 1;
                        conn.execute(
                            "INSERT INTO orders (id, status, note, email, qty) VALUES (?1, 'old', 'n', NULL, 1)",
                            [id],
                        )
                        .unwrap_or_else(|e| panic!("old app insert {id}: {e}"));
                        conn.execute("UPDATE orders SET qty = qty + 1 WHERE id = ?1", [id])
                            .unwrap_or_else(|e| panic!("old app update {id}: {e}"));
                        writes.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
                .await
                .expect("the old app never failed a write");
            }
        })
    };
    // The old app is writing before the plan starts.
    while writes.load(Ordering::SeqCst) < 5 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let result = run(&db, &loaded, RunOptions::default()).await;
    let during = writes.load(Ordering::SeqCst);
    // …and after it ends.
    while writes.load(Ordering::SeqCst) < during + 5 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::SeqCst);
    writer.await.expect("the old app never failed a write");
    if let Err((e, _)) = result {
        panic!("the plan runs alongside the old app: {e}");
    }
    let written = db
        .scalar("SELECT count(*) FROM orders WHERE id > 1000")
        .await;
    assert_eq!(
        written as u64,
        writes.load(Ordering::SeqCst),
        "every write is there"
    );
}
on_both!(old_app_keeps_writing_through_every_operation);

/// `phased plan` shows what each catalog operation sends, look-ups and recording included:
/// PostgreSQL receives, during `phased run`, exactly what the dry run printed.
#[tokio::test]
async fn postgres_receives_what_the_dry_run_of_every_catalog_operation_printed() {
    let db = TestDb::pg().await;
    db.execute(ORDERS).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("plan.yaml");
    std::fs::write(
        &path,
        format!(
            "{}  - name: contract
    kind: contract
    steps:
      - drop_index: {{ name: orders_positive_qty_idx, table: orders }}
      - drop_constraint: {{ table: orders, name: orders_qty_not_negative }}
      - drop_constraint: {{ table: orders, name: orders_email_key }}
      - drop_default: {{ table: orders, column: status }}
",
            expand_plan(&db, "catalog-dry-run")
        ),
    )
    .expect("write the plan");
    crate::dry_run_is_the_run::assert_run_is_the_dry_run(&db, &path).await;
    assert!(!db.has_index("orders_positive_qty_idx").await);
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM phased.steps WHERE plan = 'catalog-dry-run' AND status = 'done'"
        )
        .await,
        13
    );
}

/// `phased validate --dialect sqlite` names each step SQLite has no counterpart for, located.
#[test]
fn validate_for_sqlite_names_the_postgresql_only_steps_located() {
    let dir = crate::common::scratch_dir();
    let path = dir.join("plan.yaml");
    std::fs::write(
        &path,
        "plan: catalog-sqlite-only
phases:
  - name: expand
    kind: expand
    steps:
      - create_enum: { name: order_state, values: [new, paid] }
      - set_comment: { table: orders, comment: x }
      - rename_index: { table: orders, from: a, to: b }
      - set_default: { table: orders, column: status, default: \"'new'\" }
",
    )
    .expect("write the plan");
    let out = crate::common::phased_cmd()
        .args(["validate", "--dialect", "sqlite", "plan.yaml"])
        .current_dir(&dir)
        .output()
        .expect("phased validate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("plan.yaml:6:9: error: `create_enum order_state` cannot run on sqlite"),
        "{stderr}"
    );
    assert!(
        stderr.contains("plan.yaml:7:9: error: `set_comment orders` cannot run on sqlite"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("rename_index orders"),
        "SQLite renames an index: {stderr}"
    );
    assert!(!stderr.contains("set_default"), "{stderr}");
}
