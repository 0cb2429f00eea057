//! Versioned migrations (`phased db …` and the plan's `migrations` step) on SQLite and
//! PostgreSQL, driven through the CLI as a user would, with the example history in migrations/.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::common::{phased_cmd, repo_root, TestDb};

const INITIAL: &str = "4f1c2a9b7e10";
const ORDERS: &str = "8d3e5b1a0c27";
const ORDERS_INDEX: &str = "b7a2c4e9d315";
const EMAILS: &str = "c1d9f0a6b842";
const MERGE: &str = "e5f8a3b0d694";

/// Every example revision with the revisions it revises.
const EXAMPLES: &[(&str, &[&str])] = &[
    (INITIAL, &[]),
    (ORDERS, &[INITIAL]),
    (ORDERS_INDEX, &[ORDERS]),
    (EMAILS, &[ORDERS]),
    (MERGE, &[ORDERS_INDEX, EMAILS]),
];

/// The example history, as a frozen fixture: the shipped `migrations/` is the user's to change
/// (`phased db new` there must not break the suite).
fn examples_dir() -> PathBuf {
    repo_root().join("tests/fixtures/migrations")
}

/// A copy of the example folder in a temporary directory, without the named revisions.
fn copy_examples(without: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for entry in std::fs::read_dir(examples_dir()).expect("examples") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if without.iter().any(|rev| name.contains(rev)) {
            continue;
        }
        std::fs::copy(&path, dir.path().join(name)).expect("copy");
    }
    dir
}

/// The result of one `phased db …` command.
struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

fn db_cmd(db: &TestDb, dir: &Path, args: &[&str]) -> Outcome {
    let output = phased_cmd()
        .arg("db")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .arg("--database")
        .arg(db.url())
        .output()
        .expect("run phased");
    Outcome {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs a `db` command that must succeed; returns its stdout.
fn db_ok(db: &TestDb, dir: &Path, args: &[&str]) -> String {
    let out = db_cmd(db, dir, args);
    assert_eq!(
        out.code, 0,
        "phased db {args:?} failed\nstdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    out.stdout
}

fn current(db: &TestDb, dir: &Path) -> Vec<String> {
    db_ok(db, dir, &["current"])
        .lines()
        .map(str::to_string)
        .collect()
}

/// What the example revisions leave in the schema.
#[derive(Debug, PartialEq, Eq)]
struct Schema {
    customers: bool,
    customers_email_key: bool,
    orders: bool,
    orders_customer_id_idx: bool,
    email_normalized: bool,
}

impl Schema {
    async fn of(db: &TestDb) -> Self {
        let customers = db.has_table("customers").await;
        Self {
            customers,
            customers_email_key: db.has_index("customers_email_key").await,
            orders: db.has_table("orders").await,
            orders_customer_id_idx: db.has_index("orders_customer_id_idx").await,
            email_normalized: customers && db.has_column("customers", "email_normalized").await,
        }
    }

    /// The schema expected once exactly `applied` is applied.
    fn expected(applied: &BTreeSet<&str>) -> Self {
        Self {
            customers: applied.contains(INITIAL),
            customers_email_key: applied.contains(INITIAL),
            orders: applied.contains(ORDERS),
            orders_customer_id_idx: applied.contains(ORDERS_INDEX),
            email_normalized: applied.contains(EMAILS),
        }
    }
}

fn ancestors_inclusive(rev: &'static str) -> BTreeSet<&'static str> {
    let mut out = BTreeSet::from([rev]);
    let parents = EXAMPLES.iter().find(|(r, _)| *r == rev).unwrap().1;
    for p in parents {
        out.extend(ancestors_inclusive(p));
    }
    out
}

/// Alembic's own migration test, for every example revision: from its parents, upgrade to
/// it and check the schema; downgrade back and check that its changes are gone.
async fn every_revision_up_and_down(db: TestDb) {
    let dir = examples_dir();
    for (rev, parents) in EXAMPLES {
        let before: BTreeSet<&str> = parents
            .iter()
            .flat_map(|p| ancestors_inclusive(p))
            .collect();
        for p in *parents {
            db_ok(&db, &dir, &["upgrade", p]);
        }
        assert_eq!(
            Schema::of(&db).await,
            Schema::expected(&before),
            "before {rev}"
        );
        if *rev == EMAILS {
            db.execute(
                "INSERT INTO customers (id, email, name) VALUES (1, '  Ann@Example.COM ', 'Ann')",
            )
            .await;
        }

        let out = db_ok(&db, &dir, &["upgrade", rev]);
        let after = ancestors_inclusive(rev);
        assert_eq!(
            Schema::of(&db).await,
            Schema::expected(&after),
            "after upgrade {rev}"
        );
        let head_mark = if *rev == MERGE { " (head)" } else { "" };
        assert_eq!(out, format!("{rev}{head_mark}\n"));
        assert_eq!(current(&db, &dir), vec![format!("{rev}{head_mark}")]);
        if *rev == EMAILS {
            assert_eq!(
                db.text("SELECT email_normalized FROM customers WHERE id = 1")
                    .await
                    .as_deref(),
                Some("ann@example.com"),
                "the data migration fills the new column"
            );
        }
        if *rev == ORDERS_INDEX && db.is_pg() {
            assert_eq!(
                db.scalar("SELECT count(*) FROM pg_index WHERE indexrelid = 'orders_customer_id_idx'::regclass AND indisvalid")
                    .await,
                1,
                "the concurrent build leaves a valid index"
            );
        }

        let down_to = match parents {
            [] => "base".to_string(),
            [one] => one.to_string(),
            _ => "-1".to_string(),
        };
        db_ok(&db, &dir, &["downgrade", &down_to]);
        assert_eq!(
            Schema::of(&db).await,
            Schema::expected(&before),
            "after downgrade of {rev}"
        );
        let expected_current: Vec<String> = if parents.is_empty() {
            vec!["<base>".to_string()]
        } else {
            parents.iter().map(|p| p.to_string()).collect()
        };
        assert_eq!(
            current(&db, &dir),
            expected_current,
            "after downgrade of {rev}"
        );
        db_ok(&db, &dir, &["downgrade", "base"]);
        if *rev == EMAILS {
            // The customer was dropped with the table; the next revision starts clean.
            assert!(!db.has_table("customers").await);
        }
    }
}

#[tokio::test]
async fn every_example_revision_upgrades_and_downgrades_on_sqlite() {
    every_revision_up_and_down(TestDb::sqlite()).await;
}

#[tokio::test]
async fn every_example_revision_upgrades_and_downgrades_on_postgres() {
    every_revision_up_and_down(TestDb::pg().await).await;
}

async fn relative_steps_and_base(db: TestDb) {
    let dir = examples_dir();
    assert_eq!(db_ok(&db, &dir, &["upgrade", "+2"]), format!("{ORDERS}\n"));
    let ambiguous = db_cmd(&db, &dir, &["upgrade", "+1"]);
    assert_eq!(ambiguous.code, 2, "{}", ambiguous.stderr);
    assert!(
        ambiguous
            .stderr
            .contains(&format!("could apply {ORDERS_INDEX} or {EMAILS}")),
        "{}",
        ambiguous.stderr
    );
    // A unique prefix names a revision.
    db_ok(&db, &dir, &["upgrade", "b7a2"]);
    assert_eq!(current(&db, &dir), vec![ORDERS_INDEX]);
    assert_eq!(
        db_ok(&db, &dir, &["downgrade", "-2"]),
        format!("{INITIAL}\n")
    );
    assert!(db.has_table("customers").await);
    assert!(!db.has_table("orders").await);
    let too_far = db_cmd(&db, &dir, &["downgrade", "-2"]);
    assert_eq!(too_far.code, 2, "{}", too_far.stderr);
    assert!(
        too_far.stderr.contains("goes past the base"),
        "{}",
        too_far.stderr
    );
    db_ok(&db, &dir, &["upgrade", "head"]);
    assert_eq!(current(&db, &dir), vec![format!("{MERGE} (head)")]);
    assert_eq!(db_ok(&db, &dir, &["downgrade", "base"]), "<base>\n");
    assert_eq!(Schema::of(&db).await, Schema::expected(&BTreeSet::new()));
    let count_sql = if db.is_pg() {
        "SELECT count(*) FROM phased.migrations"
    } else {
        "SELECT count(*) FROM phased_migrations"
    };
    assert_eq!(db.scalar(count_sql).await, 0);
}

#[tokio::test]
async fn relative_steps_prefixes_and_base_on_sqlite() {
    relative_steps_and_base(TestDb::sqlite()).await;
}

#[tokio::test]
async fn relative_steps_prefixes_and_base_on_postgres() {
    relative_steps_and_base(TestDb::pg().await).await;
}

async fn several_heads_then_merge(db: TestDb) {
    let folder = copy_examples(&[MERGE]);
    let dir = folder.path();
    let heads = db_ok(&db, dir, &["heads"]);
    assert_eq!(
        heads,
        format!("{ORDERS_INDEX} (head), index orders by customer\n{EMAILS} (head), store normalised customer emails\n")
    );
    let refused = db_cmd(&db, dir, &["upgrade", "head"]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stderr.contains(&format!(
            "there are several heads: {ORDERS_INDEX}, {EMAILS}"
        )),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains(&format!(
            "phased db merge -m \"merge heads\" {ORDERS_INDEX} {EMAILS}"
        )),
        "{}",
        refused.stderr
    );
    assert_eq!(current(&db, dir), vec!["<base>"], "nothing ran");
    // `db new` refuses too: which head would the new revision revise?
    let new = db_cmd(&db, dir, &["new", "-m", "next"]);
    assert_eq!(new.code, 2, "{}", new.stderr);

    // Both heads can be applied by name; the version table holds both.
    db_ok(&db, dir, &["upgrade", ORDERS_INDEX]);
    db_ok(&db, dir, &["upgrade", EMAILS]);
    assert_eq!(
        current(&db, dir),
        vec![format!("{ORDERS_INDEX} (head)"), format!("{EMAILS} (head)")]
    );
    let heads_sql = if db.is_pg() {
        "SELECT count(*) FROM phased.version_heads"
    } else {
        "SELECT count(*) FROM phased_version_heads"
    };
    assert_eq!(db.scalar(heads_sql).await, 2);

    let merged = db_ok(
        &db,
        dir,
        &["merge", "-m", "join the branches", "b7a2", "c1d9"],
    );
    assert!(merged.starts_with("created "), "{merged}");
    let heads = db_ok(&db, dir, &["heads"]);
    assert_eq!(heads.lines().count(), 1, "{heads}");
    assert!(heads.ends_with("(head), join the branches\n"), "{heads}");
    let merge_rev = heads.split_whitespace().next().unwrap().to_string();
    let history = db_ok(&db, dir, &["history"]);
    assert_eq!(
        history.lines().next().unwrap(),
        format!("{ORDERS_INDEX}, {EMAILS} -> {merge_rev} (head) (mergepoint), join the branches")
    );
    assert!(
        history.contains(&format!("{INITIAL} -> {ORDERS} (branchpoint), add orders")),
        "{history}"
    );
    assert!(
        history.ends_with(&format!("<base> -> {INITIAL}, initial schema\n")),
        "{history}"
    );

    db_ok(&db, dir, &["upgrade", "head"]);
    assert_eq!(current(&db, dir), vec![format!("{merge_rev} (head)")]);
    assert_eq!(db.scalar(heads_sql).await, 1);
    // Going below the merge brings both branch heads back.
    db_ok(&db, dir, &["downgrade", "-1"]);
    assert_eq!(
        current(&db, dir),
        vec![ORDERS_INDEX.to_string(), EMAILS.to_string()]
    );

    // `db new` now revises the single head.
    let created = db_ok(&db, dir, &["new", "-m", "Add shipments table"]);
    let file = created.split_whitespace().nth(1).unwrap();
    assert!(file.ends_with("_add_shipments_table.sql"), "{created}");
    let text = std::fs::read_to_string(file).unwrap();
    assert!(
        text.contains(&format!("-- revises: {merge_rev}\n")),
        "{text}"
    );
    assert!(text.contains("-- message: Add shipments table\n"), "{text}");
}

#[tokio::test]
async fn several_heads_are_refused_until_merged_on_sqlite() {
    several_heads_then_merge(TestDb::sqlite()).await;
}

#[tokio::test]
async fn several_heads_are_refused_until_merged_on_postgres() {
    several_heads_then_merge(TestDb::pg().await).await;
}

async fn stamp_runs_nothing(db: TestDb) {
    let dir = examples_dir();
    // Stamping records what an existing database holds (a missing SQLite file is refused).
    db.execute("CREATE TABLE app_settings (key text PRIMARY KEY)")
        .await;
    assert_eq!(
        db_ok(&db, &dir, &["stamp", "8d3e"]),
        format!("stamped {ORDERS}\n")
    );
    assert_eq!(current(&db, &dir), vec![ORDERS]);
    assert!(!db.has_table("customers").await, "stamp runs no SQL");
    // Recovery: the schema was created by hand; from the stamp on, upgrades continue.
    db.execute(
        "CREATE TABLE customers (id bigint PRIMARY KEY, email text NOT NULL, name text NOT NULL);
                CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL)",
    )
    .await;
    db_ok(&db, &dir, &["upgrade", "head"]);
    assert!(db.has_index("orders_customer_id_idx").await);
    assert!(db.has_column("customers", "email_normalized").await);
    assert_eq!(db_ok(&db, &dir, &["stamp", "base"]), "stamped <base>\n");
    assert_eq!(current(&db, &dir), vec!["<base>"]);
    assert!(db.has_table("orders").await, "stamp base drops nothing");
}

#[tokio::test]
async fn stamp_sets_the_version_without_running_sql_on_sqlite() {
    stamp_runs_nothing(TestDb::sqlite()).await;
}

#[tokio::test]
async fn stamp_sets_the_version_without_running_sql_on_postgres() {
    stamp_runs_nothing(TestDb::pg().await).await;
}

async fn drift_is_reported_before_anything_runs(db: TestDb) {
    let folder = copy_examples(&[]);
    let dir = folder.path();
    db_ok(&db, dir, &["upgrade", ORDERS]);
    let orders_file = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains(ORDERS))
        .unwrap();
    let original = std::fs::read_to_string(&orders_file).unwrap();

    // Line endings alone are not an edit.
    std::fs::write(&orders_file, original.replace('\n', "\r\n")).unwrap();
    db_ok(&db, dir, &["upgrade", ORDERS_INDEX]);
    db_ok(&db, dir, &["downgrade", "-1"]);

    std::fs::write(
        &orders_file,
        original.replace("total_cents bigint", "total_cents integer"),
    )
    .unwrap();
    let refused = db_cmd(&db, dir, &["upgrade", "head"]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(refused.stderr.contains("drift"), "{}", refused.stderr);
    assert!(
        refused.stderr.contains(&format!(
            "revision {ORDERS} was applied, but {} has been edited since",
            orders_file.display()
        )),
        "{}",
        refused.stderr
    );
    assert!(
        !refused.stderr.contains("Running"),
        "nothing ran: {}",
        refused.stderr
    );
    assert_eq!(current(&db, dir), vec![ORDERS], "nothing ran");
    assert!(!db.has_index("orders_customer_id_idx").await);
    let down = db_cmd(&db, dir, &["downgrade", "base"]);
    assert_eq!(down.code, 1, "{}", down.stderr);
    assert!(db.has_table("orders").await);

    // A deleted file is drift too.
    std::fs::remove_file(&orders_file).unwrap();
    std::fs::write(
        dir.join("x.sql"),
        "-- revision: x1\n-- revises: none\n-- migrate:up\nSELECT 1;\n",
    )
    .unwrap();
    let missing = db_cmd(&db, dir, &["downgrade", "base"]);
    // The folder itself no longer forms a history (index and emails revise the removed file).
    assert_eq!(missing.code, 2, "{}", missing.stderr);
    assert!(
        missing
            .stderr
            .contains("which no file in the folder declares"),
        "{}",
        missing.stderr
    );

    // `stamp` is the way out after an intended edit: it records the current checksums.
    std::fs::write(
        &orders_file,
        original.replace("total_cents bigint", "total_cents integer"),
    )
    .unwrap();
    std::fs::remove_file(dir.join("x.sql")).unwrap();
    db_ok(&db, dir, &["stamp", ORDERS]);
    db_ok(&db, dir, &["upgrade", "head"]);
}

#[tokio::test]
async fn edited_applied_migration_is_drift_on_sqlite() {
    drift_is_reported_before_anything_runs(TestDb::sqlite()).await;
}

#[tokio::test]
async fn edited_applied_migration_is_drift_on_postgres() {
    drift_is_reported_before_anything_runs(TestDb::pg().await).await;
}

#[tokio::test]
async fn sql_output_prints_instead_of_running_on_postgres() {
    let db = TestDb::pg().await;
    let dir = examples_dir();
    let sql = db_ok(&db, &dir, &["upgrade", "head", "--sql"]);
    assert!(sql.starts_with(&format!("-- Running upgrade <base> -> {INITIAL}, initial schema\nBEGIN;\nSET LOCAL lock_timeout = '2000ms';\n")), "{sql}");
    assert!(
        sql.contains("CREATE INDEX CONCURRENTLY orders_customer_id_idx ON orders (customer_id);"),
        "{sql}"
    );
    assert!(sql.contains(&format!("-- Running upgrade {ORDERS} -> {ORDERS_INDEX}, index orders by customer (not in a transaction)\n-- not in a transaction")), "{sql}");
    assert!(
        sql.contains(&format!(
            "INSERT INTO phased.migrations (revision, checksum) VALUES ('{MERGE}', '"
        )),
        "{sql}"
    );
    assert_eq!(current(&db, &dir), vec!["<base>"], "--sql runs nothing");
    assert!(!db.has_table("customers").await);

    db_ok(&db, &dir, &["upgrade", "head"]);
    let sql = db_ok(
        &db,
        &dir,
        &["downgrade", "base", "--sql", "--lock-timeout", "5s"],
    );
    assert!(
        sql.contains("DROP INDEX CONCURRENTLY IF EXISTS orders_customer_id_idx;"),
        "{sql}"
    );
    assert!(sql.contains("SET LOCAL lock_timeout = '5000ms';"), "{sql}");
    assert!(
        sql.contains(&format!(
            "DELETE FROM phased.migrations WHERE revision = '{INITIAL}'"
        )),
        "{sql}"
    );
    assert!(sql.trim_end().ends_with("DROP TABLE customers;\nDELETE FROM phased.migrations WHERE revision = '4f1c2a9b7e10';\nDELETE FROM phased.version_heads;\nCOMMIT;"), "{sql}");
    assert_eq!(
        current(&db, &dir),
        vec![format!("{MERGE} (head)")],
        "--sql runs nothing"
    );
}

#[tokio::test]
async fn sql_output_uses_the_sqlite_sections_on_sqlite() {
    let db = TestDb::sqlite();
    let dir = examples_dir();
    let sql = db_ok(&db, &dir, &["upgrade", "b7a2", "--sql"]);
    assert!(
        sql.contains("CREATE INDEX IF NOT EXISTS orders_customer_id_idx ON orders (customer_id);"),
        "{sql}"
    );
    assert!(!sql.contains("CONCURRENTLY"), "{sql}");
    assert!(
        sql.contains("BEGIN IMMEDIATE;\nINSERT INTO phased_migrations"),
        "{sql}"
    );
    assert!(!db.has_table("customers").await, "--sql runs nothing");
}

/// A folder with one table and then a second revision whose script fails half-way.
fn failing_history(transactional: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("1_base.sql"),
        "-- revision: aa01\n-- revises: none\n-- message: base\n-- migrate:up\nCREATE TABLE base_t (id bigint PRIMARY KEY);\n-- migrate:down\nDROP TABLE base_t;\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("2_half.sql"),
        format!(
            "-- revision: bb02\n-- revises: aa01\n-- message: half way\n-- transactional: {transactional}\n\
             -- migrate:up\nCREATE TABLE first_half (id bigint);\nINSERT INTO no_such_table VALUES (1);\n\
             -- migrate:down\nDROP TABLE IF EXISTS first_half;\n"
        ),
    )
    .unwrap();
    dir
}

async fn transactional_or_not(db: TestDb) {
    // Transactional: the failed script leaves nothing behind, and is not recorded.
    let folder = failing_history(true);
    let failed = db_cmd(&db, folder.path(), &["upgrade", "head"]);
    assert_eq!(failed.code, 1, "{}", failed.stderr);
    assert!(
        failed.stderr.contains("error: upgrade of bb02 failed"),
        "{}",
        failed.stderr
    );
    assert!(
        failed
            .stderr
            .contains("completed and recorded before it: upgrade aa01"),
        "{}",
        failed.stderr
    );
    assert_eq!(current(&db, folder.path()), vec!["aa01"]);
    assert!(db.has_table("base_t").await);
    assert!(
        !db.has_table("first_half").await,
        "rolled back with its transaction"
    );

    // Not transactional: statements before the failure stay, the revision is not recorded.
    let folder = failing_history(false);
    let failed = db_cmd(&db, folder.path(), &["upgrade", "head"]);
    assert_eq!(failed.code, 1, "{}", failed.stderr);
    assert!(
        failed.stderr.contains("(not in a transaction)"),
        "{}",
        failed.stderr
    );
    assert_eq!(current(&db, folder.path()), vec!["aa01"]);
    assert!(
        db.has_table("first_half").await,
        "ran outside a transaction: not rolled back"
    );
}

#[tokio::test]
async fn non_transactional_migrations_run_outside_a_transaction_on_sqlite() {
    transactional_or_not(TestDb::sqlite()).await;
}

#[tokio::test]
async fn non_transactional_migrations_run_outside_a_transaction_on_postgres() {
    transactional_or_not(TestDb::pg().await).await;
}

/// `phased db upgrade` looks before it queues (issue 16): while an application transaction holds
/// a lock the migration's SQL conflicts with (read from its parse), the migration is not
/// attempted; phased names the session, waits and tries again until the lock is free.
#[tokio::test]
async fn a_blocked_migration_waits_naming_the_blocker_until_the_lock_is_free_on_postgres() {
    let TestDb::Pg(pg) = TestDb::pg().await else {
        unreachable!()
    };
    let db = TestDb::Pg(pg);
    let dir = examples_dir();
    db_ok(&db, &dir, &["upgrade", INITIAL]);
    // An application transaction holds customers: adding orders (its foreign key) must wait.
    let TestDb::Pg(pg) = &db else { unreachable!() };
    let app = pg.client().await;
    app.batch_execute("BEGIN; LOCK TABLE customers IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let app_pid = crate::common::backend_pid(&app).await;
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("phased"))
        .env_remove("DATABASE_URL")
        .args(["db", "upgrade", ORDERS, "--lock-timeout", "100ms", "--dir"])
        .arg(&dir)
        .arg("--database")
        .arg(db.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn phased");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    // Hold the lock until phased reports a retry, then let it through.
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line.contains("retrying") {
            break;
        }
    }
    assert!(
        seen.iter()
            .any(|l| l.contains("attempt 1 failed (not attempted")
                && l.contains("`customers`")
                && l.contains("SHARE ROW EXCLUSIVE")),
        "{seen:#?}"
    );
    assert!(
        seen.iter()
            .any(|l| l.contains(&format!("blocked by pid {app_pid} ")) && l.contains("retrying")),
        "{seen:#?}"
    );
    assert!(
        !seen.iter().any(|l| l.contains("lock timeout")),
        "the migration queued for the lock instead of looking first: {seen:#?}"
    );
    app.batch_execute("COMMIT").await.unwrap();
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "{seen:#?}\n{rest:#?}");
    assert_eq!(current(&db, &dir), vec![ORDERS]);
}

async fn lease_is_exclusive(db: TestDb) {
    let dir = examples_dir();
    let key = phased::engine::migrations::lease_key(&dir);
    let mut holder = db.target("other").await;
    let held = phased::with_target!(&mut holder, t => { t.ensure_state().await.unwrap(); t.acquire_lease(&key).await.unwrap() });
    assert!(held.is_none(), "the test takes the lease first");
    let refused = db_cmd(&db, &dir, &["upgrade", "head"]);
    assert_eq!(refused.code, 4, "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("another runner is applying the migrations in db:"),
        "{}",
        refused.stderr
    );
    assert_eq!(current(&db, &dir), vec!["<base>"]);
    phased::with_target!(&mut holder, t => t.release_lease(&key).await.unwrap());
    db_ok(&db, &dir, &["upgrade", "head"]);
}

#[tokio::test]
async fn a_second_runner_is_refused_on_sqlite() {
    lease_is_exclusive(TestDb::sqlite()).await;
}

#[tokio::test]
async fn a_second_runner_is_refused_on_postgres() {
    lease_is_exclusive(TestDb::pg().await).await;
}

async fn plan_step(db: TestDb) {
    let loaded = phased::plan::load(&repo_root().join("tests/fixtures/plans/migrations.yaml"))
        .unwrap_or_else(|r| panic!("{}", r.render_plain()));
    let options = phased::engine::RunOptions {
        until: Some("schema".to_string()),
        ..Default::default()
    };
    crate::common::run(&db, &loaded, options)
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let dir = examples_dir();
    assert_eq!(current(&db, &dir), vec![ORDERS]);
    crate::common::run_ok(&db, &loaded).await;
    assert_eq!(current(&db, &dir), vec![format!("{MERGE} (head)")]);
    assert_eq!(
        Schema::of(&db).await,
        Schema::expected(&ancestors_inclusive(MERGE))
    );

    let mut target = db.target(loaded.plan.id()).await;
    let steps =
        phased::with_target!(&mut target, t => t.load_steps(loaded.plan.id()).await.unwrap());
    let checkpoint = |phase: &str| {
        steps
            .iter()
            .find(|s| s.phase == phase)
            .and_then(|s| s.checkpoint.clone())
    };
    assert_eq!(
        checkpoint("schema").as_deref(),
        Some("[]"),
        "started at base"
    );
    assert_eq!(
        checkpoint("data"),
        Some(format!("[\"{ORDERS}\"]")),
        "the data step started at add orders"
    );

    // Rolling the data step back returns to the revision recorded before it.
    let phased::plan::Step::Migrations(step) =
        &loaded.plan.phases.value[1].value.steps.value[0].value
    else {
        panic!("the data phase's step is a migrations step")
    };
    let timeouts = phased::db::Timeouts {
        lock_timeout: std::time::Duration::from_secs(2),
        statement_timeout: std::time::Duration::ZERO,
        index_wait: std::time::Duration::ZERO,
    };
    let data = checkpoint("data");
    phased::with_target!(&mut target, t => phased::engine::migrations::rollback_step(
        t, &loaded.base_dir, step, data.as_deref(), timeouts, None).await.unwrap());
    assert_eq!(current(&db, &dir), vec![ORDERS]);
    assert_eq!(
        Schema::of(&db).await,
        Schema::expected(&ancestors_inclusive(ORDERS))
    );
}

#[tokio::test]
async fn plan_step_applies_migrations_and_rolls_back_to_the_recorded_revision_on_sqlite() {
    plan_step(TestDb::sqlite()).await;
}

#[tokio::test]
async fn plan_step_applies_migrations_and_rolls_back_to_the_recorded_revision_on_postgres() {
    plan_step(TestDb::pg().await).await;
}

#[tokio::test]
async fn plan_step_refuses_on_drift_without_running() {
    let db = TestDb::sqlite();
    let folder = copy_examples(&[]);
    let yaml = format!(
        "plan: drift\nphases:\n  - name: m\n    kind: migrate\n    steps:\n      - migrations: {{ dir: {}, to: head }}\n",
        folder.path().display()
    );
    db_ok(&db, folder.path(), &["upgrade", INITIAL]);
    let initial = std::fs::read_dir(folder.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains(INITIAL))
        .unwrap();
    let text = std::fs::read_to_string(&initial).unwrap();
    std::fs::write(&initial, text.replace("name text", "full_name text")).unwrap();
    let loaded = crate::common::plan(&yaml);
    let (err, _) = crate::common::run(&db, &loaded, Default::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("revision {INITIAL} was applied, but")),
        "{err}"
    );
    assert!(!db.has_table("orders").await);
}

#[tokio::test]
async fn new_starts_a_history_then_revises_its_head() {
    let db = TestDb::sqlite();
    let folder = tempfile::tempdir().unwrap();
    let dir = folder.path().join("migrations");
    let first = db_ok(&db, &dir, &["new", "-m", "create widgets"]);
    assert!(first.contains("revises <base>"), "{first}");
    let first_rev = first.split("(revision ").nth(1).unwrap()[..12].to_string();
    let second = db_ok(&db, &dir, &["new", "-m", "add widget colour"]);
    assert!(
        second.contains(&format!("revises {first_rev})")),
        "{second}"
    );
    let history = db_ok(&db, &dir, &["history"]);
    assert_eq!(history.lines().count(), 2, "{history}");
    assert!(
        history.ends_with(&format!("<base> -> {first_rev}, create widgets\n")),
        "{history}"
    );
    // Empty templates apply and undo cleanly.
    assert!(db_ok(&db, &dir, &["upgrade"]).ends_with("(head)\n"));
    assert_eq!(db_ok(&db, &dir, &["downgrade", "base"]), "<base>\n");
}

#[tokio::test]
async fn json_output_for_machines() {
    let db = TestDb::sqlite();
    let dir = examples_dir();
    let out = phased_cmd()
        .args(["--format", "json", "db", "upgrade", "8d3e", "--dir"])
        .arg(&dir)
        .arg("--database")
        .arg(db.url())
        .output()
        .unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert_eq!(lines[0]["event"], "migration");
    assert_eq!(lines[0]["revision"], INITIAL);
    assert_eq!(
        lines[2],
        serde_json::json!({"event": "done", "heads": [ORDERS]})
    );
}

#[tokio::test]
async fn malformed_files_and_unknown_revisions_are_usage_errors() {
    let db = TestDb::sqlite();
    let folder = copy_examples(&[]);
    let dir = folder.path();
    let unknown = db_cmd(&db, dir, &["upgrade", "zz99"]);
    assert_eq!(unknown.code, 2);
    assert_eq!(
        unknown.stderr,
        "error: no revision matches `zz99`; `phased db history` lists them\n"
    );
    std::fs::write(
        dir.join("bad.sql"),
        "-- revision: bad1\n-- revises: none\n-- transactionl: false\n-- migrate:up\n",
    )
    .unwrap();
    let bad = db_cmd(&db, dir, &["upgrade"]);
    assert_eq!(bad.code, 2);
    assert!(
        bad.stderr
            .contains("bad.sql:3: unknown header key `transactionl`"),
        "{}",
        bad.stderr
    );
    assert_eq!(current(&db, &examples_dir()), vec!["<base>"]);
}

async fn plan_step_waits_for_no_one(db: TestDb) {
    let loaded = phased::plan::load(&repo_root().join("tests/fixtures/plans/migrations.yaml"))
        .unwrap_or_else(|r| panic!("{}", r.render_plain()));
    // `phased db …` on the same folder (keyed by its name) holds the lease.
    let key = phased::engine::migrations::lease_key(Path::new("migrations"));
    let mut holder = db.target("other").await;
    phased::with_target!(&mut holder, t => t.ensure_state().await.unwrap());
    if db.is_pg() {
        phased::with_target!(&mut holder, t => assert!(t.acquire_lease(&key).await.unwrap().is_none()));
    } else {
        // On SQLite the lease is a row naming a live process: pid 1 on this host stands in for
        // the other runner (this test's own pid would count as a stale lease of ours).
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        db.execute(&format!(
            "INSERT INTO phased_lease (plan, pid, host) VALUES ('{key}', 1, '{}')",
            host.trim()
        ))
        .await;
    }
    let (err, _) = crate::common::run(&db, &loaded, Default::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("another runner is applying the migrations in db:migrations"),
        "{err}"
    );
    assert!(!db.has_table("customers").await);
    if db.is_pg() {
        phased::with_target!(&mut holder, t => t.release_lease(&key).await.unwrap());
    } else {
        db.execute("DELETE FROM phased_lease WHERE pid = 1").await;
    }
    crate::common::run_ok(&db, &loaded).await;
    assert!(db.has_table("orders").await);
}

#[tokio::test]
async fn plan_step_is_refused_while_db_commands_hold_the_folder_on_sqlite() {
    plan_step_waits_for_no_one(TestDb::sqlite()).await;
}

#[tokio::test]
async fn plan_step_is_refused_while_db_commands_hold_the_folder_on_postgres() {
    plan_step_waits_for_no_one(TestDb::pg().await).await;
}

#[test]
fn validate_checks_the_migrations_folder_and_target() {
    let folder = copy_examples(&[MERGE]);
    let plan_dir = tempfile::tempdir().unwrap();
    let plan = plan_dir.path().join("plan.yaml");
    std::fs::write(
        &plan,
        format!(
            "plan: m\nphases:\n  - name: m\n    kind: migrate\n    steps:\n      - migrations: {{ dir: {}, to: head }}\n",
            folder.path().display()
        ),
    )
    .unwrap();
    let out = phased_cmd().arg("validate").arg(&plan).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("plan.yaml:6:9: error: migrations `to: head`: there are several heads"),
        "{stderr}"
    );
    phased_cmd()
        .arg("validate")
        .arg(repo_root().join("tests/fixtures/plans/migrations.yaml"))
        .assert()
        .success();
}

/// A database at a revision no file declares: `db current` says so and exits 1 with the fix,
/// instead of printing the folder's heads; the drift refusal gives the advice for a deleted
/// file, not for an edited one.
async fn a_revision_the_folder_does_not_know(db: TestDb) {
    let full = copy_examples(&[]);
    db_ok(&db, full.path(), &["upgrade", "head"]);
    let without_merge = copy_examples(&[MERGE]);
    let current = db_cmd(&db, without_merge.path(), &["current"]);
    assert_eq!(current.code, 1, "{}", current.stderr);
    assert!(current.stdout.is_empty(), "{}", current.stdout);
    assert!(
        current
            .stderr
            .contains(&format!("the database is at revision {MERGE}"))
            && current.stderr.contains("phased db stamp"),
        "{}",
        current.stderr
    );
    let upgrade = db_cmd(&db, without_merge.path(), &["upgrade", "head"]);
    assert_eq!(upgrade.code, 1, "{}", upgrade.stderr);
    assert!(
        upgrade
            .stderr
            .contains(&format!("put the file of {MERGE} back")),
        "{}",
        upgrade.stderr
    );
    assert!(!upgrade.stderr.contains("edit"), "{}", upgrade.stderr);
}

#[tokio::test]
async fn a_revision_the_folder_does_not_know_on_sqlite() {
    a_revision_the_folder_does_not_know(TestDb::sqlite()).await;
}

#[tokio::test]
async fn a_revision_the_folder_does_not_know_on_postgres() {
    a_revision_the_folder_does_not_know(TestDb::pg().await).await;
}

/// After undoing the merge there are two heads: `downgrade -1` cannot choose, and
/// `downgrade REV@-1` undoes one branch (Alembic's branch-relative form); `upgrade REV@+1`
/// applies it again.
#[tokio::test]
async fn one_branch_of_a_merge_is_undone_with_rev_at_minus_1() {
    let db = TestDb::sqlite();
    let dir = copy_examples(&[]);
    db_ok(&db, dir.path(), &["upgrade", "head"]);
    db_ok(&db, dir.path(), &["downgrade", "-1"]);
    let ambiguous = db_cmd(&db, dir.path(), &["downgrade", "-1"]);
    assert_eq!(ambiguous.code, 2, "{}", ambiguous.stderr);
    db_ok(&db, dir.path(), &["downgrade", &format!("{EMAILS}@-1")]);
    let heads = current(&db, dir.path());
    assert!(
        heads.iter().any(|h| h.starts_with(ORDERS_INDEX))
            && !heads.iter().any(|h| h.starts_with(EMAILS)),
        "{heads:?}"
    );
    db_ok(&db, dir.path(), &["upgrade", &format!("{ORDERS}@+1")]);
    let after = current(&db, dir.path());
    assert_eq!(after.len(), 2, "{after:?}");
}
