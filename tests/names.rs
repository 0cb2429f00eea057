//! Names on real databases: names phased derives stay unique for long table names, and an
//! index on a schema-qualified table is found (and dropped) in that schema.

use phased::engine::events::Recorder;
use phased::engine::rollback::{rollback, RollbackOptions};
use phased::plan::LoadedPlan;

use crate::common::{plan, run_ok, TestDb};

async fn roll_back_to(db: &TestDb, loaded: &LoadedPlan, to: &str) -> Result<Vec<String>, String> {
    let mut target = db.target(loaded.plan.id()).await;
    let options = RollbackOptions {
        to: Some(to.to_string()),
    };
    let mut recorder = Recorder::default();
    phased::with_target!(&mut target, t => rollback(t, loaded, &options, &mut recorder).await)
        .map_err(|e| e.to_string())
}

/// Two 60-character table names that share their first 50: the dual-write trigger function
/// names (`phased_dual_write_<table>`, cut at 63 bytes) used to be one and the same, so the
/// second `dual_write` replaced the first's function (INSERTs into the first table then failed
/// on a column it does not have) and rollback stuck on `DROP FUNCTION … depends on`.
async fn dual_writes_on_two_long_tables_sharing_a_prefix(db: TestDb) {
    let prefix = format!("{:x<50}", "long_table_name_");
    let (one, two) = (format!("{prefix}_one_table"), format!("{prefix}_two_table"));
    assert_eq!((one.len(), two.len()), (60, 60));
    let loaded = plan(&format!(
        r#"
plan: long-names
phases:
  - name: setup
    kind: expand
    steps:
      - create_table: {{ name: {one}, columns: [ {{ name: id, type: integer, primary_key: true }}, {{ name: email, type: text }}, {{ name: a_lower, type: text }} ] }}
      - create_table: {{ name: {two}, columns: [ {{ name: id, type: integer, primary_key: true }}, {{ name: email, type: text }}, {{ name: b_upper, type: text }} ] }}
  - name: expand
    kind: expand
    steps:
      - dual_write: {{ table: {one}, set: {{ a_lower: "lower(NEW.email)" }} }}
      - dual_write: {{ table: {two}, set: {{ b_upper: "upper(NEW.email)" }} }}
"#
    ));
    run_ok(&db, &loaded).await;

    db.execute(&format!(
        "INSERT INTO {one} (id, email) VALUES (1, 'Ann@Example.COM')"
    ))
    .await;
    db.execute(&format!(
        "INSERT INTO {two} (id, email) VALUES (1, 'Bob@Example.COM')"
    ))
    .await;
    assert_eq!(
        db.text(&format!("SELECT a_lower FROM {one} WHERE id = 1"))
            .await,
        Some("ann@example.com".to_string())
    );
    assert_eq!(
        db.text(&format!("SELECT b_upper FROM {two} WHERE id = 1"))
            .await,
        Some("BOB@EXAMPLE.COM".to_string())
    );

    if let Err(e) = roll_back_to(&db, &loaded, "setup").await {
        panic!("rollback of the two dual_writes failed: {e}");
    }
    let (triggers, functions) = if db.is_pg() {
        (
            "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal",
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname = 'phased' AND p.proname LIKE 'phased_dual_write%'",
        )
    } else {
        (
            "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger'",
            "SELECT 0",
        )
    };
    assert_eq!(db.scalar(triggers).await, 0, "triggers left after rollback");
    assert_eq!(
        db.scalar(functions).await,
        0,
        "functions left after rollback"
    );
    // Both tables are back to plain tables: new rows are not filled any more.
    db.execute(&format!(
        "INSERT INTO {one} (id, email) VALUES (2, 'Cy@Example.COM')"
    ))
    .await;
    assert_eq!(
        db.text(&format!("SELECT a_lower FROM {one} WHERE id = 2"))
            .await,
        None
    );
}

mod dual_writes_on_two_long_tables_sharing_a_prefix {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::dual_writes_on_two_long_tables_sharing_a_prefix(crate::common::TestDb::pg().await)
            .await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::dual_writes_on_two_long_tables_sharing_a_prefix(crate::common::TestDb::sqlite())
            .await;
    }
}

/// `CREATE INDEX idx ON app.accounts` puts the index in schema `app`: rollback must drop
/// `"app"."idx"`, not look for `idx` on the search path (where it is not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_on_a_schema_qualified_table_is_rolled_back_in_its_schema() {
    let db = TestDb::pg().await;
    let loaded = plan(
        r#"
plan: schema-index
phases:
  - name: setup
    kind: expand
    steps:
      - sql: { up: "CREATE SCHEMA app", down: "DROP SCHEMA app" }
      - sql: { up: "CREATE TABLE app.accounts (id integer PRIMARY KEY, email text)", down: "DROP TABLE app.accounts" }
  - name: expand
    kind: expand
    steps:
      - create_index: { table: app.accounts, name: accounts_email_idx, columns: [email] }
"#,
    );
    run_ok(&db, &loaded).await;
    let in_app = "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                  WHERE n.nspname = 'app' AND c.relname = 'accounts_email_idx' AND c.relkind = 'i'";
    assert_eq!(db.scalar(in_app).await, 1);
    if let Err(e) = roll_back_to(&db, &loaded, "setup").await {
        panic!("rollback failed: {e}");
    }
    assert_eq!(
        db.scalar(in_app).await,
        0,
        "the index is still in schema app"
    );
}

/// Two tables of one name in two schemas: their dual-write functions live in schema `phased`,
/// shared by all schemas, and used to be one (`phased_dual_write_t`), so the second
/// `dual_write` replaced the first's function. Each table keeps its own, and rollback removes
/// both triggers and both functions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_writes_on_tables_of_one_name_in_two_schemas() {
    let db = TestDb::pg().await;
    db.execute(
        "CREATE SCHEMA app; CREATE SCHEMA web; \
         CREATE TABLE app.t (id integer PRIMARY KEY, email text, a_lower text); \
         CREATE TABLE web.t (id integer PRIMARY KEY, email text, b_upper text)",
    )
    .await;
    let loaded = plan(
        r#"
plan: two-schemas
phases:
  - name: expand
    kind: expand
    steps:
      - dual_write: { table: app.t, set: { a_lower: "lower(NEW.email)" } }
      - dual_write: { table: web.t, set: { b_upper: "upper(NEW.email)" } }
"#,
    );
    run_ok(&db, &loaded).await;
    db.execute("INSERT INTO app.t (id, email) VALUES (1, 'Ann@Example.COM')")
        .await;
    db.execute("INSERT INTO web.t (id, email) VALUES (1, 'Bob@Example.COM')")
        .await;
    assert_eq!(
        db.text("SELECT a_lower FROM app.t").await.as_deref(),
        Some("ann@example.com")
    );
    assert_eq!(
        db.text("SELECT b_upper FROM web.t").await.as_deref(),
        Some("BOB@EXAMPLE.COM")
    );

    let mut target = db.target(loaded.plan.id()).await;
    let mut recorder = Recorder::default();
    let undone = phased::with_target!(&mut target, t => rollback(t, &loaded, &RollbackOptions::default(), &mut recorder).await);
    assert!(undone.is_ok(), "{:?}", undone.err().map(|e| e.to_string()));
    assert_eq!(
        db.scalar("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'phased_dual_write%'")
            .await,
        0
    );
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname = 'phased' AND p.proname LIKE 'phased_dual_write%'"
        )
        .await,
        0
    );
}
