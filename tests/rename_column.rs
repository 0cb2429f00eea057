//! `rename_column` written once: the old application (by `email`) and the new one (by
//! `email_address`) write and read each other's rows through every phase from expand to
//! contract, every row agrees under both names before contract, rollback from each phase before
//! contract gives back the original schema with every row either application wrote, a re-run
//! does nothing, and `phased plan` shows the parts under their phases. Both targets.

use phased::engine::events::{Event, Recorder};
use phased::engine::rollback::{rollback, RollbackOptions};
use phased::engine::RunOptions;
use phased::plan::LoadedPlan;

use crate::common::two_apps::{phase_under_writers, App, Writer};
use crate::common::{self, on_both, TestDb};

const PLAN: &str = "plan: rename-email
backup: { before: [] }
phases:
  - name: expand
    kind: expand
    steps:
      - rename_column: { table: users, from: email, to: email_address }
  - name: migrate
    kind: migrate
    steps: []
  - name: contract
    kind: contract
    steps: []
";

/// `email` is NOT NULL with a default, UNIQUE, under a CHECK and an index of its own: each must
/// hold for the new application's writes during the transition and be on `email_address` after.
/// (SQLite refuses a UNIQUE column with a default, see
/// `sqlite_refuses_what_its_triggers_cannot_keep`: there the unique key is left out.)
async fn seed(db: &TestDb) {
    let unique = if db.is_pg() {
        ",\n           CONSTRAINT users_email_key UNIQUE (email)"
    } else {
        ""
    };
    db.execute(&format!(
        "CREATE TABLE users (
           id integer PRIMARY KEY,
           email text NOT NULL DEFAULT 'unknown' CONSTRAINT users_email_check CHECK (email <> ''),
           tier text{unique});
         CREATE INDEX users_email_lower_idx ON users (lower(email));
         INSERT INTO users (id, email, tier) VALUES (1, 'ann@x', 'free'), (2, 'bob@x', 'pro'), (3, 'cy@x', NULL);",
    ))
    .await;
}

async fn snapshot(db: &TestDb) -> Vec<String> {
    let mut target = db.target("rename-email").await;
    phased::with_target!(&mut target, t => t.schema_snapshot().await).expect("schema snapshot")
}

async fn run_phase(db: &TestDb, loaded: &LoadedPlan, phase: &str) -> Vec<Event> {
    let options = RunOptions {
        phase: Some(phase.to_string()),
        ..RunOptions::default()
    };
    match common::run(db, loaded, options).await {
        Ok(events) => events,
        Err((e, _)) => panic!("run --phase {phase}: {e}"),
    }
}

async fn roll_back(db: &TestDb, loaded: &LoadedPlan) {
    let mut target = db.target(loaded.plan.id()).await;
    let mut recorder = Recorder::default();
    let options = RollbackOptions::default();
    if let Err(e) =
        phased::with_target!(&mut target, t => rollback(t, loaded, &options, &mut recorder).await)
    {
        panic!("rollback: {e}");
    }
}

/// Rows a session wrote, by id, with the email it must end with.
type Written = Vec<(i64, String)>;

/// One round of the two applications, interleaved: each inserts a row by its own name, updates
/// the other's row by its own name, and reads the other's write back by its own name.
async fn both_apps(db: &TestDb, round: i64, written: &mut Written) {
    let (old_id, new_id) = (round * 10 + 1, round * 10 + 2);
    // The old application inserts by `email`, the new one by `email_address`.
    db.execute(&format!(
        "INSERT INTO users (id, email, tier) VALUES ({old_id}, 'old{round}@x', 'free')"
    ))
    .await;
    db.execute(&format!(
        "INSERT INTO users (id, email_address, tier) VALUES ({new_id}, 'new{round}@x', 'pro')"
    ))
    .await;
    // Each reads the other's row by its own name.
    assert_eq!(
        db.text(&format!("SELECT email FROM users WHERE id = {new_id}"))
            .await
            .as_deref(),
        Some(format!("new{round}@x").as_str()),
        "the old application reads the new one's insert"
    );
    assert_eq!(
        db.text(&format!(
            "SELECT email_address FROM users WHERE id = {old_id}"
        ))
        .await
        .as_deref(),
        Some(format!("old{round}@x").as_str()),
        "the new application reads the old one's insert"
    );
    // Each updates the other's row by its own name; the other reads it back.
    db.execute(&format!(
        "UPDATE users SET email = 'old-wrote{round}@x' WHERE id = {new_id}"
    ))
    .await;
    db.execute(&format!(
        "UPDATE users SET email_address = 'new-wrote{round}@x' WHERE id = {old_id}"
    ))
    .await;
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM users WHERE email_address = 'old-wrote{round}@x' AND id = {new_id}"
        ))
        .await,
        1,
        "the new application finds the old one's update by its own name"
    );
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM users WHERE email = 'new-wrote{round}@x' AND id = {old_id}"
        ))
        .await,
        1,
        "the old application finds the new one's update by its own name"
    );
    // An update of another column leaves both names as they were.
    db.execute(&format!(
        "UPDATE users SET tier = 'gold' WHERE id IN ({old_id}, {new_id})"
    ))
    .await;
    written.push((old_id, format!("new-wrote{round}@x")));
    written.push((new_id, format!("old-wrote{round}@x")));
}

/// The database's own error, for a statement that must fail.
async fn fails(db: &TestDb, sql: &str) -> String {
    match db {
        TestDb::Pg(pg) => match pg.client().await.batch_execute(sql).await {
            Ok(()) => panic!("{sql} succeeded"),
            Err(e) => format!("{e:?}"),
        },
        TestDb::Sqlite(lite) => match lite.conn().execute_batch(sql) {
            Ok(()) => panic!("{sql} succeeded"),
            Err(e) => e.to_string(),
        },
    }
}

/// The new application's writes are held to `email`'s constraints during the transition.
async fn new_app_is_held_to_the_constraints(db: &TestDb) {
    if db.is_pg() {
        let unique = fails(
            db,
            "INSERT INTO users (id, email_address) VALUES (900, 'ann@x')",
        )
        .await;
        assert!(unique.to_lowercase().contains("unique"), "{unique}");
    }
    let check = fails(db, "UPDATE users SET email_address = '' WHERE id = 1").await;
    assert!(check.to_lowercase().contains("check"), "{check}");
}

/// Every row agrees under both names (`IS NOT` is SQLite's IS DISTINCT FROM; PostgreSQL has
/// both).
async fn every_row_agrees(db: &TestDb) {
    let differ = if db.is_pg() {
        "SELECT count(*) FROM users WHERE email IS DISTINCT FROM email_address"
    } else {
        "SELECT count(*) FROM users WHERE email IS NOT email_address"
    };
    assert_eq!(
        db.scalar(differ).await,
        0,
        "a row differs under its two names"
    );
}

async fn holds(db: &TestDb, column: &str, written: &Written) {
    for (id, email) in written {
        assert_eq!(
            db.text(&format!("SELECT {column} FROM users WHERE id = {id}"))
                .await
                .as_deref(),
            Some(email.as_str()),
            "row {id} by {column}"
        );
    }
    let seeded = db
        .scalar(&format!(
            "SELECT count(*) FROM users WHERE id IN (1, 2, 3) AND {column} IN ('ann@x', 'bob@x', 'cy@x')"
        ))
        .await;
    assert_eq!(seeded, 3, "the rows from before the plan, by {column}");
}

async fn through_every_phase(db: TestDb) {
    seed(&db).await;
    let before = snapshot(&db).await;
    let loaded = common::plan(PLAN);
    let mut written = Written::new();

    run_phase(&db, &loaded, "expand").await;
    assert!(db.has_column("users", "email_address").await);
    both_apps(&db, 1, &mut written).await;
    new_app_is_held_to_the_constraints(&db).await;
    // The default trap: the new application leaves out its name, the default arrives under
    // both; the old application's default-filled insert too.
    db.execute("INSERT INTO users (id, tier) VALUES (100, 'free')")
        .await;
    assert_eq!(
        db.text("SELECT email_address FROM users WHERE id = 100")
            .await
            .as_deref(),
        Some("unknown")
    );
    written.push((100, "unknown".into()));

    run_phase(&db, &loaded, "migrate").await;
    both_apps(&db, 2, &mut written).await;
    every_row_agrees(&db).await;
    holds(&db, "email", &written).await;
    holds(&db, "email_address", &written).await;

    run_phase(&db, &loaded, "contract").await;
    assert!(!db.has_column("users", "email").await);
    // Only the new application's statements from here on.
    db.execute("INSERT INTO users (id, email_address) VALUES (200, 'after@x')")
        .await;
    db.execute("UPDATE users SET email_address = 'after2@x' WHERE id = 200")
        .await;
    written.push((200, "after2@x".into()));
    holds(&db, "email_address", &written).await;
    new_app_is_held_to_the_constraints(&db).await;
    // Everything `email` had is on `email_address`, by its original name.
    let after = snapshot(&db).await;
    let renamed: Vec<String> = before
        .iter()
        .map(|l| {
            phased::ops::facts::replace_identifier(
                &l.replace(".email ", ".email_address "),
                "email",
                "email_address",
            )
        })
        .collect();
    let unquote = |lines: &[String]| -> Vec<String> {
        let mut v: Vec<String> = lines.iter().map(|l| l.replace('"', "")).collect();
        v.sort();
        v
    };
    assert_eq!(unquote(&after), unquote(&renamed));
    // The default still works, under the new name (row 100 gives its value back first: the
    // key is UNIQUE on PostgreSQL).
    db.execute("DELETE FROM users WHERE id = 100; INSERT INTO users (id) VALUES (300)")
        .await;
    assert_eq!(
        db.text("SELECT email_address FROM users WHERE id = 300")
            .await
            .as_deref(),
        Some("unknown")
    );

    // A re-run does nothing.
    let events = common::run_ok(&db, &loaded).await;
    assert!(
        !events.iter().any(|e| matches!(e, Event::StepStart { .. })),
        "{events:?}"
    );
    assert_eq!(snapshot(&db).await, after);
}
on_both!(through_every_phase);

async fn rollback_after(db: &TestDb, last: &str) {
    seed(db).await;
    let before = snapshot(db).await;
    let loaded = common::plan(PLAN);
    let mut written = Written::new();
    run_phase(db, &loaded, "expand").await;
    both_apps(db, 1, &mut written).await;
    if last == "migrate" {
        run_phase(db, &loaded, "migrate").await;
        both_apps(db, 2, &mut written).await;
        every_row_agrees(db).await;
    }
    roll_back(db, &loaded).await;
    assert_eq!(snapshot(db).await, before, "the original schema, exactly");
    holds(db, "email", &written).await;
    assert_eq!(
        db.scalar("SELECT count(*) FROM users").await,
        3 + written.len() as i64
    );
    // The old application works as before, its default and constraints too.
    db.execute("INSERT INTO users (id) VALUES (500)").await;
    assert_eq!(
        db.text("SELECT email FROM users WHERE id = 500")
            .await
            .as_deref(),
        Some("unknown")
    );
    let check = fails(db, "INSERT INTO users (id, email) VALUES (501, '')").await;
    assert!(check.to_lowercase().contains("check"), "{check}");
    // And the plan runs again from the start.
    common::run_ok(db, &loaded).await;
    assert!(!db.has_column("users", "email").await);
    holds(db, "email_address", &written).await;
}

async fn rollback_after_expand(db: TestDb) {
    rollback_after(&db, "expand").await;
}
on_both!(rollback_after_expand);

async fn rollback_after_migrate(db: TestDb) {
    rollback_after(&db, "migrate").await;
}
on_both!(rollback_after_migrate);

/// Rows written while the backfill has not run yet are backfilled like the others; an old
/// application's write of NULL into a nullable column stays NULL under both names.
async fn nullable_column_without_default(db: TestDb) {
    db.execute(
        "CREATE TABLE notes (id integer PRIMARY KEY, body text);
         INSERT INTO notes (id, body) VALUES (1, 'a'), (2, NULL);",
    )
    .await;
    let loaded = common::plan(&PLAN.replace(
        "{ table: users, from: email, to: email_address }",
        "{ table: notes, from: body, to: text }",
    ));
    run_phase(&db, &loaded, "expand").await;
    db.execute("INSERT INTO notes (id) VALUES (3)").await;
    db.execute("INSERT INTO notes (id, text) VALUES (4, 'new')")
        .await;
    db.execute("UPDATE notes SET body = NULL WHERE id = 4")
        .await;
    assert_eq!(
        db.scalar("SELECT count(*) FROM notes WHERE id = 4 AND text IS NULL")
            .await,
        1
    );
    run_phase(&db, &loaded, "migrate").await;
    assert_eq!(
        db.text("SELECT text FROM notes WHERE id = 1")
            .await
            .as_deref(),
        Some("a")
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM notes WHERE text IS NULL")
            .await,
        3
    );
    run_phase(&db, &loaded, "contract").await;
    assert!(!db.has_column("notes", "body").await);
    assert_eq!(db.scalar("SELECT count(*) FROM notes").await, 4);
}
on_both!(nullable_column_without_default);

/// SQLite checks NOT NULL and UNIQUE before its AFTER triggers run: a NOT NULL column without
/// a default, and a UNIQUE one with a default, are refused with the reason before the table is
/// changed.
#[tokio::test]
async fn sqlite_refuses_what_its_triggers_cannot_keep() {
    for (table, why) in [
        (
            "CREATE TABLE users (id integer PRIMARY KEY, email text NOT NULL)",
            "checks NOT NULL before triggers run",
        ),
        (
            "CREATE TABLE users (id integer PRIMARY KEY, email text DEFAULT 'x' UNIQUE)",
            "is UNIQUE with a default",
        ),
    ] {
        let db = TestDb::sqlite();
        db.execute(table).await;
        let before = snapshot(&db).await;
        let loaded = common::plan(PLAN);
        let err = match common::run(&db, &loaded, RunOptions::default()).await {
            Ok(_) => panic!("ran"),
            Err((e, _)) => e.to_string(),
        };
        assert!(err.contains(why), "{err}");
        assert_eq!(snapshot(&db).await, before);
    }
}

/// `phased plan` prints each part under the phase where it runs, with its SQL.
async fn plan_shows_the_parts_under_their_phases(db: TestDb) {
    seed(&db).await;
    let dir = common::scratch_dir();
    let path = dir.join("rename.yaml");
    std::fs::write(&path, PLAN).expect("write the plan");
    let output = common::phased_cmd()
        .args(["plan", "--database", &db.url()])
        .arg(&path)
        .output()
        .expect("phased plan");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let at = |needle: &str| {
        stdout
            .find(needle)
            .unwrap_or_else(|| panic!("`{needle}` not in:\n{stdout}"))
    };
    let (expand, migrate, contract) = (at("expand"), at("migrate"), at("contract"));
    let add = at("ADD COLUMN \"email_address\"");
    let backfill = at("backfill users");
    let rename = at("RENAME COLUMN \"email\" TO \"email_address\"");
    assert!(expand < add && add < migrate, "{stdout}");
    assert!(migrate < backfill && backfill < contract, "{stdout}");
    assert!(contract < rename, "{stdout}");
    // A dry run changes nothing.
    assert!(!db.has_column("users", "email_address").await);
}
on_both!(plan_shows_the_parts_under_their_phases);

/// `phased verify` rehearses expand and migrate on a scratch database and rolls them back.
async fn verify_passes(db: TestDb) {
    seed(&db).await;
    let dir = common::scratch_dir();
    let path = dir.join("rename.yaml");
    std::fs::write(&path, PLAN).expect("write the plan");
    let output = common::phased_cmd()
        .args(["verify", "--database", &db.url()])
        .arg(&path)
        .output()
        .expect("phased verify");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.starts_with("verify passed"), "{stdout}");
}
on_both!(verify_passes);

/// The two applications write concurrently while the phases run: the old one through expand and
/// migrate, the new one from migrate on (its column exists once expand is done), each inserting
/// by its own name and updating the other's rows by its own name. No statement fails, and before
/// contract every row agrees under both names.
async fn writers_while_phases_run(db: TestDb) {
    seed(&db).await;
    let loaded = common::plan(PLAN);
    const OLD: &[&str] = &[
        "INSERT INTO users (id, email, tier) VALUES (1000000 + {i}, 'o{i}@x', 'free')",
        "UPDATE users SET email = 'o-wrote{i}@x' WHERE id = 2000000 + {i}",
        "UPDATE users SET tier = 'gold' WHERE id = 1000000 + {i}",
    ];
    const NEW: &[&str] = &[
        "INSERT INTO users (id, email_address, tier) VALUES (2000000 + {i}, 'n{i}@x', 'pro')",
        "UPDATE users SET email_address = 'n-wrote{i}@x' WHERE id = 1000000 + {i}",
    ];
    let old = Writer::start(&db, "old app", 0, OLD).await;
    let expand = phase_under_writers(&db, &loaded, "expand", vec![old]).await;
    let old = Writer::start(&db, "old app", 100_000, OLD).await;
    let new = Writer::start(&db, "new app", 100_000, NEW).await;
    let migrate = phase_under_writers(&db, &loaded, "migrate", vec![old, new]).await;
    every_row_agrees(&db).await;
    let rows = db.scalar("SELECT count(*) FROM users").await;
    assert_eq!(
        rows as u64,
        3 + expand[0] + migrate[0] + migrate[1],
        "every insert of either application is there"
    );
    // Each application reads the other's last writes by its own name.
    let old_app = App::open(&db, "old app").await;
    let new_app = App::open(&db, "new app").await;
    let both = old_app
        .value("SELECT count(*) FROM users WHERE email LIKE 'n%'")
        .await;
    let same = new_app
        .value("SELECT count(*) FROM users WHERE email_address LIKE 'n%'")
        .await;
    assert_eq!(both, same);
    assert!(both.is_some_and(|n| n != "0"));
    let new = Writer::start(&db, "new app", 500_000, NEW).await;
    let contract = phase_under_writers(&db, &loaded, "contract", vec![new]).await;
    assert_eq!(
        db.scalar("SELECT count(*) FROM users").await as u64,
        rows as u64 + contract[0]
    );
    assert!(!db.has_column("users", "email").await);
}
on_both!(writers_while_phases_run);

/// `validate` takes the operation's backfill for what it is, a fill of the column the operation
/// adds (which rollback drops): no warning that rollback cannot undo it; and `validate --dialect
/// sqlite` accepts it (SQLite's refusals depend on the column, read when the step runs).
#[test]
fn validate_has_no_warning_for_the_backfill_of_the_new_name() {
    let dir = common::scratch_dir();
    let path = dir.join("rename.yaml");
    std::fs::write(&path, PLAN).expect("write the plan");
    let output = common::phased_cmd()
        .args(["validate", "--dialect", "sqlite"])
        .arg(&path)
        .output()
        .expect("phased validate");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(0), "{all}");
    assert!(!all.contains("warning"), "{all}");
}

/// PostgreSQL: the index copies are built concurrently and valid after expand, so the new
/// application's `ON CONFLICT (email_address)` finds its unique index; a foreign key of another
/// table that points at the column holds for the new application's rows during the transition
/// and points at `email_address` after contract, by its name.
#[tokio::test]
async fn postgres_index_copies_and_foreign_keys_pointing_at_the_column() {
    let db = TestDb::pg().await;
    seed(&db).await;
    db.execute(
        "CREATE TABLE orders (id integer PRIMARY KEY, buyer text CONSTRAINT orders_buyer_fkey REFERENCES users (email));
         INSERT INTO orders VALUES (1, 'ann@x');",
    )
    .await;
    let loaded = common::plan(PLAN);
    run_phase(&db, &loaded, "expand").await;
    for copy in ["users_email_address_key", "users_email_address_lower_idx"] {
        assert_eq!(
            db.scalar(&format!(
                "SELECT count(*) FROM pg_index WHERE indexrelid = '{copy}'::regclass AND indisvalid"
            ))
            .await,
            1,
            "{copy} is a valid index"
        );
    }
    let new_app = App::open(&db, "new app").await;
    new_app
        .exec("INSERT INTO users (id, email_address) VALUES (7, 'dee@x') ON CONFLICT (email_address) DO NOTHING")
        .await;
    new_app
        .exec("INSERT INTO users (id, email_address) VALUES (8, 'dee@x') ON CONFLICT (email_address) DO UPDATE SET tier = 'pro'")
        .await;
    new_app.exec("INSERT INTO orders VALUES (2, 'dee@x')").await;
    let fk = fails(&db, "INSERT INTO orders VALUES (3, 'nobody@x')").await;
    assert!(fk.contains("foreign key"), "{fk}");
    run_phase(&db, &loaded, "migrate").await;
    run_phase(&db, &loaded, "contract").await;
    assert_eq!(
        db.text("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'orders_buyer_fkey'")
            .await
            .as_deref(),
        Some("FOREIGN KEY (buyer) REFERENCES users(email_address)")
    );
    assert_eq!(
        db.text("SELECT tier FROM users WHERE email_address = 'dee@x'")
            .await
            .as_deref(),
        Some("pro")
    );
    assert!(
        !db.has_index("users_email_address_key").await,
        "the copies went with the copy"
    );
}
