//! The binary end to end: validate, run, status --format json, exit codes.

use predicates::prelude::*;

use crate::common::{phased_cmd, repo_root, PgDb, SqliteDb};

#[test]
fn validate_accepts_the_example_plans() {
    let mut cmd = phased_cmd();
    cmd.arg("validate");
    for entry in std::fs::read_dir(repo_root().join("plans")).expect("plans/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            cmd.arg(path);
        }
    }
    cmd.assert()
        .success()
        .stdout(predicate::str::contains("quickstart.yaml: ok"));
}

#[test]
fn validate_rejects_a_bad_plan_with_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "plan: bad\nphases:\n  - name: e\n    kind: expand\n    steps:\n      - drop_table: { name: t }\n",
    )
    .expect("write");
    phased_cmd()
        .arg("validate")
        .arg(&path)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "bad.yaml:6:9: error: `drop_table` is destructive",
        ))
        .stdout(predicate::str::contains("invalid — 1 error(s)"));
}

#[test]
fn usage_error_exits_2() {
    phased_cmd().arg("run").assert().code(2);
    phased_cmd().args(["frobnicate"]).assert().code(2);
}

fn quickstart() -> std::path::PathBuf {
    repo_root().join("plans/quickstart.yaml")
}

/// A copy of the quickstart in `dir`, so its backups land there and not in the repository.
fn quickstart_in(dir: &std::path::Path) -> std::path::PathBuf {
    let copy = dir.join("quickstart.yaml");
    std::fs::copy(quickstart(), &copy).expect("copy the quickstart plan");
    copy
}

#[test]
fn quickstart_runs_on_the_default_sqlite_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    phased_cmd()
        .current_dir(dir.path())
        .arg("run")
        .arg(quickstart_in(dir.path()))
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "✓ contract#2 drop_column accounts.email",
        ));
    let db = dir.path().join("phased.db");
    assert!(db.exists(), "the default database is sqlite://phased.db");
    let conn = rusqlite::Connection::open(&db).expect("open");
    let (rows, filled): (i64, i64) = conn
        .query_row(
            "SELECT count(*), count(email_lower) FROM accounts",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("query");
    assert_eq!((rows, filled), (5000, 5000));
    let old: i64 = conn
        .query_row(
            "SELECT count(*) FROM pragma_table_info('accounts') WHERE name = 'email'",
            [],
            |r| r.get(0),
        )
        .expect("query");
    assert_eq!(old, 0, "the old column is gone");
    let sample: String = conn
        .query_row("SELECT email_lower FROM accounts WHERE id = 42", [], |r| {
            r.get(0)
        })
        .expect("query");
    assert_eq!(sample, "user42@example.com");

    // A second run is a no-op.
    phased_cmd()
        .current_dir(dir.path())
        .arg("run")
        .arg(quickstart_in(dir.path()))
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "phase contract: skipped, already done",
        ));

    // status --format json: valid JSON, every step done.
    let out = phased_cmd()
        .current_dir(dir.path())
        .args(["status", "--format", "json"])
        .arg(quickstart_in(dir.path()))
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let status: serde_json::Value = serde_json::from_slice(&out).expect("status is JSON");
    let steps: Vec<&serde_json::Value> = status["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .flat_map(|p| p["steps"].as_array().expect("steps"))
        .collect();
    assert_eq!(steps.len(), 9);
    assert!(steps.iter().all(|s| s["status"] == "done"), "{status:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_runs_on_postgres() {
    let db = PgDb::new().await;
    let dir = tempfile::tempdir().expect("tempdir");
    phased_cmd()
        .current_dir(dir.path())
        .args(["run", "--database", &db.url])
        .arg(quickstart_in(dir.path()))
        .assert()
        .success();
    let client = db.client().await;
    let row = client
        .query_one(
            "SELECT count(*), count(email_lower), count(*) FILTER (WHERE email_lower = 'user42@example.com') FROM accounts",
            &[],
        )
        .await
        .expect("query");
    assert_eq!(
        (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2)
        ),
        (5000, 5000, 1)
    );
    let old: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'accounts' AND column_name = 'email'",
            &[],
        )
        .await
        .expect("query")
        .get(0);
    assert_eq!(old, 0);
    // DATABASE_URL works as well as --database, and the second run is a no-op.
    phased_cmd()
        .current_dir(dir.path())
        .env("DATABASE_URL", &db.url)
        .arg("run")
        .arg(quickstart_in(dir.path()))
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "phase setup: skipped, already done",
        ));
}

/// A mistyped SQLite path: every command that needs an existing database says so (exit 1) and
/// creates nothing; `run` and `db upgrade` create the file, as a first deploy needs.
#[test]
fn commands_other_than_run_and_upgrade_do_not_create_a_missing_sqlite_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = quickstart_in(dir.path());
    let plan = plan.to_str().expect("utf-8 path");
    let migrations = dir.path().join("migrations");
    std::fs::create_dir(&migrations).expect("migrations folder");
    let missing = dir.path().join("typo.db");
    let url = format!("sqlite://{}", missing.display());
    let db = ["--dir", migrations.to_str().expect("utf-8 path")];
    let commands: Vec<Vec<&str>> = vec![
        vec!["status", plan],
        vec!["gate", plan, "--phase", "contract"],
        vec!["backups", plan],
        vec!["rollback", plan, "--yes"],
        vec!["flags"],
        vec!["flags", "set", "read_email_lower", "true"],
        [&["db", "current"][..], &db].concat(),
        [&["db", "downgrade"][..], &db].concat(),
        [&["db", "stamp", "base"][..], &db].concat(),
    ];
    for args in commands {
        let out = phased_cmd()
            .args(&args)
            .args(["--database", &url])
            .output()
            .expect("run phased");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("cannot connect to {url}: no such database file")),
            "{args:?}: {stderr}"
        );
        assert!(!missing.exists(), "{args:?} created {}", missing.display());
    }
    // --sql prints the script from base for a database that does not exist yet.
    phased_cmd()
        .args(["db", "upgrade", "--sql"])
        .args(db)
        .args(["--database", &url])
        .assert()
        .success();
    assert!(!missing.exists(), "db upgrade --sql created the file");
    phased_cmd()
        .args(["db", "upgrade"])
        .args(db)
        .args(["--database", &url])
        .assert()
        .success();
    assert!(missing.exists(), "db upgrade starts a new database");
    std::fs::remove_file(&missing).expect("remove");
    phased_cmd()
        .args(["run", plan, "--phase", "setup", "--database", &url])
        .assert()
        .success();
    assert!(missing.exists(), "run starts a new database");
}

#[test]
fn a_failing_step_exits_1_and_a_fixed_rerun_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = SqliteDb::new();
    let path = dir.path().join("p.yaml");
    let write = |sql: &str| {
        std::fs::write(
            &path,
            format!("plan: p\nphases:\n  - name: e\n    kind: expand\n    steps:\n      - create_table: {{ name: t, columns: [ {{ name: id, type: integer, primary_key: true }} ] }}\n      - sql: \"{sql}\"\n"),
        )
        .expect("write")
    };
    write("INSERT INTO nope VALUES (1)");
    phased_cmd()
        .args(["run", "--database", &db.url()])
        .arg(&path)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "step e#2 (sql INSERT INTO nope VALUES (1)) failed",
        ))
        .stderr(predicate::str::contains("no such table: nope"))
        .stderr(predicate::str::contains("again to resume"));
    write("INSERT INTO t VALUES (1)");
    phased_cmd()
        .args(["run", "--database", &db.url()])
        .arg(&path)
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "e#1 create_table t — skipped, already done",
        ));
}

#[test]
fn a_bad_database_url_is_a_usage_error_without_the_password() {
    phased_cmd()
        .args(["run", "--database", "mysql://app:hunter2@db/x"])
        .arg(quickstart())
        .assert()
        .code(2)
        .stderr(predicate::str::contains("mysql://app:***@db/x"))
        .stderr(predicate::str::contains("hunter2").not());
}

/// Regression: `phased status … | head -1` panicked with "failed printing to stdout".
#[test]
fn a_closed_stdout_is_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = quickstart_in(dir.path());
    phased_cmd()
        .current_dir(dir.path())
        .arg("run")
        .arg(&plan)
        .assert()
        .success();
    for args in [&["status", "--format", "json"][..], &["status"][..]] {
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("phased"))
            .current_dir(dir.path())
            .args(args)
            .arg(&plan)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn phased");
        drop(child.stdout.take()); // the reader goes away before phased writes
        let out = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}

/// Regression: a read-only command failed with "no such column: rows_per_second" on a state
/// created before state version 2; `run` then upgrades it.
#[test]
fn status_reads_a_state_from_an_older_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = quickstart_in(dir.path());
    phased_cmd()
        .current_dir(dir.path())
        .args(["run", "--until", "setup"])
        .arg(&plan)
        .assert()
        .success();
    let db = dir.path().join("phased.db");
    let conn = rusqlite::Connection::open(&db).expect("open");
    conn.execute_batch(
        "ALTER TABLE phased_steps DROP COLUMN rows_per_second; \
         ALTER TABLE phased_steps DROP COLUMN progress; \
         UPDATE phased_meta SET value = '1' WHERE key = 'schema_version';",
    )
    .expect("downgrade the state to version 1");
    phased_cmd()
        .current_dir(dir.path())
        .arg("status")
        .arg(&plan)
        .assert()
        .success()
        .stdout(predicate::str::contains("setup (expand) — done"));
    phased_cmd()
        .current_dir(dir.path())
        .arg("run")
        .arg(&plan)
        .assert()
        .success();
    let version: String = conn
        .query_row(
            "SELECT value FROM phased_meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .expect("version");
    assert_eq!(
        version,
        phased::db::state_schema::SQLITE.len().to_string(),
        "run upgraded the state to the latest version"
    );
}

/// Logs and rendered errors carry colour only on a terminal: a pipe (a CI log) gets none, and
/// neither does a terminal under `NO_COLOR`; `CLICOLOR_FORCE` turns it on anyway.
#[test]
fn no_colour_codes_in_piped_output_unless_forced() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A `migrations` step logs each revision it runs (INFO).
    let plan = repo_root().join("tests/fixtures/plans/migrations.yaml");
    let run = |db: &str| {
        let mut cmd = phased_cmd();
        cmd.arg("run")
            .arg(&plan)
            .args(["--phase", "schema", "--database"])
            .arg(format!("sqlite://{}", dir.path().join(db).display()))
            .env_remove("NO_COLOR")
            .env_remove("CLICOLOR_FORCE");
        cmd
    };
    let piped = run("piped.db").output().expect("phased run");
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(piped.status.success(), "{stderr}");
    assert!(stderr.contains("running upgrade"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "escape codes in a pipe: {stderr:?}"
    );

    let forced = run("forced.db")
        .env("CLICOLOR_FORCE", "1")
        .output()
        .expect("phased run");
    let stderr = String::from_utf8_lossy(&forced.stderr);
    assert!(forced.status.success(), "{stderr}");
    assert!(
        stderr.contains('\u{1b}'),
        "CLICOLOR_FORCE gave no colour: {stderr:?}"
    );

    // A rendered plan error, piped: plain text; forced: coloured.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "plan: x\nphases:\n  - name: e\n    kind: expand\n    steps:\n      - drop_table: { name: t }\n",
    )
    .expect("write plan");
    let validate = || {
        let mut cmd = phased_cmd();
        cmd.env_remove("NO_COLOR").arg("validate").arg(&bad);
        cmd
    };
    let out = validate().output().expect("phased validate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "escape codes in a pipe: {stderr:?}"
    );
    let out = validate()
        .env("CLICOLOR_FORCE", "1")
        .output()
        .expect("phased validate");
    assert!(String::from_utf8_lossy(&out.stderr).contains('\u{1b}'));
}

/// A plan given by a bare file name (`phased run plan.yaml` in its own folder) runs its
/// `command` steps in that folder: its parent used to be `""`, where no program can start.
#[test]
fn a_plan_named_without_a_folder_runs_its_commands() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("plan.yaml"),
        "plan: bare\nphases:\n  - name: c\n    kind: expand\n    steps:\n      - command: { run: [touch, ran.txt] }\n",
    )
    .expect("write plan");
    let out = phased_cmd()
        .current_dir(dir.path())
        .args(["run", "plan.yaml", "--database", "sqlite://phased.db"])
        .output()
        .expect("phased run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("ran.txt").exists());
}
