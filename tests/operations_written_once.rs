//! Operations written once (`add_column` with `up`, `rename_table`), on both targets, with the
//! two-application harness: the old application writes by the old names and the new one by the
//! new names while each phase runs; every statement succeeds, every row is consistent before
//! contract, and rollback before contract keeps every row either application wrote.

use phased::engine::events::Recorder;
use phased::engine::rollback::{rollback, RollbackOptions};
use phased::plan::LoadedPlan;

use crate::common::two_apps::{phase_under_writers, App, Writer};
use crate::common::{on_both, plan, TestDb};

async fn roll_back_all(db: &TestDb, loaded: &LoadedPlan) -> Vec<String> {
    let mut target = db.target(loaded.plan.id()).await;
    let mut recorder = Recorder::default();
    match phased::with_target!(&mut target, t => rollback(t, loaded, &RollbackOptions::default(), &mut recorder).await)
    {
        Ok(undone) => undone,
        Err(e) => panic!("rollback failed: {e}"),
    }
}

/// `n` users with ids 1..=n and mixed-case emails.
async fn users(db: &TestDb, n: u32) {
    db.execute("CREATE TABLE users (id integer PRIMARY KEY, email text NOT NULL)")
        .await;
    let rows: Vec<String> = (1..=n)
        .map(|i| format!("({i}, 'User{i}@Example.COM')"))
        .collect();
    db.execute(&format!(
        "INSERT INTO users (id, email) VALUES {}",
        rows.join(", ")
    ))
    .await;
}

const ADD_COLUMN_UP: &str = r#"
plan: derived
changes:
  - add_column: { table: users, name: email_lower, type: text, up: "lower(email)", nullable: false }
"#;

/// The old application inserts and updates `email` only; the new one writes `email_lower` too.
const OLD_WRITES: &[&str] = &[
    "INSERT INTO users (id, email) VALUES (100000 + {i}, 'Old{i}@App.COM')",
    "UPDATE users SET email = 'Renamed{i}@Old.COM' WHERE id = {i} % 300 + 1",
];
const NEW_WRITES: &[&str] = &[
    "INSERT INTO users (id, email, email_lower) VALUES (200000 + {i}, 'New{i}@App.COM', 'new{i}@app.com')",
    "UPDATE users SET email = 'Both{i}@New.COM', email_lower = 'both{i}@new.com' WHERE id = ({i} * 7) % 300 + 1",
];

async fn add_column_up_with_two_apps(db: TestDb) {
    users(&db, 300).await;
    let loaded = plan(ADD_COLUMN_UP);
    let phases: Vec<&str> = loaded.plan.phases().map(|p| p.name()).collect();
    assert_eq!(phases, ["expand", "migrate", "contract"]);

    let old = Writer::start(&db, "old app", 0, OLD_WRITES).await;
    phase_under_writers(&db, &loaded, "expand", vec![old]).await;
    let old = Writer::start(&db, "old app", 1_000, OLD_WRITES).await;
    let new = Writer::start(&db, "new app", 1_000, NEW_WRITES).await;
    phase_under_writers(&db, &loaded, "migrate", vec![old, new]).await;

    // Before contract: every row, whoever wrote it, has the derived value.
    let app = App::open(&db, "check").await;
    assert_eq!(
        app.value(
            "SELECT count(*) FROM users WHERE email_lower IS NULL OR email_lower <> lower(email)"
        )
        .await
        .as_deref(),
        Some("0")
    );
    let old_rows: i64 = db
        .scalar("SELECT count(*) FROM users WHERE id BETWEEN 100000 AND 199999")
        .await;
    assert!(old_rows > 0);

    let new = Writer::start(&db, "new app", 5_000, NEW_WRITES).await;
    phase_under_writers(&db, &loaded, "contract", vec![new]).await;
    // After contract: NOT NULL, and the trigger is gone (the new application writes it).
    assert!(app
        .try_exec("INSERT INTO users (id, email) VALUES (-1, 'x')")
        .await
        .is_err_and(|e| e.to_lowercase().contains("null")));
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
on_both!(add_column_up_with_two_apps);

/// Rollback after migrate: the column and its trigger go; every row both applications wrote
/// stays, with the old application's columns as written.
async fn add_column_up_rolled_back_keeps_rows(db: TestDb) {
    users(&db, 300).await;
    let loaded = plan(ADD_COLUMN_UP);
    let old = Writer::start(&db, "old app", 0, OLD_WRITES).await;
    phase_under_writers(&db, &loaded, "expand", vec![old]).await;
    let old = Writer::start(&db, "old app", 1_000, OLD_WRITES).await;
    let new = Writer::start(&db, "new app", 1_000, NEW_WRITES).await;
    phase_under_writers(&db, &loaded, "migrate", vec![old, new]).await;
    let before = db.scalar("SELECT count(*) FROM users").await;
    let check = App::open(&db, "check").await;
    let emails = check.rows("SELECT id, email FROM users ORDER BY id").await;

    roll_back_all(&db, &loaded).await;
    assert!(!db.has_column("users", "email_lower").await);
    assert_eq!(db.scalar("SELECT count(*) FROM users").await, before);
    assert_eq!(
        check.rows("SELECT id, email FROM users ORDER BY id").await,
        emails
    );
    // The old application writes on, as before the plan.
    App::open(&db, "old app")
        .await
        .exec("INSERT INTO users (id, email) VALUES (-5, 'after@rollback')")
        .await;
}

on_both!(add_column_up_rolled_back_keeps_rows);

const RENAME_TABLE: &str = r#"
plan: renamed
changes:
  - rename_table: { from: customers, to: clients }
"#;

async fn customers(db: &TestDb) {
    db.execute(
        "CREATE TABLE customers (id integer PRIMARY KEY, name text NOT NULL, tier text NOT NULL DEFAULT 'free');
         INSERT INTO customers (id, name) VALUES (1, 'one'), (2, 'two'), (3, 'three');",
    )
    .await;
}

const OLD_CUSTOMERS: &[&str] = &[
    "INSERT INTO customers (id, name) VALUES (1000 + {i}, 'old {i}')",
    "UPDATE customers SET name = 'old touched {i}' WHERE id = {i} % 3 + 1",
    "DELETE FROM customers WHERE id = 1000 + {i} - 5 AND {i} % 10 = 0",
];
const NEW_CLIENTS: &[&str] = &[
    "INSERT INTO clients (id, name, tier) VALUES (5000 + {i}, 'new {i}', 'pro')",
    "UPDATE clients SET tier = 'gold' WHERE id = {i} % 3 + 1",
];

async fn rename_table_with_two_apps(db: TestDb) {
    customers(&db).await;
    let loaded = plan(RENAME_TABLE);
    let old = Writer::start(&db, "old app", 0, OLD_CUSTOMERS).await;
    phase_under_writers(&db, &loaded, "expand", vec![old]).await;

    // Between expand and contract both applications work, each by its own name.
    let old = Writer::start(&db, "old app", 100_000, OLD_CUSTOMERS).await;
    let new = Writer::start(&db, "new app", 100_000, NEW_CLIENTS).await;
    let old_app = App::open(&db, "old app").await;
    let new_app = App::open(&db, "new app").await;
    new_app
        .exec("INSERT INTO clients (id, name) VALUES (9001, 'seen by the old app')")
        .await;
    old_app
        .exec("INSERT INTO customers (id, name) VALUES (9002, 'seen by the new app')")
        .await;
    let (old_rounds, old_errors) = old.stop().await;
    let (new_rounds, new_errors) = new.stop().await;
    assert!(
        old_errors.is_empty() && new_errors.is_empty(),
        "{old_errors:?} {new_errors:?}"
    );
    assert!(old_rounds > 0 && new_rounds > 0);
    assert_eq!(
        old_app
            .value("SELECT name FROM customers WHERE id = 9001")
            .await
            .as_deref(),
        Some("seen by the old app")
    );
    assert_eq!(
        new_app
            .value("SELECT tier FROM clients WHERE id = 9002")
            .await
            .as_deref(),
        Some("free"),
        "the old application's insert gets the table's default"
    );
    let through_view = old_app.value("SELECT count(*) FROM customers").await;
    assert_eq!(
        through_view,
        new_app.value("SELECT count(*) FROM clients").await
    );

    let new = Writer::start(&db, "new app", 1_000_000, NEW_CLIENTS).await;
    phase_under_writers(&db, &loaded, "contract", vec![new]).await;
    assert!(old_app.try_exec("SELECT 1 FROM customers").await.is_err());
    assert!(db.has_table("clients").await);
}
on_both!(rename_table_with_two_apps);

async fn rename_table_rolled_back_keeps_rows(db: TestDb) {
    customers(&db).await;
    let loaded = plan(RENAME_TABLE);
    let old = Writer::start(&db, "old app", 0, OLD_CUSTOMERS).await;
    phase_under_writers(&db, &loaded, "expand", vec![old]).await;
    let old = Writer::start(&db, "old app", 100_000, OLD_CUSTOMERS).await;
    let new = Writer::start(&db, "new app", 100_000, NEW_CLIENTS).await;
    let (_, e1) = old.stop().await;
    let (_, e2) = new.stop().await;
    assert!(e1.is_empty() && e2.is_empty(), "{e1:?} {e2:?}");
    let rows = db.scalar("SELECT count(*) FROM clients").await;
    let new_rows = db
        .scalar("SELECT count(*) FROM clients WHERE id >= 5000")
        .await;
    assert!(new_rows > 0);

    roll_back_all(&db, &loaded).await;
    assert!(db.has_table("customers").await);
    assert!(!db.has_table("clients").await);
    assert_eq!(db.scalar("SELECT count(*) FROM customers").await, rows);
    assert_eq!(
        db.scalar("SELECT count(*) FROM customers WHERE id >= 5000")
            .await,
        new_rows
    );
}
on_both!(rename_table_rolled_back_keeps_rows);

/// A plan whose operation needs a later phase that it lacks: located at the operation.
#[test]
fn a_missing_phase_is_a_located_error() {
    let yaml = "plan: p\nphases:\n  - name: e\n    kind: expand\n    steps:\n      - add_column: { table: t, name: c, type: text, up: \"lower(d)\" }\n  - name: c\n    kind: contract\n    steps: []\n";
    let err = match phased::plan::parse_str("p.yaml", yaml, std::path::Path::new(".")) {
        Ok(_) => panic!("a plan without a migrate phase loaded"),
        Err(report) => report.render_plain(),
    };
    assert!(err.contains("p.yaml:6:9"), "{err}");
    assert!(
        err.contains("needs a `migrate` phase after phase `e` for its backfill"),
        "{err}"
    );
}

/// With the phases it needs, each part is placed at the end of the next phase of its kind,
/// and `phased plan` shows it there with its SQL.
#[test]
fn parts_are_scheduled_where_they_run() {
    let dir = crate::common::scratch_dir();
    let yaml = "plan: p\nphases:\n  - name: e\n    kind: expand\n    steps:\n      - add_column: { table: users, name: email_lower, type: text, up: \"lower(email)\", nullable: false }\n  - name: m\n    kind: migrate\n    steps:\n      - sql: SELECT 1\n  - name: c\n    kind: contract\n    steps: []\n";
    std::fs::write(dir.join("p.yaml"), yaml).expect("write the plan");
    let out = crate::common::phased_cmd()
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
    assert!(at("step m#1 sql") < at("step m#2 backfill users (email_lower)"));
    assert!(at("phase c (contract)") < at("step c#1 set_not_null users.email_lower"));
    assert!(at("step c#2 add_column users.email_lower: drop the sync trigger") > at("step c#1"));
    assert!(at("CREATE TRIGGER \"phased_sync_users_email_lower\"") < at("phase m (migrate)"));
}

/// `changes:` compiles to phases; `--explain` prints them as a `phases:` plan that loads to
/// the same steps, with the same checksums.
#[test]
fn changes_compile_and_explain_round_trips() {
    let dir = crate::common::scratch_dir();
    let yaml = "plan: c\nflags:\n  - { name: new_ui, value: true }\ngates:\n  contract:\n    - flag: { name: new_ui, is: true }\nchanges:\n  - create_index: { table: users, name: users_email_idx, columns: [email] }\n  - backfill: { table: users, set: { n: \"1\" } }\n  - drop_column: { table: users, name: legacy }\n  - add_column: { table: users, name: email_lower, type: text, up: \"lower(email)\" }\n  - rename_table: { from: customers, to: clients }\n";
    std::fs::write(dir.join("c.yaml"), yaml).expect("write the plan");
    let compiled =
        phased::plan::load(&dir.join("c.yaml")).unwrap_or_else(|r| panic!("{}", r.render_plain()));
    let shape: Vec<(String, Vec<String>)> = compiled
        .plan
        .phases()
        .map(|p| {
            (
                format!("{} {}", p.name(), p.kind()),
                p.steps().map(|s| s.label()).collect(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        vec![
            (
                "expand expand".to_string(),
                vec![
                    "create_index users_email_idx".to_string(),
                    "add_column users.email_lower".to_string(),
                    "rename_table customers → clients".to_string()
                ]
            ),
            (
                "migrate migrate".to_string(),
                vec![
                    "backfill users (n)".to_string(),
                    "backfill users (email_lower)".to_string()
                ]
            ),
            (
                "switch switch-flag".to_string(),
                vec!["flag new_ui = true".to_string()]
            ),
            (
                "contract contract".to_string(),
                vec![
                    "drop_column users.legacy".to_string(),
                    "add_column users.email_lower: drop the sync trigger".to_string(),
                    "rename_table customers → clients: drop the view customers".to_string()
                ]
            ),
        ]
    );
    assert_eq!(
        compiled.plan.phase("contract").map(|p| p.gate.len()),
        Some(1)
    );

    let out = crate::common::phased_cmd()
        .current_dir(&dir)
        .args(["plan", "--explain", "c.yaml"])
        .output()
        .expect("phased plan --explain");
    assert!(out.status.success());
    let explained = String::from_utf8_lossy(&out.stdout).to_string();
    std::fs::write(dir.join("explained.yaml"), &explained).expect("write");
    let again = phased::plan::load(&dir.join("explained.yaml"))
        .unwrap_or_else(|r| panic!("{explained}\n{}", r.render_plain()));
    let sums = |l: &LoadedPlan| -> Vec<(String, String, String)> {
        l.plan
            .step_refs()
            .into_iter()
            .map(|(r, s)| (r.id(), s.label(), r.checksum))
            .collect()
    };
    assert_eq!(sums(&again), sums(&compiled), "{explained}");
}

/// `dual_write` fills the new column for the old application's writes and keeps a value the
/// new application wrote itself (it used to overwrite it with the expression).
async fn dual_write_keeps_what_the_new_app_wrote(db: TestDb) {
    users(&db, 3).await;
    let loaded = plan(
        r#"
plan: dw
phases:
  - name: e
    kind: expand
    steps:
      - add_column: { table: users, name: email_lower, type: text }
      - dual_write: { table: users, set: { email_lower: "lower(NEW.email)" } }
"#,
    );
    crate::common::run_ok(&db, &loaded).await;
    let old = App::open(&db, "old app").await;
    let new = App::open(&db, "new app").await;
    old.exec("INSERT INTO users (id, email) VALUES (10, 'Old@App')")
        .await;
    new.exec("INSERT INTO users (id, email, email_lower) VALUES (11, 'New@App', 'custom')")
        .await;
    old.exec("UPDATE users SET email = 'Changed@Old' WHERE id = 1")
        .await;
    new.exec("UPDATE users SET email = 'Changed@New', email_lower = 'mine' WHERE id = 2")
        .await;
    let rows = old
        .rows("SELECT id, email_lower FROM users WHERE id IN (1, 2, 10, 11) ORDER BY id")
        .await;
    let got: Vec<(String, Option<String>)> = rows
        .into_iter()
        .map(|r| (r[0].clone().unwrap_or_default(), r[1].clone()))
        .collect();
    let want = |id: &str, v: &str| (id.to_string(), Some(v.to_string()));
    assert_eq!(
        got,
        vec![
            want("1", "changed@old"),
            want("2", "mine"),
            want("10", "old@app"),
            want("11", "custom")
        ]
    );
}
on_both!(dual_write_keeps_what_the_new_app_wrote);

/// The roles the old application runs as keep their privileges under the old name: the view
/// gets the grants the table had (PostgreSQL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_table_view_keeps_the_old_apps_grants() {
    let db = TestDb::pg().await;
    customers(&db).await;
    db.execute(
        "DO $$ BEGIN CREATE ROLE phased_test_old_app NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         GRANT SELECT, INSERT, UPDATE ON customers TO phased_test_old_app;",
    )
    .await;
    let loaded = plan(RENAME_TABLE);
    let options = phased::engine::RunOptions {
        phase: Some("expand".to_string()),
        ..Default::default()
    };
    if let Err((e, _)) = crate::common::run(&db, &loaded, options).await {
        panic!("{e}");
    }
    let app = App::open(&db, "old app").await;
    app.exec(
        "SET ROLE phased_test_old_app;
         INSERT INTO customers (id, name) VALUES (77, 'as the app role');
         UPDATE customers SET name = 'still the app role' WHERE id = 77;",
    )
    .await;
    assert!(app
        .try_exec("DELETE FROM customers WHERE id = 77")
        .await
        .is_err_and(|e| e.contains("permission denied")));
    app.exec("RESET ROLE").await;
    // Rollback leaves the table's own grants as they were.
    roll_back_all(&db, &loaded).await;
    app.exec("SET ROLE phased_test_old_app; SELECT count(*) FROM customers; RESET ROLE")
        .await;
    db.execute("REVOKE ALL ON customers FROM phased_test_old_app")
        .await;
}

/// An operation with later parts on a table that a later `rename_table` renames: its parts would
/// work on the view; refused, located at the operation, naming the fix.
#[test]
fn an_operation_before_the_rename_of_its_table_is_refused() {
    let yaml = "plan: p\nchanges:\n  - add_column: { table: customers, name: e, type: text, up: \"lower(email)\" }\n  - rename_table: { from: customers, to: clients }\n";
    let err = match phased::plan::parse_str("p.yaml", yaml, std::path::Path::new(".")) {
        Ok(_) => panic!("loaded"),
        Err(report) => report.render_plain(),
    };
    assert!(err.contains("p.yaml:3:5"), "{err}");
    assert!(err.contains("write the `rename_table` first"), "{err}");
}

/// What the catalog says SQLite cannot do is said before anything runs: here a rename of a NOT
/// NULL column without a default (SQLite checks NOT NULL before its AFTER triggers could fill
/// it), after a step that would otherwise have run first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_refusals_come_before_anything_runs() {
    let db = TestDb::sqlite();
    db.execute("CREATE TABLE users (id integer PRIMARY KEY, email text NOT NULL)")
        .await;
    let loaded = plan(
        r#"
plan: refused
changes:
  - create_table: { name: other, columns: [ { name: id, type: integer, primary_key: true } ] }
  - rename_column: { table: users, from: email, to: email_address }
"#,
    );
    let err = match crate::common::run(&db, &loaded, Default::default()).await {
        Ok(_) => panic!("the run went ahead"),
        Err((e, _)) => e.to_string(),
    };
    assert!(err.contains("expand#2"), "{err}");
    assert!(err.contains("nothing was run"), "{err}");
    assert!(!db.has_table("other").await, "the first step did not run");
}

/// The state's done steps of a test database (SQLite).
async fn done_steps(db: &TestDb) -> i64 {
    db.scalar("SELECT count(*) FROM phased_steps WHERE status = 'done'")
        .await
}

/// A refusal on a table the plan itself creates comes before anything runs too: the steps are
/// rehearsed on a copy of the schema, so the rename sees the NOT NULL column the first step
/// makes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_refusal_on_a_table_the_plan_creates_comes_before_anything_runs() {
    let db = TestDb::sqlite();
    let loaded = plan(
        r#"
plan: refused_created
changes:
  - create_table: { name: accounts, columns: [ { name: id, type: integer, primary_key: true },
                                               { name: email, type: text, nullable: false } ] }
  - rename_column: { table: accounts, from: email, to: email_address }
"#,
    );
    let err = match crate::common::run(&db, &loaded, Default::default()).await {
        Ok(_) => panic!("the run went ahead"),
        Err((e, _)) => e.to_string(),
    };
    assert!(err.contains("step expand#2"), "{err}");
    assert!(err.contains("rename_column accounts.email"), "{err}");
    assert!(err.contains("NOT NULL without a default"), "{err}");
    assert!(err.contains("nothing was run"), "{err}");
    assert!(
        !db.has_table("accounts").await,
        "the first step did not run"
    );
    assert_eq!(done_steps(&db).await, 0);
}

/// A type change of a column that an earlier step puts in a CHECK is refused before that
/// step runs: the table keeps its definition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_refusal_after_an_earlier_step_constrains_the_column_comes_before_anything_runs() {
    let db = TestDb::sqlite();
    db.execute("CREATE TABLE items (id integer PRIMARY KEY, price integer)")
        .await;
    let before = db
        .text("SELECT sql FROM sqlite_schema WHERE name = 'items'")
        .await;
    let loaded = plan(
        r#"
plan: refused_checked
changes:
  - add_check: { table: items, name: items_price_positive, expression: "price > 0" }
  - change_type: { table: items, column: price, type: bigint }
"#,
    );
    let err = match crate::common::run(&db, &loaded, Default::default()).await {
        Ok(_) => panic!("the run went ahead"),
        Err((e, _)) => e.to_string(),
    };
    assert!(err.contains("step expand#2"), "{err}");
    assert!(err.contains("change_type items.price"), "{err}");
    assert!(err.contains("nothing was run"), "{err}");
    assert_eq!(
        db.text("SELECT sql FROM sqlite_schema WHERE name = 'items'")
            .await,
        before,
        "the check was not added"
    );
    assert_eq!(done_steps(&db).await, 0);
}

/// The same plan with a column SQLite can rename (nullable) runs as before; the rehearsal
/// leaves no file and no trace in the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_rehearsed_plan_that_is_fine_runs() {
    let db = TestDb::sqlite();
    let loaded = plan(
        r#"
plan: fine_created
changes:
  - create_table: { name: accounts, columns: [ { name: id, type: integer, primary_key: true },
                                               { name: email, type: text } ] }
  - rename_column: { table: accounts, from: email, to: email_address }
"#,
    );
    crate::common::run_ok(&db, &loaded).await;
    assert!(db.has_column("accounts", "email_address").await);
    assert_eq!(
        done_steps(&db).await,
        4,
        "create, rename, its backfill, its contract"
    );
}

/// A rehearsal that cannot follow the plan (an `sql` step that needs rows fails on a copy
/// without them) does not block the run: the run goes ahead and its steps run as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_rehearsal_that_fails_for_want_of_rows_does_not_block_the_run() {
    let db = TestDb::sqlite();
    db.execute(
        "CREATE TABLE users (id integer PRIMARY KEY, email text); \
         INSERT INTO users (id, email) VALUES (1, 'a@example.com'); \
         CREATE TABLE counts (n integer NOT NULL)",
    )
    .await;
    let loaded = plan(
        r#"
plan: needs_rows
changes:
  - sql: "INSERT INTO counts (n) VALUES ((SELECT max(id) FROM users))"
  - rename_column: { table: users, from: email, to: email_address }
"#,
    );
    crate::common::run_ok(&db, &loaded).await;
    assert_eq!(db.scalar("SELECT n FROM counts").await, 1);
    assert!(db.has_column("users", "email_address").await);
}

/// A dry run is not rehearsed: `phased plan` still shows what the run would send, step by step,
/// up to the step that cannot render, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_dry_run_of_a_refused_plan_is_unchanged() {
    let db = TestDb::sqlite();
    db.execute("CREATE TABLE placeholder (id integer PRIMARY KEY)")
        .await;
    let dir = crate::common::scratch_dir();
    std::fs::write(
        dir.join("p.yaml"),
        r#"
plan: refused_dry
changes:
  - create_table: { name: accounts, columns: [ { name: id, type: integer, primary_key: true },
                                               { name: email, type: text, nullable: false } ] }
  - rename_column: { table: accounts, from: email, to: email_address }
"#,
    )
    .expect("write the plan");
    let out = crate::common::phased_cmd()
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
    assert!(text.contains("CREATE TABLE \"accounts\""), "{text}");
    assert!(text.contains("cannot be shown further"), "{text}");
    assert!(text.contains("NOT NULL without a default"), "{text}");
    assert!(!text.contains("nothing was run"), "{text}");
    assert!(!db.has_table("accounts").await);
}

/// Where the rehearsal stops (here at the `sql` step that needs rows), the steps after it are
/// checked at their turn, as before the rehearsal existed: the run is not refused up front, and
/// a later refusal comes when its step runs, after the earlier steps ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_steps_after_where_the_rehearsal_stops_are_checked_at_their_turn() {
    let db = TestDb::sqlite();
    db.execute(
        "CREATE TABLE users (id integer PRIMARY KEY); \
         INSERT INTO users (id) VALUES (1); \
         CREATE TABLE counts (n integer NOT NULL)",
    )
    .await;
    let loaded = plan(
        r#"
plan: stops_early
changes:
  - sql: "INSERT INTO counts (n) VALUES ((SELECT max(id) FROM users))"
  - create_table: { name: accounts, columns: [ { name: id, type: integer, primary_key: true },
                                               { name: email, type: text, nullable: false } ] }
  - rename_column: { table: accounts, from: email, to: email_address }
"#,
    );
    let err = match crate::common::run(&db, &loaded, Default::default()).await {
        Ok(_) => panic!("the rename of a NOT NULL column without a default ran"),
        Err((e, _)) => e.to_string(),
    };
    assert!(err.contains("expand#3"), "{err}");
    assert!(err.contains("NOT NULL without a default"), "{err}");
    assert!(!err.contains("nothing was run"), "{err}");
    assert_eq!(db.scalar("SELECT n FROM counts").await, 1);
    assert!(db.has_table("accounts").await);
    assert_eq!(done_steps(&db).await, 2);
}

/// `phased validate --dialect sqlite` rehearses the plan on an empty database: a refusal on a
/// table the plan itself creates is named at its step, with no database; steps on tables the
/// plan does not create (it cannot see them) and the same plan without `--dialect` pass.
#[test]
fn validate_for_sqlite_names_a_refusal_on_a_table_the_plan_creates() {
    let dir = crate::common::scratch_dir();
    std::fs::write(
        dir.join("refused.yaml"),
        "plan: refused_offline
changes:
  - rename_column: { table: users, from: email, to: email_address }
  - create_table: { name: accounts, columns: [ { name: id, type: integer, primary_key: true },
                                               { name: email, type: text, nullable: false } ] }
  - rename_column: { table: accounts, from: email, to: email_address }
",
    )
    .expect("write the plan");
    std::fs::write(
        dir.join("fine.yaml"),
        "plan: fine_offline
changes:
  - create_table: { name: accounts, columns: [ { name: id, type: integer, primary_key: true },
                                               { name: email, type: text, nullable: false, default: \"''\" } ] }
  - rename_column: { table: accounts, from: email, to: email_address }
  - rename_column: { table: users, from: email, to: email_address }
",
    )
    .expect("write the plan");
    let validate = |args: &[&str]| {
        crate::common::phased_cmd()
            .arg("validate")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("phased validate")
    };
    let out = validate(&["--dialect", "sqlite", "refused.yaml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "refused.yaml:6:5: error: `rename_column accounts.email → email_address` (step expand#3)"
        ),
        "{stderr}"
    );
    let flat = stderr.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains("`accounts.email` is NOT NULL without a default"),
        "{stderr}"
    );
    assert!(!stderr.contains("users"), "{stderr}");
    for args in [
        &["--dialect", "sqlite", "fine.yaml"][..],
        &["refused.yaml"][..],
        &["--dialect", "postgres", "refused.yaml"][..],
    ] {
        let out = validate(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
