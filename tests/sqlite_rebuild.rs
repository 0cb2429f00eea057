//! SQLite's copy-table recipe (add_check, add_foreign_key, set_not_null): everything else about
//! the table survives the rebuild, and rows that violate the new constraint fail the step, named
//! by key, with the table left as it was.

use phased::engine::{EngineError, RunOptions};

use crate::common::{plan, run, run_ok, SqliteDb, TestDb};

const SCHEMA: &str = "
    CREATE TABLE parents (id INTEGER PRIMARY KEY, name TEXT);
    INSERT INTO parents (id, name) VALUES (1, 'one'), (2, 'two');
    CREATE TABLE audit (what TEXT);
    CREATE TABLE accounts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        email TEXT NOT NULL UNIQUE,          -- a comment, with (parentheses
        email_lower TEXT,
        score INTEGER CHECK (score >= 0) DEFAULT 7,
        parent_id INTEGER,
        \"odd, name\" TEXT DEFAULT 'a,b'
    );
    CREATE INDEX accounts_score_idx ON accounts (score);
    CREATE INDEX accounts_partial_idx ON accounts (parent_id) WHERE parent_id IS NOT NULL;
    CREATE TRIGGER accounts_audit AFTER INSERT ON accounts BEGIN INSERT INTO audit VALUES ('insert ' || NEW.email); END;
    INSERT INTO accounts (email, email_lower, score, parent_id) VALUES
        ('A@x.io', 'a@x.io', 1, 1), ('B@x.io', 'b@x.io', 2, 2), ('C@x.io', 'c@x.io', 3, NULL);
    DELETE FROM accounts WHERE id = 3;
    INSERT INTO accounts (email, email_lower, score, parent_id) VALUES ('D@x.io', 'd@x.io', 4, 1);
    CREATE VIEW account_emails AS SELECT id, email FROM accounts;
    CREATE TABLE sessions (id INTEGER PRIMARY KEY, account_id INTEGER REFERENCES accounts (id) ON DELETE CASCADE);
    INSERT INTO sessions VALUES (1, 1), (2, 4);
";

const PLAN: &str = "
plan: rebuild
backup: { before: [] }
phases:
  - name: expand
    kind: expand
    steps:
      - dual_write: { table: accounts, set: { email_lower: \"lower(NEW.email)\" } }
      - add_check: { table: accounts, name: accounts_email_has_at, expression: \"email LIKE '%@%'\" }
      - add_foreign_key: { table: accounts, name: accounts_parent_fk, columns: [parent_id], references: { table: parents, columns: [id] }, on_delete: CASCADE }
  - name: contract
    kind: contract
    steps:
      - set_not_null: { table: accounts, column: email_lower }
";

fn sqlite(db: &TestDb) -> &SqliteDb {
    match db {
        TestDb::Sqlite(db) => db,
        TestDb::Pg(_) => panic!("an SQLite test database was expected"),
    }
}

/// An application connection with foreign keys enforced.
fn app(db: &TestDb) -> rusqlite::Connection {
    let conn = sqlite(db).conn();
    conn.execute_batch("PRAGMA foreign_keys = ON")
        .expect("foreign keys on");
    conn
}

fn rejects(conn: &rusqlite::Connection, sql: &str, why: &str) {
    let err = conn
        .execute_batch(sql)
        .expect_err(&format!("{sql} should be rejected"));
    assert!(err.to_string().contains(why), "{sql}: {err}");
}

/// The constraints SCHEMA gave `accounts` itself: UNIQUE email, CHECK on score.
fn schema_constraints_hold(conn: &rusqlite::Connection) {
    rejects(
        conn,
        "INSERT INTO accounts (email, email_lower) VALUES ('A@x.io', 'x')",
        "UNIQUE",
    );
    rejects(
        conn,
        "INSERT INTO accounts (email, email_lower, score) VALUES ('neg@x.io', 'x', -1)",
        "CHECK",
    );
}

#[tokio::test]
async fn rebuilds_keep_every_other_index_trigger_and_constraint() {
    let db = TestDb::sqlite();
    db.execute(SCHEMA).await;
    let rows_before = db
        .text("SELECT group_concat(id || ':' || email || ':' || score, ' ') FROM (SELECT * FROM accounts ORDER BY id)")
        .await;
    run_ok(&db, &plan(PLAN)).await;

    assert_eq!(
        db.text("SELECT group_concat(id || ':' || email || ':' || score, ' ') FROM (SELECT * FROM accounts ORDER BY id)")
            .await,
        rows_before,
        "rows and their keys are unchanged"
    );
    for index in ["accounts_score_idx", "accounts_partial_idx"] {
        assert!(db.has_index(index).await, "{index} survives");
    }
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = 'accounts'"
        )
        .await,
        3,
        "the audit trigger and both dual_write triggers survive"
    );
    assert_eq!(db.scalar("SELECT count(*) FROM parents").await, 2);
    assert_eq!(
        db.scalar("SELECT count(*) FROM sessions").await,
        2,
        "dropping the old table did not cascade to the tables that reference it"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM account_emails").await,
        3,
        "views over the table still work"
    );
    assert_eq!(db.text("PRAGMA integrity_check").await, Some("ok".into()));

    let conn = app(&db);
    // Applications keep working, and every trigger still fires (SQLite's dual_write trigger runs
    // AFTER the row is written, so a NOT NULL column needs some value from the writer first; a
    // value the writer gives is kept, and an update of the source column recomputes it).
    conn.execute_batch(
        "INSERT INTO accounts (email, email_lower, parent_id) VALUES ('New@X.io', 'given', 2)",
    )
    .expect("insert");
    assert_eq!(
        db.text("SELECT email_lower FROM accounts WHERE email = 'New@X.io'")
            .await,
        Some("given".into()),
        "dual_write keeps what the writer gave"
    );
    conn.execute_batch(
        "UPDATE accounts SET email = 'New@X.io', score = score WHERE email = 'New@X.io'",
    )
    .expect("update");
    assert_eq!(
        db.text("SELECT email_lower FROM accounts WHERE email = 'New@X.io'")
            .await,
        Some("new@x.io".into()),
        "dual_write's update trigger fires"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM audit WHERE what = 'insert New@X.io'")
            .await,
        1,
        "audit trigger fires"
    );
    assert_eq!(
        db.scalar("SELECT score FROM accounts WHERE email = 'New@X.io'")
            .await,
        7,
        "defaults survive"
    );
    assert!(
        db.scalar("SELECT id FROM accounts WHERE email = 'New@X.io'")
            .await
            > 4,
        "AUTOINCREMENT never reuses a key"
    );
    // Old constraints still hold…
    schema_constraints_hold(&conn);
    // …and so do the new ones.
    rejects(
        &conn,
        "INSERT INTO accounts (email, email_lower) VALUES ('no-at-sign', 'x')",
        "accounts_email_has_at",
    );
    rejects(
        &conn,
        "INSERT INTO accounts (email, email_lower, parent_id) VALUES ('orphan@x.io', 'x', 99)",
        "FOREIGN KEY",
    );
    rejects(
        &conn,
        "UPDATE accounts SET email_lower = NULL WHERE id = 1",
        "NOT NULL",
    );
    // Foreign keys that point at the rebuilt table still hold.
    rejects(&conn, "INSERT INTO sessions VALUES (3, 999)", "FOREIGN KEY");
    conn.execute_batch("INSERT INTO sessions VALUES (3, 2)")
        .expect("a session of an existing account");
    // ON DELETE CASCADE came with the foreign key.
    conn.execute_batch("DELETE FROM parents WHERE id = 2")
        .expect("delete parent");
    assert_eq!(
        db.scalar("SELECT count(*) FROM accounts WHERE parent_id = 2")
            .await,
        0
    );
}

async fn fails_naming_keys_and_leaves_table_unchanged(
    setup: &str,
    step: &str,
    phase_kind: &str,
    named: &[&str],
) {
    let db = TestDb::sqlite();
    db.execute(SCHEMA).await;
    db.execute(setup).await;
    let schema_before = db
        .text("SELECT group_concat(sql, ';') FROM (SELECT sql FROM sqlite_schema WHERE name NOT LIKE 'phased%' ORDER BY name)")
        .await;
    let rows_before = db
        .text("SELECT group_concat(quote(id) || quote(email) || quote(email_lower) || quote(parent_id), ' ') FROM accounts")
        .await;
    let loaded = plan(&format!(
        "plan: violation
backup: {{ before: [] }}
phases:
  - name: p
    kind: {phase_kind}
    steps:
      - {step}
"
    ));
    let (err, _) = run(&db, &loaded, RunOptions::default())
        .await
        .expect_err("violating rows fail the step");
    let EngineError::StepFailed { error, .. } = &err else {
        panic!("expected a failed step, got {err}");
    };
    for key in named {
        assert!(error.contains(key), "the failure names {key}: {error}");
    }
    assert!(error.contains("left unchanged"), "{error}");
    assert_eq!(
        db.text("SELECT group_concat(sql, ';') FROM (SELECT sql FROM sqlite_schema WHERE name NOT LIKE 'phased%' ORDER BY name)")
            .await,
        schema_before,
        "the schema is untouched"
    );
    assert_eq!(
        db.text("SELECT group_concat(quote(id) || quote(email) || quote(email_lower) || quote(parent_id), ' ') FROM accounts")
            .await,
        rows_before,
        "the rows are untouched"
    );
    assert_eq!(
        db.text("SELECT status FROM phased_steps WHERE plan = 'violation'")
            .await,
        Some("failed".into())
    );
}

#[tokio::test]
async fn add_check_with_a_violating_row_names_its_key_and_changes_nothing() {
    fails_naming_keys_and_leaves_table_unchanged(
        "INSERT INTO accounts (id, email) VALUES (40, 'no-at-sign'), (41, 'also none')",
        "add_check: { table: accounts, name: accounts_email_has_at, expression: \"email LIKE '%@%'\" }",
        "expand",
        &["(id=40)", "(id=41)", "accounts_email_has_at"],
    )
    .await;
}

#[tokio::test]
async fn add_foreign_key_with_an_orphan_row_names_its_key_and_changes_nothing() {
    fails_naming_keys_and_leaves_table_unchanged(
        "INSERT INTO accounts (id, email, parent_id) VALUES (50, 'orphan@x.io', 99)",
        "add_foreign_key: { table: accounts, name: accounts_parent_fk, columns: [parent_id], references: { table: parents, columns: [id] } }",
        "expand",
        &["(id=50)", "accounts_parent_fk"],
    )
    .await;
}

#[tokio::test]
async fn set_not_null_with_a_null_row_names_its_key_and_changes_nothing() {
    fails_naming_keys_and_leaves_table_unchanged(
        "INSERT INTO accounts (id, email) VALUES (60, 'null@x.io')",
        "set_not_null: { table: accounts, column: email_lower }",
        "contract",
        &["(id=60)", "email_lower"],
    )
    .await;
}

#[tokio::test]
async fn rebuild_of_a_rowid_table_without_integer_key_keeps_rowids() {
    let db = TestDb::sqlite();
    db.execute(
        "CREATE TABLE notes (body TEXT, n INTEGER);
         INSERT INTO notes VALUES ('a', 1), ('b', 2), ('c', 3);
         DELETE FROM notes WHERE n = 2;",
    )
    .await;
    run_ok(
        &db,
        &plan(
            "plan: notes
backup: { before: [] }
phases:
  - name: contract
    kind: contract
    steps:
      - set_not_null: { table: notes, column: n }
",
        ),
    )
    .await;
    assert_eq!(
        db.text("SELECT group_concat(rowid || body, ',') FROM notes")
            .await,
        Some("1a,3c".into())
    );
}

#[tokio::test]
async fn set_not_null_on_a_column_already_not_null_is_done_without_a_rebuild() {
    let db = TestDb::sqlite();
    db.execute(SCHEMA).await;
    let before = db
        .text("SELECT sql FROM sqlite_schema WHERE name = 'accounts'")
        .await;
    run_ok(
        &db,
        &plan(
            "plan: already
backup: { before: [] }
phases:
  - name: contract
    kind: contract
    steps:
      - set_not_null: { table: accounts, column: email }
",
        ),
    )
    .await;
    assert_eq!(
        db.text("SELECT sql FROM sqlite_schema WHERE name = 'accounts'")
            .await,
        before
    );
    assert_eq!(
        db.text("SELECT status FROM phased_steps WHERE plan = 'already'")
            .await,
        Some("done".into())
    );
}

const UNDO_PLAN: &str = "
plan: undo
backup: { before: [] }
phases:
  - name: expand
    kind: expand
    steps:
      - add_check: { table: accounts, name: accounts_email_has_at, expression: \"email LIKE '%@%'\" }
      - add_foreign_key: { table: accounts, name: accounts_parent_fk, columns: [parent_id], references: { table: parents, columns: [id] } }
  - name: contract
    kind: contract
    steps:
      - set_not_null: { table: accounts, column: email_lower }
      - sql: { up: \"INSERT INTO no_such_table VALUES (1)\", down: \"SELECT 1\" }
";

/// The inverses rebuild the table without what the steps added — the constraints, NOT NULL —
/// and keep everything else: rows, keys, indexes, triggers, the table's own constraints. A
/// contract phase that failed part-way can be rolled back through its set_not_null.
#[tokio::test]
async fn rollback_rebuilds_without_the_added_constraints_and_not_null() {
    let db = TestDb::sqlite();
    db.execute(SCHEMA).await;
    db.execute("UPDATE accounts SET email_lower = lower(email)")
        .await;
    let rows_before = db
        .text("SELECT group_concat(id || ':' || email || ':' || score, ' ') FROM (SELECT * FROM accounts ORDER BY id)")
        .await;
    let loaded = plan(UNDO_PLAN);
    let failed = run(&db, &loaded, RunOptions::default()).await;
    assert!(failed.is_err(), "the contract's second step fails");
    let conn = app(&db);
    rejects(
        &conn,
        "UPDATE accounts SET email_lower = NULL WHERE id = 1",
        "NOT NULL",
    );

    let mut target = db.target("undo").await;
    let mut recorder = phased::engine::events::Recorder::default();
    let options = phased::engine::rollback::RollbackOptions { to: None };
    let undone = phased::with_target!(&mut target, t => phased::engine::rollback::rollback(t, &loaded, &options, &mut recorder).await)
        .unwrap_or_else(|e| panic!("rollback: {e}"));
    assert_eq!(
        undone,
        vec![
            // A failed step may have done part of its work: its `down` runs too.
            "contract#2 sql INSERT INTO no_such_table VALUES (1)".to_string(),
            "contract#1 set_not_null accounts.email_lower".to_string(),
            "expand#2 add_foreign_key accounts_parent_fk".to_string(),
            "expand#1 add_check accounts_email_has_at".to_string(),
        ]
    );
    drop(target);

    // What the steps added is gone…
    conn.execute_batch("UPDATE accounts SET email_lower = NULL WHERE id = 1")
        .expect("email_lower is nullable again");
    conn.execute_batch(
        "INSERT INTO accounts (email, email_lower, parent_id) VALUES ('no-at-sign', 'x', 99)",
    )
    .expect("neither the CHECK nor the foreign key is there");
    let create = db
        .text("SELECT sql FROM sqlite_schema WHERE name = 'accounts'")
        .await
        .unwrap_or_default();
    assert!(!create.contains("accounts_email_has_at"), "{create}");
    assert!(!create.contains("accounts_parent_fk"), "{create}");
    // …and everything else is as it was.
    assert_eq!(
        db.text("SELECT group_concat(id || ':' || email || ':' || score, ' ') FROM (SELECT * FROM accounts WHERE id <= 4 ORDER BY id)")
            .await,
        rows_before,
        "rows and their keys are unchanged"
    );
    assert!(create.contains("email TEXT NOT NULL UNIQUE"), "{create}");
    schema_constraints_hold(&conn);
    rejects(
        &conn,
        "INSERT INTO accounts (email) VALUES (NULL)",
        "NOT NULL",
    );
    for index in ["accounts_score_idx", "accounts_partial_idx"] {
        assert!(db.has_index(index).await, "{index} survives");
    }
    assert_eq!(
        db.scalar("SELECT count(*) FROM audit WHERE what = 'insert no-at-sign'")
            .await,
        1,
        "the audit trigger survives and fires"
    );
    rejects(&conn, "INSERT INTO sessions VALUES (9, 999)", "FOREIGN KEY");
    assert_eq!(db.text("PRAGMA integrity_check").await, Some("ok".into()));

    // Running again re-adds them (the orphan and the NULL are fixed first).
    conn.execute_batch(
        "DELETE FROM accounts WHERE email = 'no-at-sign'; UPDATE accounts SET email_lower = lower(email)",
    )
    .expect("fix the rows");
    let loaded_fixed = plan(&UNDO_PLAN.replace("INSERT INTO no_such_table VALUES (1)", "SELECT 1"));
    run_ok(&db, &loaded_fixed).await;
    rejects(
        &conn,
        "INSERT INTO accounts (email, email_lower) VALUES ('again', 'x')",
        "accounts_email_has_at",
    );
    rejects(
        &conn,
        "UPDATE accounts SET email_lower = NULL WHERE id = 1",
        "NOT NULL",
    );
}
