//! Verified backups before destructive phases, and restoring them: round trips on both targets,
//! a backup that cannot be written stopping the phase, passwords kept out of every output, the
//! pg_dump checks, and pruning.

use std::path::{Path, PathBuf};

use phased::engine::events::Event;
use phased::engine::{EngineError, RunOptions};

use crate::common::{
    pg_admin_url, pg_connect, phased_cmd, plan_in, real_tool, run, run_ok, with_database, PgDb,
    Shims, SqliteDb, TestDb,
};

/// accounts(id, email) seeded with three rows; expand adds email_lower and a dual-write trigger,
/// backfill fills it, contract drops the trigger and email (after a backup).
fn plan_yaml(backup: &str) -> String {
    format!(
        r#"plan: bk
backup:
{backup}
phases:
  - name: setup
    kind: expand
    steps:
      - create_table:
          name: accounts
          columns:
            - {{ name: id, type: bigint, primary_key: true }}
            - {{ name: email, type: text, nullable: false }}
      - sql:
          up: "INSERT INTO accounts (id, email) VALUES (1, 'Ann@Example.com'), (2, 'bob@example.COM'), (3, 'Cy@EXAMPLE.com')"
          down: DELETE FROM accounts
  - name: expand
    kind: expand
    steps:
      - add_column: {{ table: accounts, name: email_lower, type: text }}
      - dual_write: {{ table: accounts, set: {{ email_lower: "lower(NEW.email)" }} }}
  - name: backfill
    kind: migrate
    steps:
      - backfill: {{ table: accounts, set: {{ email_lower: "lower(email)" }}, where: "email_lower IS NULL", batch_size: 2 }}
  - name: contract
    kind: contract
    steps:
      - drop_dual_write: {{ table: accounts }}
      - drop_column: {{ table: accounts, name: email }}
"#
    )
}

const BACKUP_CONTRACT: &str = "  before: [contract]\n  dir: backups";

/// The plan written into its own folder, as the CLI reads it.
struct PlanDir {
    dir: tempfile::TempDir,
    file: PathBuf,
}

impl PlanDir {
    fn new(yaml: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("plan.yaml");
        std::fs::write(&file, yaml).expect("write plan");
        Self { dir, file }
    }

    fn loaded(&self) -> phased::plan::LoadedPlan {
        plan_in(
            &std::fs::read_to_string(&self.file).expect("read plan"),
            self.dir.path(),
        )
    }

    fn backups_dir(&self) -> PathBuf {
        self.dir.path().join("backups")
    }

    /// Backup files (not their sidecars), sorted.
    fn backup_files(&self) -> Vec<PathBuf> {
        files_in(&self.backups_dir())
            .into_iter()
            .filter(|p| !p.to_string_lossy().ends_with(".json"))
            .collect()
    }
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// Every account as `id:email:email_lower`, in id order.
async fn accounts(db: &TestDb) -> String {
    let sql = if db.is_pg() {
        "SELECT string_agg(id || ':' || email || ':' || coalesce(email_lower, '-'), ',' ORDER BY id) FROM accounts"
    } else {
        "SELECT group_concat(line, ',') FROM (SELECT id || ':' || email || ':' || coalesce(email_lower, '-') AS line FROM accounts ORDER BY id)"
    };
    db.text(sql).await.unwrap_or_default()
}

/// A database that does not exist yet, to restore into; dropped (PostgreSQL) or deleted with its
/// folder (SQLite) when the test ends.
fn new_database_like(db: &TestDb) -> TestDb {
    match db {
        TestDb::Pg(_) => {
            let name = format!(
                "phased_test_restore_{}_{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0)
            );
            let url = with_database(&pg_admin_url(), &name);
            TestDb::Pg(PgDb { name, url })
        }
        TestDb::Sqlite(_) => {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("restored.db");
            TestDb::Sqlite(SqliteDb { dir, path })
        }
    }
}

async fn status_of(
    db: &TestDb,
    loaded: &phased::plan::LoadedPlan,
) -> phased::engine::status::PlanStatus {
    let mut target = db.target(loaded.plan.id()).await;
    phased::with_target!(&mut target, t => phased::engine::status::status(t, &loaded.plan).await)
        .expect("status")
}

fn phase_status(status: &phased::engine::status::PlanStatus, phase: &str) -> String {
    status
        .phases
        .iter()
        .find(|p| p.name == phase)
        .map(|p| p.status.clone())
        .unwrap_or_default()
}

fn until(phase: &str) -> RunOptions {
    RunOptions {
        until: Some(phase.to_string()),
        ..RunOptions::default()
    }
}

/// Seed, run up to the contract (which takes the backup), run it, restore the backup into a new
/// database: the data is the pre-contract data and the state says contract is pending.
async fn round_trip(db: TestDb) {
    let dir = PlanDir::new(&plan_yaml(BACKUP_CONTRACT));
    let loaded = dir.loaded();
    run(&db, &loaded, until("backfill"))
        .await
        .unwrap_or_else(|(e, _)| panic!("run until backfill: {e}"));
    assert!(
        dir.backup_files().is_empty(),
        "no backup before expand phases"
    );
    let before = accounts(&db).await;
    assert_eq!(
        before,
        "1:Ann@Example.com:ann@example.com,2:bob@example.COM:bob@example.com,3:Cy@EXAMPLE.com:cy@example.com"
    );

    let events = run_ok(&db, &loaded).await;
    assert!(!db.has_column("accounts", "email").await, "contract ran");
    let done = events
        .iter()
        .find_map(|e| match e {
            Event::BackupDone {
                phase,
                path,
                size_bytes,
                sha256,
                verified,
                ..
            } => Some((
                phase.clone(),
                path.clone(),
                size_bytes,
                sha256.clone(),
                verified,
            )),
            _ => None,
        })
        .expect("a BackupDone event");
    let backup_at = events
        .iter()
        .position(|e| matches!(e, Event::BackupDone { .. }));
    let contract_at = events
        .iter()
        .position(|e| matches!(e, Event::PhaseStart { phase, .. } if phase == "contract"));
    assert!(
        backup_at.expect("backup") < contract_at.expect("contract started"),
        "the backup precedes the phase"
    );
    let (phase, path, size, sha256, verified) = done;
    assert_eq!(phase, "contract");
    assert!(verified);
    let files = dir.backup_files();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].canonicalize().unwrap(), PathBuf::from(&path));
    let name = files[0].file_name().unwrap().to_string_lossy().to_string();
    assert!(name.starts_with("bk-contract-"), "{name}");
    assert_eq!(std::fs::metadata(&files[0]).unwrap().len(), *size);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&files[0]).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "a backup is private to its owner");
    }

    // The record matches the file.
    let mut target = db.target("bk").await;
    let records =
        phased::with_target!(&mut target, t => phased::engine::backup::list(t, "bk").await)
            .expect("list backups");
    drop(target);
    assert_eq!(records.len(), 1);
    let record = &records[0].record;
    assert_eq!(record.path, path);
    assert_eq!(record.sha256, sha256);
    assert_eq!(
        phased::engine::backup::sha256_file(&files[0]).unwrap(),
        sha256
    );
    assert_eq!(record.plan, "bk");
    assert_eq!(record.phase, "contract");
    assert!(record.verified && records[0].file_present);

    // Restore into a database that does not exist yet.
    let restored = new_database_like(&db);
    phased_cmd()
        .args(["restore", &path, "--yes", "--database", &restored.url()])
        .assert()
        .success();
    assert_eq!(accounts(&restored).await, before);
    let status = status_of(&restored, &loaded).await;
    assert_eq!(phase_status(&status, "backfill"), "done");
    assert_eq!(phase_status(&status, "contract"), "pending");
    let note = status.restored.expect("status notes the restore");
    assert_eq!(note.path, path);
    assert_eq!(note.phase.as_deref(), Some("contract"));
    phased_cmd()
        .args([
            "status",
            dir.file.to_str().unwrap(),
            "--database",
            &restored.url(),
        ])
        .assert()
        .success()
        .stdout(predicates::str::contains(
            format!("from backup {path}").as_str(),
        ));

    // The restored database carries on: the contract runs again, behind a new backup.
    run_ok(&restored, &loaded).await;
    assert!(!restored.has_column("accounts", "email").await);
    assert_eq!(dir.backup_files().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_restores_the_pre_contract_data_on_postgres() {
    round_trip(TestDb::pg().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_restores_the_pre_contract_data_on_sqlite() {
    round_trip(TestDb::sqlite()).await;
}

/// A backup folder that cannot be created: the contract does not start, exit 1, data intact.
async fn unwritable_dir(db: TestDb) {
    let blocker = tempfile::tempdir().expect("temp dir");
    let file = blocker.path().join("not-a-folder");
    std::fs::write(&file, "a file where the backup folder should be").unwrap();
    let backup = format!(
        "  before: [contract]\n  dir: {}",
        file.join("backups").display()
    );
    let dir = PlanDir::new(&plan_yaml(&backup));
    let plan = dir.file.to_str().unwrap().to_string();
    phased_cmd()
        .args(["run", &plan, "--until", "backfill", "--database", &db.url()])
        .assert()
        .success();
    let before = accounts(&db).await;

    let out = phased_cmd()
        .args(["run", &plan, "--database", &db.url()])
        .assert()
        .code(1)
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the backup before phase `contract` failed"),
        "{stderr}"
    );
    assert!(
        stderr.contains("cannot create the backup folder"),
        "{stderr}"
    );
    assert!(stderr.contains("hint: make backup.dir"), "{stderr}");
    assert!(
        stderr.contains("Phase `contract` did not start"),
        "{stderr}"
    );
    assert!(
        db.has_column("accounts", "email").await,
        "contract did not run"
    );
    assert_eq!(accounts(&db).await, before);
    let status = status_of(&db, &dir.loaded()).await;
    assert_eq!(phase_status(&status, "contract"), "pending");
    assert!(status
        .phases
        .iter()
        .find(|p| p.name == "contract")
        .is_some_and(|p| p.steps.iter().all(|s| s.attempts == 0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_backup_dir_stops_the_contract_on_postgres() {
    unwritable_dir(TestDb::pg().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_backup_dir_stops_the_contract_on_sqlite() {
    unwritable_dir(TestDb::sqlite()).await;
}

/// Keeps exactly `keep` backups: three phases take one each, the oldest goes.
async fn pruning(db: TestDb) {
    let yaml = r#"plan: prune
backup:
  before: [two, three, contract]
  dir: backups
  keep: 2
phases:
  - name: one
    kind: expand
    steps:
      - create_table: { name: t, columns: [ { name: id, type: bigint, primary_key: true } ] }
  - name: two
    kind: expand
    steps:
      - add_column: { table: t, name: a, type: text }
  - name: three
    kind: expand
    steps:
      - add_column: { table: t, name: b, type: text }
  - name: contract
    kind: contract
    steps:
      - drop_column: { table: t, name: a }
"#;
    let dir = PlanDir::new(yaml);
    let events = run_ok(&db, &dir.loaded()).await;
    let taken = events
        .iter()
        .filter(|e| matches!(e, Event::BackupDone { .. }))
        .count();
    let pruned: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e, Event::BackupPruned { .. }))
        .collect();
    assert_eq!(taken, 3);
    assert_eq!(pruned.len(), 1);
    let files = dir.backup_files();
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(
        files_in(&dir.backups_dir()).len(),
        4,
        "each file has its sidecar"
    );
    assert!(files
        .iter()
        .all(|f| !f.to_string_lossy().contains("prune-two-")));

    let out = phased_cmd()
        .args([
            "backups",
            dir.file.to_str().unwrap(),
            "--format",
            "json",
            "--database",
            &db.url(),
        ])
        .assert()
        .success()
        .get_output()
        .clone();
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let listed = listed.as_array().expect("an array");
    assert_eq!(listed.len(), 2);
    let phases: Vec<&str> = listed.iter().filter_map(|b| b["phase"].as_str()).collect();
    assert_eq!(phases, ["contract", "three"], "newest first");
    assert!(listed
        .iter()
        .all(|b| b["file_present"] == true && b["verified"] == true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_keeps_exactly_n_on_postgres() {
    pruning(TestDb::pg().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_keeps_exactly_n_on_sqlite() {
    pruning(TestDb::sqlite()).await;
}

const PASSWORD: &str = "s3cret-pw";

/// A login role with a password (the local server trusts every connection, so phased connects
/// with it either way; what matters is where the password travels).
async fn password_role() -> &'static str {
    let client = pg_connect(&pg_admin_url())
        .await
        .unwrap_or_else(|e| panic!("connect as admin: {e}"));
    let sql = format!("CREATE ROLE phased_pw LOGIN PASSWORD '{PASSWORD}' SUPERUSER");
    if let Err(e) = client.batch_execute(&sql).await {
        // Another test (or an earlier run) created it.
        assert!(
            e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT)
                || e.to_string().contains("already exists")
                || e.to_string().contains("concurrently"),
            "{e}"
        );
    }
    "phased_pw"
}

fn with_password(url: &str, role: &str) -> String {
    url.replacen(
        "postgres://postgres@",
        &format!("postgres://{role}:{PASSWORD}@"),
        1,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_appears_in_no_output_file_name_or_pg_dump_argv() {
    let db = TestDb::pg().await;
    let role = password_role().await;
    let TestDb::Pg(pg) = &db else { unreachable!() };
    assert!(pg.url.starts_with("postgres://postgres@"), "{}", pg.url);
    let url = with_password(&pg.url, role);
    assert!(url.contains(PASSWORD));

    let shims = Shims::new();
    let log = shims.dir.path().join("argv.log");
    for tool in ["pg_dump", "pg_restore"] {
        shims.add(
            tool,
            &format!(
                "for a in \"$@\"; do printf '%s\\n' \"{tool} $a\" >> '{log}'; done\n\
                 if [ \"$PGPASSWORD\" = '{PASSWORD}' ]; then echo \"{tool} env PGPASSWORD=expected\" >> '{log}'; fi\n\
                 exec '{real}' \"$@\"\n",
                log = log.display(),
                real = real_tool(tool)
            ),
        );
    }
    let dir = PlanDir::new(&plan_yaml(BACKUP_CONTRACT));
    let plan = dir.file.to_str().unwrap().to_string();
    let restored = new_database_like(&db);
    let restored_url = with_password(&restored.url(), role);
    let backup_file = || {
        dir.backup_files()
            .first()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };

    let mut outputs = Vec::new();
    let mut cli = |args: Vec<String>, code: i32| {
        let out = phased_cmd()
            .env("PATH", shims.path())
            .env_remove("PHASED_PG_BIN")
            .args(&args)
            .assert()
            .code(code)
            .get_output()
            .clone();
        outputs.push((
            args.join(" ").replace(PASSWORD, "<the password>"),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        ));
    };
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    cli(
        s(&["run", &plan, "--until", "backfill", "--database", &url]),
        0,
    );
    cli(s(&["run", &plan, "--database", &url, "-v"]), 0);
    cli(s(&["status", &plan, "--database", &url]), 0);
    cli(
        s(&["status", &plan, "--database", &url, "--format", "json"]),
        0,
    );
    cli(s(&["backups", &plan, "--database", &url]), 0);
    cli(
        s(&["backups", &plan, "--database", &url, "--format", "json"]),
        0,
    );
    let file = backup_file();
    assert!(!file.is_empty(), "a backup was taken");
    // Without --yes on a pipe: refused, and the refusal names the database without its password.
    cli(s(&["restore", &file, "--database", &restored_url]), 2);
    cli(
        s(&["restore", &file, "--database", &restored_url, "--yes"]),
        0,
    );
    cli(s(&["status", &plan, "--database", &restored_url]), 0);
    // A failing connection error message must not leak it either.
    let wrong = with_database(&url, "no_such_database_here");
    cli(s(&["status", &plan, "--database", &wrong]), 1);

    for (command, stdout, stderr) in &outputs {
        assert!(
            !stdout.contains(PASSWORD) && !stderr.contains(PASSWORD),
            "`phased {command}` printed the password:\n{stdout}\n{stderr}"
        );
    }
    assert!(
        outputs[2].1.contains("phased_pw:***@"),
        "status names the user, not the password: {}",
        outputs[2].1
    );
    for f in files_in(&dir.backups_dir()) {
        let name = f.display().to_string();
        assert!(!name.contains(PASSWORD), "{name}");
        let content = std::fs::read(&f).unwrap();
        if name.ends_with(".json") {
            let text = String::from_utf8_lossy(&content);
            assert!(
                !text.contains(PASSWORD),
                "sidecar holds the password: {text}"
            );
            assert!(text.contains("phased_pw@"), "{text}");
        }
    }
    let argv = std::fs::read_to_string(&log).expect("the shims ran");
    assert!(argv.contains("pg_dump --format=custom"), "{argv}");
    assert!(argv.contains("pg_restore --list"), "{argv}");
    assert!(argv.contains("pg_restore --clean"), "{argv}");
    let args: Vec<&str> = argv.lines().filter(|l| !l.contains(" env ")).collect();
    assert!(
        args.iter().all(|l| !l.contains(PASSWORD)),
        "the password reached a command line: {argv}"
    );
    assert!(
        argv.contains("pg_dump env PGPASSWORD=expected"),
        "pg_dump got the password through its environment: {argv}"
    );
    assert!(
        argv.contains("pg_restore env PGPASSWORD=expected"),
        "{argv}"
    );
    assert_eq!(
        accounts(&restored).await,
        "1:Ann@Example.com:ann@example.com,2:bob@example.COM:bob@example.com,3:Cy@EXAMPLE.com:cy@example.com"
    );
}

/// Without pg_dump, a run that would need a backup stops before anything runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_pg_dump_stops_the_run_before_anything_runs() {
    let db = TestDb::pg().await;
    let dir = PlanDir::new(&plan_yaml(BACKUP_CONTRACT));
    let empty = tempfile::tempdir().unwrap();
    let out = phased_cmd()
        .env("PATH", empty.path())
        .env_remove("PHASED_PG_BIN")
        .args(["run", dir.file.to_str().unwrap(), "--database", &db.url()])
        .assert()
        .code(1)
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`pg_dump` was not found"), "{stderr}");
    assert!(
        stderr.contains("hint: install the PostgreSQL 15 client tools")
            || stderr.contains("hint: install the PostgreSQL"),
        "{stderr}"
    );
    assert!(!db.has_table("accounts").await, "nothing ran");
}

/// A pg_dump older than the server is refused up front, with the version it needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_pg_dump_is_refused_before_anything_runs() {
    let db = TestDb::pg().await;
    let dir = PlanDir::new(&plan_yaml(BACKUP_CONTRACT));
    let shims = Shims::new();
    shims.add("pg_dump", "echo 'pg_dump (PostgreSQL) 9.6.24'\n");
    let out = phased_cmd()
        .env("PATH", shims.path())
        .env_remove("PHASED_PG_BIN")
        .args(["run", dir.file.to_str().unwrap(), "--database", &db.url()])
        .assert()
        .code(1)
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("pg_dump is version 9.6, older than the server"),
        "{stderr}"
    );
    assert!(stderr.contains("hint: install the PostgreSQL"), "{stderr}");
    assert!(!db.has_table("accounts").await, "nothing ran");
}

/// pg_dump failing halfway: exit 1, the phase untouched, no half-written file left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pg_dump_leaves_the_phase_untouched_and_no_file() {
    let db = TestDb::pg().await;
    let dir = PlanDir::new(&plan_yaml(BACKUP_CONTRACT));
    let loaded = dir.loaded();
    run(&db, &loaded, until("backfill"))
        .await
        .unwrap_or_else(|(e, _)| panic!("{e}"));
    let shims = Shims::new();
    shims.add(
        "pg_dump",
        &format!(
            "if [ \"$1\" = --version ]; then exec '{}' --version; fi\n\
             for a in \"$@\"; do case \"$a\" in --file=*) echo partial > \"${{a#--file=}}\";; esac; done\n\
             echo 'pg_dump: error: could not write to output file: No space left on device' >&2\n\
             exit 1\n",
            real_tool("pg_dump")
        ),
    );
    let out = phased_cmd()
        .env("PATH", shims.path())
        .env_remove("PHASED_PG_BIN")
        .args(["run", dir.file.to_str().unwrap(), "--database", &db.url()])
        .assert()
        .code(1)
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(
        stderr.contains("Phase `contract` did not start"),
        "{stderr}"
    );
    assert!(db.has_column("accounts", "email").await);
    assert!(
        files_in(&dir.backups_dir()).is_empty(),
        "{:?}",
        files_in(&dir.backups_dir())
    );
    assert_eq!(
        phase_status(&status_of(&db, &loaded).await, "contract"),
        "pending"
    );

    // Machines see it too: a backup_failed event, then the error with its hint.
    let out = phased_cmd()
        .env("PATH", shims.path())
        .env_remove("PHASED_PG_BIN")
        .args([
            "run",
            dir.file.to_str().unwrap(),
            "--database",
            &db.url(),
            "--format",
            "json",
        ])
        .assert()
        .code(1)
        .get_output()
        .clone();
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON"))
        .collect();
    let failed = events
        .iter()
        .find(|e| e["event"] == "backup_failed")
        .expect("a backup_failed event");
    assert_eq!(failed["phase"], "contract");
    let error = events.last().expect("events");
    assert_eq!(error["event"], "error");
    assert_eq!(error["exit_code"], 1);
    assert!(
        error["hint"].as_str().is_some_and(|h| h.contains("room")),
        "{error}"
    );
    assert!(!events.iter().any(|e| e["event"] == "phase_start"));
    assert!(files_in(&dir.backups_dir()).is_empty());
}

/// A contract phase that failed halfway resumes behind the backup taken before it first started,
/// rather than taking (and pruning toward) a backup of a half-contracted database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_contract_keeps_the_backup_taken_before_it_started() {
    let db = TestDb::sqlite();
    let yaml = plan_yaml("  before: [contract]\n  dir: backups\n  keep: 1").replace(
        "      - drop_column: { table: accounts, name: email }\n",
        "      - drop_column: { table: accounts, name: email }\n      - sql: \"SELECT * FROM no_such_table\"\n",
    );
    let dir = PlanDir::new(&yaml);
    let loaded = dir.loaded();
    let err = run(&db, &loaded, RunOptions::default()).await;
    assert!(matches!(err, Err((EngineError::StepFailed { .. }, _))));
    let first = dir.backup_files();
    assert_eq!(first.len(), 1);

    let (_, events) = run(&db, &loaded, RunOptions::default())
        .await
        .expect_err("still failing");
    assert!(!events
        .iter()
        .any(|e| matches!(e, Event::BackupStart { .. })));
    assert_eq!(dir.backup_files(), first, "the first backup stands");
}

/// `backup.tables`: only the listed tables (with what their triggers need) and phased's state are
/// in the backup; restoring it into the original database brings them back and leaves every
/// other table alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_limited_backup_restores_into_the_original_database() {
    let db = TestDb::pg().await;
    db.execute("CREATE TABLE other (id serial PRIMARY KEY, v text); INSERT INTO other (v) VALUES ('before')")
        .await;
    let dir = PlanDir::new(&plan_yaml(
        "  before: [contract]\n  dir: backups\n  tables: [accounts]",
    ));
    let loaded = dir.loaded();
    run(&db, &loaded, until("backfill"))
        .await
        .unwrap_or_else(|(e, _)| panic!("{e}"));
    let before = accounts(&db).await;
    run_ok(&db, &loaded).await;
    assert!(!db.has_column("accounts", "email").await);
    db.execute("INSERT INTO other (v) VALUES ('after')").await;

    let files = dir.backup_files();
    assert_eq!(files.len(), 1);
    let toc = std::process::Command::new(real_tool("pg_restore"))
        .arg("--list")
        .arg(&files[0])
        .output()
        .expect("pg_restore --list");
    let toc = String::from_utf8_lossy(&toc.stdout);
    assert!(toc.contains("TABLE DATA public accounts"), "{toc}");
    assert!(toc.contains("TABLE DATA phased steps"), "{toc}");
    assert!(
        toc.contains("FUNCTION phased phased_dual_write_accounts"),
        "{toc}"
    );
    assert!(!toc.contains("public other"), "{toc}");

    // No --database: back into the database it was taken from, as its sidecar records.
    phased_cmd()
        .args(["restore", files[0].to_str().unwrap(), "--yes"])
        .assert()
        .success();
    assert_eq!(accounts(&db).await, before);
    assert_eq!(
        db.text("SELECT string_agg(v, ',' ORDER BY id) FROM other")
            .await
            .as_deref(),
        Some("before,after"),
        "tables outside backup.tables are left alone"
    );
    db.execute("INSERT INTO accounts (id, email) VALUES (4, 'New@Example.com')")
        .await;
    assert_eq!(
        db.text("SELECT email_lower FROM accounts WHERE id = 4")
            .await
            .as_deref(),
        Some("new@example.com"),
        "the dual-write trigger and its function are back"
    );
    let status = status_of(&db, &loaded).await;
    assert_eq!(phase_status(&status, "contract"), "pending");
    assert!(status.restored.is_some());
}
