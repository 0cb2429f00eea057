//! CI gating and recovery: rollback, dry run, verify, JUnit reports, exit codes, NDJSON events.

use phased::engine::events::Recorder;
use phased::engine::rollback::{rollback, RollbackOptions};
use phased::engine::{EngineError, RunOptions};
use phased::plan::LoadedPlan;

use crate::common::{self, TestDb};

/// The quickstart plan, copied into a temporary folder so the backup its contract phase takes
/// lands there, not in the repository.
fn quickstart() -> (tempfile::TempDir, LoadedPlan) {
    let (dir, path) = quickstart_copy();
    match phased::plan::load(std::path::Path::new(&path)) {
        Ok(p) => (dir, p),
        Err(report) => panic!("{}", report.render_plain()),
    }
}

async fn snapshot(db: &TestDb, plan: &str) -> Vec<String> {
    let mut target = db.target(plan).await;
    phased::with_target!(&mut target, t => t.schema_snapshot().await).expect("schema snapshot")
}

async fn roll_back(
    db: &TestDb,
    loaded: &LoadedPlan,
    to: Option<&str>,
) -> Result<Vec<String>, EngineError> {
    let mut target = db.target(loaded.plan.id()).await;
    let options = RollbackOptions {
        to: to.map(str::to_string),
    };
    let mut recorder = Recorder::default();
    phased::with_target!(&mut target, t => rollback(t, loaded, &options, &mut recorder).await)
}

async fn set_flag(db: &TestDb, name: &str, value: &str) {
    let mut target = db.target("flags").await;
    phased::with_target!(&mut target, t => async {
        t.ensure_state().await?;
        t.set_flag(name, value, None, None).await
    }.await)
    .expect("set flag");
}

async fn flag(db: &TestDb, name: &str) -> Option<String> {
    let mut target = db.target("flags").await;
    let flags = phased::with_target!(&mut target, t => t.flags().await).expect("flags");
    flags.into_iter().find(|f| f.name == name).map(|f| f.value)
}

async fn until(db: &TestDb, loaded: &LoadedPlan, phase: &str) {
    let options = RunOptions {
        until: Some(phase.to_string()),
        ..RunOptions::default()
    };
    if let Err((e, _)) = common::run(db, loaded, options).await {
        panic!("run --until {phase} failed: {e}");
    }
}

/// Every phase before the contract, run and then rolled back to the start, leaves the schema as
/// it found it.
async fn rollback_from_every_phase_restores_the_schema(make: impl AsyncFn() -> TestDb) {
    let (_plan_dir, loaded) = quickstart();
    for phase in ["setup", "expand", "backfill", "switch"] {
        let db = make().await;
        let before = snapshot(&db, "quickstart").await;
        until(&db, &loaded, phase).await;
        assert_ne!(
            snapshot(&db, "quickstart").await,
            before,
            "running up to {phase} changed nothing"
        );
        let undone = match roll_back(&db, &loaded, None).await {
            Ok(u) => u,
            Err(e) => panic!("rollback from {phase} failed: {e}"),
        };
        assert!(!undone.is_empty());
        assert_eq!(
            snapshot(&db, "quickstart").await,
            before,
            "rollback from {phase} left the schema changed"
        );
        // Every step is recorded as rolled back, and the flag store is back to empty.
        let mut target = db.target("quickstart").await;
        let records = phased::with_target!(&mut target, t => t.load_steps("quickstart").await)
            .expect("state");
        assert!(records
            .iter()
            .all(|r| r.status == phased::db::StepStatus::RolledBack));
        let flags = phased::with_target!(&mut target, t => t.flags().await).expect("flags");
        assert!(flags.is_empty(), "{flags:?}");
    }
}

#[tokio::test]
async fn rollback_from_every_phase_restores_the_schema_sqlite() {
    rollback_from_every_phase_restores_the_schema(async || TestDb::sqlite()).await;
}

#[tokio::test]
async fn rollback_from_every_phase_restores_the_schema_postgres() {
    rollback_from_every_phase_restores_the_schema(TestDb::pg).await;
}

/// `--to` keeps the named phase; a rolled-back flag returns to its earlier value; running again
/// redoes the undone phases, the backfill from its first row.
async fn rollback_to_a_phase_then_run_again(db: TestDb) {
    let (_plan_dir, loaded) = quickstart();
    set_flag(&db, "read_email_lower", "false").await;
    until(&db, &loaded, "switch").await;
    let undone = roll_back(&db, &loaded, Some("expand"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        undone,
        vec![
            "switch#1 flag read_email_lower = true".to_string(),
            "backfill#1 backfill accounts (email_lower)".to_string()
        ]
    );
    assert!(db.has_column("accounts", "email_lower").await);
    assert_eq!(
        flag(&db, "read_email_lower").await.as_deref(),
        Some("false"),
        "the flag is back to its value from before the plan"
    );
    // Again: it is resumable — nothing left to undo.
    assert_eq!(
        roll_back(&db, &loaded, Some("expand")).await.ok(),
        Some(vec![])
    );
    common::run_ok(&db, &loaded).await;
    assert!(!db.has_column("accounts", "email").await);
    assert_eq!(
        db.scalar("SELECT count(*) FROM accounts WHERE email_lower IS NOT NULL")
            .await,
        5000
    );
}

#[tokio::test]
async fn rollback_to_a_phase_then_run_again_sqlite() {
    rollback_to_a_phase_then_run_again(TestDb::sqlite()).await;
}

#[tokio::test]
async fn rollback_to_a_phase_then_run_again_postgres() {
    rollback_to_a_phase_then_run_again(TestDb::pg().await).await;
}

#[tokio::test]
async fn rollback_refuses_to_go_past_a_completed_contract() {
    let db = TestDb::sqlite();
    let (_plan_dir, loaded) = quickstart();
    common::run_ok(&db, &loaded).await;
    let err = roll_back(&db, &loaded, Some("switch")).await.err();
    let Some(EngineError::Irreversible { reason, undone, .. }) = err else {
        panic!("expected a refusal, got {err:?}");
    };
    assert!(reason.contains("completed contract phase"), "{reason}");
    assert!(reason.contains("phased restore"), "{reason}");
    assert!(undone.is_empty());
    assert!(db.has_column("accounts", "email_lower").await);
}

#[tokio::test]
async fn rollback_stops_at_a_step_without_inverse() {
    let db = TestDb::sqlite();
    let loaded = common::plan(
        "plan: stops\nphases:\n  - name: expand\n    kind: expand\n    steps:\n      \
         - create_table: { name: t, columns: [{ name: id, type: integer, primary_key: true }] }\n      \
         - sql: \"INSERT INTO t (id) VALUES (1)\"\n      \
         - add_column: { table: t, name: c, type: text }\n",
    );
    assert_eq!(
        loaded.report.warnings().count(),
        1,
        "validate warns about the sql step without down"
    );
    common::run_ok(&db, &loaded).await;
    let err = roll_back(&db, &loaded, None).await.err();
    let Some(EngineError::Irreversible {
        step,
        reason,
        undone,
        ..
    }) = err
    else {
        panic!("expected the rollback to stop, got {err:?}");
    };
    assert_eq!(step, "expand#2");
    assert!(reason.contains("no `down`"), "{reason}");
    assert_eq!(undone, vec!["expand#3 add_column t.c".to_string()]);
    assert!(!db.has_column("t", "c").await, "the newer step was undone");
    assert!(db.has_table("t").await, "the older step was left alone");
}

// ─── CLI: dry run ────────────────────────────────────────────────────────────────────────────

/// A copy of plans/quickstart.yaml in its own temporary folder (backups go beside it).
fn quickstart_copy() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("quickstart.yaml");
    std::fs::copy(common::repo_root().join("plans/quickstart.yaml"), &path)
        .expect("copy the quickstart plan");
    let path = path.display().to_string();
    (dir, path)
}

fn stdout_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A fixed plan for the dry-run snapshots (the example plans may change).
const DRY_RUN_PLAN: &str = r#"plan: dry-run
defaults: { lock_timeout: 3s, statement_timeout: 1m }
phases:
  - name: expand
    kind: expand
    steps:
      - create_table:
          name: accounts
          columns:
            - { name: id, type: bigint, primary_key: true }
            - { name: email, type: text, nullable: false }
      - add_column: { table: accounts, name: email_lower, type: text }
      - dual_write: { table: accounts, set: { email_lower: "lower(NEW.email)" } }
      - create_index: { table: accounts, name: accounts_email_lower_idx, columns: [email_lower], statement_timeout: 10m }
      - sql: { up: "CREATE INDEX CONCURRENTLY accounts_email_idx ON accounts (email)", down: "DROP INDEX CONCURRENTLY accounts_email_idx", transactional: false }
  - name: backfill
    kind: migrate
    steps:
      - backfill: { table: accounts, set: { email_lower: "lower(email)" }, where: "email_lower IS NULL", batch_size: auto }
  - name: switch
    kind: switch-flag
    steps:
      - flag: { name: read_email_lower, value: true }
      - command: { run: [./flip.sh, read_email_lower, "on"], down: [./flip.sh, read_email_lower, "off"], timeout: 30s }
  - name: contract
    kind: contract
    gate:
      - flag: { name: read_email_lower, is: true }
    steps:
      - set_not_null: { table: accounts, column: email_lower }
      - drop_column: { table: accounts, name: email }
"#;

fn dry_run_plan() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("dry-run.yaml");
    std::fs::write(&path, DRY_RUN_PLAN).expect("write plan");
    let path = path.display().to_string();
    (dir, path)
}

#[test]
fn plan_offline_prints_the_exact_postgres_sql() {
    let (_dir, plan) = dry_run_plan();
    let output = common::phased_cmd()
        .args(["plan", &plan, "--offline", "--dialect", "postgres"])
        .output()
        .expect("phased plan");
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    let text = stdout_of(&output);
    insta::assert_snapshot!("plan_offline_postgres", text);
}

#[test]
fn plan_offline_prints_the_exact_sqlite_sql() {
    let (_dir, plan) = dry_run_plan();
    let output = common::phased_cmd()
        .args([
            "plan",
            &plan,
            "--offline",
            "--dialect",
            "sqlite",
            "--phase",
            "backfill",
        ])
        .output()
        .expect("phased plan");
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    insta::assert_snapshot!("plan_offline_sqlite_backfill", stdout_of(&output));
}

/// Against a database: done steps are skipped, pending ones shown, and nothing is written.
async fn plan_shows_only_pending_steps_and_writes_nothing(db: TestDb) {
    let (_qs_dir, qs) = quickstart_copy();
    let (_plan_dir, loaded) = quickstart();
    until(&db, &loaded, "expand").await;
    let before = snapshot(&db, "quickstart").await;
    let count_state = match &db {
        TestDb::Pg(_) => "SELECT count(*) FROM phased.steps",
        TestDb::Sqlite(_) => "SELECT count(*) FROM phased_steps",
    };
    let rows_before = db.scalar(count_state).await;
    let output = common::phased_cmd()
        .args(["plan", &qs, "--database", &db.url()])
        .output()
        .expect("phased plan");
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    let text = stdout_of(&output);
    assert!(
        text.contains("-- step expand#3 create_index accounts_email_lower_idx: done, skipped"),
        "{text}"
    );
    assert!(
        text.contains("-- step backfill#1 backfill accounts (email_lower) (pending"),
        "{text}"
    );
    if db.is_pg() {
        // The key's real type, read from the database, casts the bound key.
        assert!(text.contains("(\"id\") > ($1::text::bigint)"), "{text}");
    } else {
        assert!(text.contains("(\"id\") <= (?1)"), "{text}");
    }
    assert!(text.contains("-- 4 pending step(s)"), "{text}");
    assert_eq!(snapshot(&db, "quickstart").await, before);
    assert_eq!(db.scalar(count_state).await, rows_before);
}

#[tokio::test]
async fn plan_shows_only_pending_steps_and_writes_nothing_sqlite() {
    plan_shows_only_pending_steps_and_writes_nothing(TestDb::sqlite()).await;
}

#[tokio::test]
async fn plan_shows_only_pending_steps_and_writes_nothing_postgres() {
    plan_shows_only_pending_steps_and_writes_nothing(TestDb::pg().await).await;
}

#[test]
fn plan_does_not_create_a_missing_sqlite_file() {
    let (_qs_dir, qs) = quickstart_copy();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("absent.db");
    let output = common::phased_cmd()
        .args(["plan", &qs, "--database"])
        .arg(format!("sqlite://{}", path.display()))
        .output()
        .expect("phased plan");
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    assert!(stdout_of(&output).contains("-- 9 pending step(s)"));
    assert!(!path.exists());
}

// ─── CLI: verify ─────────────────────────────────────────────────────────────────────────────

fn example_plans() -> Vec<std::path::PathBuf> {
    let mut plans: Vec<_> = std::fs::read_dir(common::repo_root().join("plans"))
        .expect("plans/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    plans.sort();
    assert!(!plans.is_empty());
    plans
}

/// The scratch database named in verify's first line, which must be gone afterwards.
fn scratch_named(stderr: &str) -> String {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("phased verify: rehearsing"))
        .unwrap_or_else(|| panic!("no rehearsal line in:\n{stderr}"));
    let url = line
        .split(" on ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no scratch URL in {line}"));
    url.to_string()
}

async fn verify_passes_on_the_example_plans(db: TestDb) {
    for plan in example_plans() {
        let output = common::phased_cmd()
            .args(["verify", "--database", &db.url()])
            .arg(&plan)
            .output()
            .expect("phased verify");
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}:\n{}\n{}",
            plan.display(),
            stdout_of(&output),
            stderr_of(&output)
        );
        assert!(stdout_of(&output).starts_with("verify passed"));
        let scratch = scratch_named(&stderr_of(&output));
        match &db {
            TestDb::Pg(_) => {
                let name = scratch.rsplit('/').next().unwrap_or_default();
                let left = db
                    .scalar(&format!(
                        "SELECT count(*) FROM pg_database WHERE datname = '{name}'"
                    ))
                    .await;
                assert_eq!(left, 0, "scratch database {name} was not removed");
            }
            TestDb::Sqlite(_) => {
                let path = scratch.trim_start_matches("sqlite://");
                assert!(
                    !std::path::Path::new(path).exists(),
                    "{path} was not removed"
                );
            }
        }
    }
    // The target itself is untouched.
    assert!(!db.has_table("accounts").await);
}

#[tokio::test]
async fn verify_passes_on_the_example_plans_sqlite() {
    let db = TestDb::sqlite();
    db.execute("CREATE TABLE app_users (id integer PRIMARY KEY, name text NOT NULL)")
        .await;
    verify_passes_on_the_example_plans(db).await;
}

#[tokio::test]
async fn verify_passes_on_the_example_plans_postgres() {
    let db = TestDb::pg().await;
    db.execute("CREATE TABLE app_users (id bigint PRIMARY KEY, name text NOT NULL)")
        .await;
    verify_passes_on_the_example_plans(db).await;
}

fn write_plan(dir: &tempfile::TempDir, yaml: &str) -> std::path::PathBuf {
    let path = dir.path().join("plan.yaml");
    std::fs::write(&path, yaml).expect("write plan");
    path
}

async fn verify_fails_on_an_irreversible_sql_step(db: TestDb) {
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = write_plan(
        &dir,
        "plan: one-way\nphases:\n  - name: expand\n    kind: expand\n    steps:\n      \
         - create_table: { name: t, columns: [{ name: id, type: integer, primary_key: true }] }\n      \
         - sql: \"CREATE INDEX t_id_idx ON t (id)\"\n",
    );
    let output = common::phased_cmd()
        .args(["verify", "--database", &db.url()])
        .arg(&plan)
        .output()
        .expect("phased verify");
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    let text = stdout_of(&output);
    assert!(
        text.contains("verify failed: 1 step(s) cannot be undone"),
        "{text}"
    );
    assert!(
        text.contains("expand#2 sql CREATE INDEX t_id_idx ON t (id)"),
        "{text}"
    );
    assert!(text.contains("no `down`"), "{text}");
}

#[tokio::test]
async fn verify_fails_on_an_irreversible_sql_step_sqlite() {
    verify_fails_on_an_irreversible_sql_step(TestDb::sqlite()).await;
}

#[tokio::test]
async fn verify_fails_on_an_irreversible_sql_step_postgres() {
    verify_fails_on_an_irreversible_sql_step(TestDb::pg().await).await;
}

#[tokio::test]
async fn verify_fails_when_a_down_does_not_restore_the_schema() {
    let db = TestDb::sqlite();
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = write_plan(
        &dir,
        "plan: leaky\nphases:\n  - name: expand\n    kind: expand\n    steps:\n      \
         - sql: { up: \"CREATE TABLE audit (id integer)\", down: \"SELECT 1\" }\n",
    );
    let output = common::phased_cmd()
        .args(["verify", "--database", &db.url()])
        .arg(&plan)
        .output()
        .expect("phased verify");
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    let text = stdout_of(&output);
    assert!(text.contains("the schema differs from before"), "{text}");
    assert!(text.contains("+ table audit"), "{text}");
}

// ─── CLI: exit codes ─────────────────────────────────────────────────────────────────────────

const FAILING_PLAN: &str = "plan: failing\ndefaults: { retry: { attempts: 1 } }\nphases:\n  - name: expand\n    kind: expand\n    steps:\n      \
     - create_table: { name: t, columns: [{ name: id, type: integer, primary_key: true }] }\n      \
     - sql: { up: \"INSERT INTO no_such_table VALUES (1)\", down: \"SELECT 1\" }\n";

const GATED_PLAN: &str = "plan: gated\nphases:\n  - name: expand\n    kind: expand\n    steps:\n      \
     - create_table: { name: t, columns: [{ name: id, type: integer, primary_key: true }] }\n  \
     - name: contract\n    kind: contract\n    gate:\n      - flag: { name: ready, is: true }\n    steps:\n      \
     - drop_table: { name: t }\n";

fn run_cli(db: &TestDb, plan: &std::path::Path, extra: &[&str]) -> std::process::Output {
    common::phased_cmd()
        .args(["run", "--database", &db.url()])
        .arg(plan)
        .args(extra)
        .output()
        .expect("phased run")
}

#[test]
fn exit_0_when_the_run_is_done() {
    let (_qs_dir, qs) = quickstart_copy();
    let db = TestDb::sqlite();
    let output = run_cli(&db, std::path::Path::new(&qs), &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
}

async fn exit_1_when_a_step_fails(db: TestDb) {
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = write_plan(&dir, FAILING_PLAN);
    let output = run_cli(&db, &plan, &[]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    let err = stderr_of(&output);
    assert!(err.contains("error: step expand#2"), "{err}");
    assert!(err.contains("no_such_table"), "{err}");
}

#[tokio::test]
async fn exit_1_when_a_step_fails_sqlite() {
    exit_1_when_a_step_fails(TestDb::sqlite()).await;
}

#[tokio::test]
async fn exit_1_when_a_step_fails_postgres() {
    exit_1_when_a_step_fails(TestDb::pg().await).await;
}

#[test]
fn exit_2_for_an_invalid_plan_or_usage() {
    let (_qs_dir, qs) = quickstart_copy();
    let db = TestDb::sqlite();
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = write_plan(
        &dir,
        "plan: bad\nphases:\n  - name: expand\n    kind: expand\n    steps:\n      - drop_table: { name: t }\n",
    );
    let output = run_cli(&db, &plan, &[]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr_of(&output));
    assert!(stderr_of(&output).contains("destructive"));
    // An unknown phase is a usage error too, and nothing is created.
    let output = run_cli(&db, std::path::Path::new(&qs), &["--phase", "nope"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr_of(&output));
    assert!(stderr_of(&output).contains("has no phase `nope`"));
}

async fn exit_3_when_a_gate_is_not_met(db: TestDb) {
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = write_plan(&dir, GATED_PLAN);
    let output = run_cli(&db, &plan, &[]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr_of(&output));
    assert!(db.has_table("t").await, "the phase before the gate ran");
    let output = common::phased_cmd()
        .args(["gate", "--phase", "contract", "--database", &db.url()])
        .arg(&plan)
        .output()
        .expect("phased gate");
    assert_eq!(output.status.code(), Some(3));
    assert!(
        stdout_of(&output).contains("✗ flag ready"),
        "{}",
        stdout_of(&output)
    );
}

#[tokio::test]
async fn exit_3_when_a_gate_is_not_met_sqlite() {
    exit_3_when_a_gate_is_not_met(TestDb::sqlite()).await;
}

#[tokio::test]
async fn exit_3_when_a_gate_is_not_met_postgres() {
    exit_3_when_a_gate_is_not_met(TestDb::pg().await).await;
}

#[tokio::test]
async fn exit_4_when_another_runner_holds_the_lease_sqlite() {
    let db = TestDb::sqlite();
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = write_plan(&dir, GATED_PLAN);
    set_flag(&db, "unrelated", "1").await; // creates the state tables
                                           // This test process stands in for a live runner on this host.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .expect("hostname");
    db.execute(&format!(
        "INSERT INTO phased_lease (plan, pid, host, since) VALUES ('gated', {}, '{host}', '2026-01-01T00:00:00Z')",
        std::process::id()
    ))
    .await;
    for command in [&["run"][..], &["rollback", "--yes"][..]] {
        let output = common::phased_cmd()
            .args(command)
            .args(["--database", &db.url()])
            .arg(&plan)
            .output()
            .expect("phased");
        assert_eq!(
            output.status.code(),
            Some(4),
            "{command:?}: {}",
            stderr_of(&output)
        );
        let err = stderr_of(&output);
        assert!(
            err.contains(&format!("phased pid {} on {host}", std::process::id())),
            "{err}"
        );
    }
    assert!(!db.has_table("t").await);
}

/// Also a regression test: the same plan running on another database of the server (its advisory
/// lock has the same key there) made naming the holder fail with "unexpected number of rows".
#[tokio::test]
async fn exit_4_when_another_runner_holds_the_lease_postgres() {
    let db = TestDb::pg().await;
    let other = TestDb::pg().await;
    let (TestDb::Pg(pg), TestDb::Pg(other_pg)) = (&db, &other) else {
        unreachable!()
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = write_plan(&dir, GATED_PLAN);
    let key = phased::db::postgres::lease_key("gated");
    let elsewhere = other_pg.client().await;
    elsewhere
        .execute("SELECT pg_advisory_lock($1)", &[&key])
        .await
        .expect("take the plan's advisory lock on another database");
    let holder = pg.client().await;
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&key])
        .await
        .expect("take the plan's advisory lock");
    let output = run_cli(&db, &plan, &[]);
    assert_eq!(output.status.code(), Some(4), "{}", stderr_of(&output));
    let err = stderr_of(&output);
    assert!(
        err.contains("another runner is working on plan `gated`: pid "),
        "{err}"
    );
    assert!(!db.has_table("t").await);
    drop(holder);
    drop(elsewhere);
}

// ─── CLI: rollback ───────────────────────────────────────────────────────────────────────────

#[test]
fn rollback_needs_yes_off_a_terminal() {
    let (_qs_dir, qs) = quickstart_copy();
    let db = TestDb::sqlite();
    let plan = qs.clone();
    let output = run_cli(&db, std::path::Path::new(&plan), &["--until", "expand"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    let output = common::phased_cmd()
        .args(["rollback", &plan, "--to", "setup", "--database", &db.url()])
        .output()
        .expect("phased rollback");
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr_of(&output).contains("--yes"));
    let output = common::phased_cmd()
        .args([
            "rollback",
            &plan,
            "--to",
            "setup",
            "--yes",
            "--database",
            &db.url(),
        ])
        .output()
        .expect("phased rollback");
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    assert!(stdout_of(&output).contains("rolled back 3 step(s)"));
    let status = common::phased_cmd()
        .args(["status", &plan, "--database", &db.url()])
        .output()
        .expect("phased status");
    let text = stdout_of(&status);
    assert!(text.contains("expand (expand) — rolled_back"), "{text}");
    assert!(text.contains("setup (expand) — done"), "{text}");
}

/// Runs phased on a pseudo-terminal (util-linux `script`), typing `answer` on it; returns the
/// exit code and what the terminal showed.
fn on_a_terminal(args: &[&str], answer: &str) -> (Option<i32>, String) {
    use std::io::Write;
    let phased = assert_cmd::cargo::cargo_bin("phased");
    let mut line = shell_quote(&phased.display().to_string());
    for arg in args {
        line.push(' ');
        line.push_str(&shell_quote(arg));
    }
    let mut child = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &line, "/dev/null"])
        .env_remove("DATABASE_URL")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect(
            "the prompt tests need util-linux `script` (Debian: bsdutils) for a pseudo-terminal",
        );
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(answer.as_bytes())
        .expect("type the answer");
    let output = child.wait_with_output().expect("script");
    (output.status.code(), stdout_of(&output))
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// On a terminal, rollback and restore ask, and do nothing unless the answer is yes.
#[tokio::test]
async fn rollback_and_restore_ask_on_a_terminal() {
    let (qs_dir, plan) = quickstart_copy();
    let db = TestDb::sqlite();
    let url = db.url();
    let output = run_cli(&db, std::path::Path::new(&plan), &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    let backup = std::fs::read_dir(qs_dir.path().join("backups"))
        .expect("the contract's backup folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "sqlite"))
        .expect("a backup file")
        .display()
        .to_string();

    let restore = ["restore", backup.as_str(), "--database", url.as_str()];
    let (code, screen) = on_a_terminal(&restore, "n\n");
    assert!(screen.contains("[y/N]"), "{screen}");
    assert!(screen.contains("not restored"), "{screen}");
    assert_eq!(code, Some(1), "{screen}");
    let has_email = "SELECT count(*) FROM pragma_table_info('accounts') WHERE name = 'email'";
    assert_eq!(db.scalar(has_email).await, 0, "the contract's drop stands");

    let (code, screen) = on_a_terminal(&restore, "y\n");
    assert_eq!(code, Some(0), "{screen}");
    assert_eq!(db.scalar(has_email).await, 1, "the backup is back");

    // The restored state says the plan stood before its contract: roll that back.
    let rollback = [
        "rollback",
        plan.as_str(),
        "--to",
        "setup",
        "--database",
        url.as_str(),
    ];
    let (code, screen) = on_a_terminal(&rollback, "no\n");
    assert!(
        screen.contains("Roll back the phases after `setup`"),
        "{screen}"
    );
    assert!(screen.contains("rollback cancelled"), "{screen}");
    assert_eq!(code, Some(2), "{screen}");
    let has_lower = "SELECT count(*) FROM pragma_table_info('accounts') WHERE name = 'email_lower'";
    assert_eq!(db.scalar(has_lower).await, 1, "nothing was rolled back");

    let (code, screen) = on_a_terminal(&rollback, "yes\n");
    assert_eq!(code, Some(0), "{screen}");
    assert!(screen.contains("rolled back"), "{screen}");
    assert_eq!(db.scalar(has_lower).await, 0, "expand was rolled back");
}

// ─── CLI: JUnit ──────────────────────────────────────────────────────────────────────────────

fn junit(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).expect("junit file")
}

#[test]
fn junit_report_of_a_successful_run() {
    let (_qs_dir, qs) = quickstart_copy();
    let db = TestDb::sqlite();
    let dir = tempfile::tempdir().expect("temp dir");
    let report = dir.path().join("junit.xml");
    let output = run_cli(
        &db,
        std::path::Path::new(&qs),
        &["--junit", &report.display().to_string()],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    let xml = junit(&report);
    let doc = roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("{e}:\n{xml}"));
    let suites: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testsuite"))
        .filter_map(|n| n.attribute("name"))
        .collect();
    assert_eq!(
        suites,
        ["setup", "expand", "backfill", "switch", "contract"]
    );
    let cases: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .filter_map(|n| n.attribute("name"))
        .collect();
    // 9 steps, 2 gate conditions and the backup before the contract, none failed.
    assert_eq!(cases.len(), 12, "{cases:?}");
    assert!(cases.iter().any(|c| c.starts_with("backup ")), "{cases:?}");
    assert_eq!(
        doc.descendants()
            .filter(|n| n.has_tag_name("failure"))
            .count(),
        0
    );
    assert_eq!(doc.root_element().attribute("failures"), Some("0"));
}

#[test]
fn junit_report_names_the_failed_step_and_its_error() {
    let db = TestDb::sqlite();
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = write_plan(&dir, FAILING_PLAN);
    let report = dir.path().join("junit.xml");
    let output = run_cli(&db, &plan, &["--junit", &report.display().to_string()]);
    assert_eq!(output.status.code(), Some(1));
    let xml = junit(&report);
    let doc = roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("{e}:\n{xml}"));
    let failed: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("failure"))
        .collect();
    assert_eq!(failed.len(), 1, "{xml}");
    let case = failed[0].parent().expect("testcase");
    assert_eq!(
        case.attribute("name"),
        Some("#2 sql INSERT INTO no_such_table VALUES (1)")
    );
    assert_eq!(case.attribute("classname"), Some("failing.expand"));
    let text = failed[0].text().unwrap_or_default();
    assert!(text.contains("no such table: no_such_table"), "{text}");
    assert!(
        text.contains("SQL: INSERT INTO no_such_table VALUES (1)"),
        "{text}"
    );
    let passed = doc
        .descendants()
        .filter(|n| n.has_tag_name("testcase") && n.attribute("name") == Some("#1 create_table t"))
        .count();
    assert_eq!(passed, 1);
}

#[test]
fn junit_report_of_an_unmet_gate() {
    let db = TestDb::sqlite();
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = write_plan(&dir, GATED_PLAN);
    let report = dir.path().join("junit.xml");
    let output = run_cli(&db, &plan, &["--junit", &report.display().to_string()]);
    assert_eq!(output.status.code(), Some(3));
    let xml = junit(&report);
    let doc = roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("{e}:\n{xml}"));
    let failure = doc
        .descendants()
        .find(|n| n.has_tag_name("failure"))
        .unwrap_or_else(|| panic!("no failure in {xml}"));
    let case = failure.parent().expect("testcase");
    assert!(
        case.attribute("name")
            .is_some_and(|n| n.starts_with("gate: flag ready")),
        "{xml}"
    );
    assert_eq!(case.attribute("classname"), Some("gated.contract"));
}

// ─── CLI: NDJSON ─────────────────────────────────────────────────────────────────────────────

/// The events docs/ci.md documents, each with the fields it always has.
const EVENTS: &[(&str, &[&str])] = &[
    ("run_start", &["plan", "database", "phases"]),
    ("phase_start", &["phase", "kind", "description"]),
    ("phase_skipped", &["phase", "reason"]),
    ("phase_end", &["phase", "elapsed_ms"]),
    ("gate_result", &["phase", "condition", "ok", "detail"]),
    ("step_start", &["phase", "step", "label", "attempt"]),
    ("step_skipped", &["phase", "step", "label", "reason"]),
    (
        "step_retry",
        &[
            "phase", "step", "label", "attempt", "error", "wait_ms", "blockers",
        ],
    ),
    (
        "step_waiting",
        &[
            "phase", "step", "label", "attempt", "table", "lock", "blockers", "wait_ms",
        ],
    ),
    ("step_end", &["phase", "step", "label", "elapsed_ms"]),
    ("step_failed", &["phase", "step", "label", "error", "sql"]),
    (
        "backfill_progress",
        &[
            "phase",
            "step",
            "label",
            "rows_done",
            "rows_total",
            "batch_size",
            "rows_per_second",
            "paused",
        ],
    ),
    ("log", &["level", "message"]),
    ("run_end", &["outcome", "elapsed_ms"]),
    ("rollback_start", &["plan", "database", "to", "phases"]),
    ("step_undo", &["phase", "step", "label", "inverse"]),
    ("step_undone", &["phase", "step", "label", "elapsed_ms"]),
    ("backup_start", &["phase", "path"]),
    ("backup_progress", &["phase", "bytes"]),
    (
        "backup_done",
        &[
            "phase",
            "path",
            "size_bytes",
            "sha256",
            "duration_ms",
            "verified",
        ],
    ),
    ("backup_failed", &["phase", "error"]),
    ("backup_pruned", &["path"]),
    ("error", &["exit_code", "message"]),
    ("verify_result", &["result", "data_checks"]),
];

/// Every stdout line is one JSON object whose `event` is documented and has its fields.
fn check_ndjson(stdout: &str) -> Vec<String> {
    let mut seen = Vec::new();
    for line in stdout.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let event = value
            .get("event")
            .and_then(|e| e.as_str())
            .unwrap_or_else(|| panic!("no `event` in {line}"));
        let (_, fields) = EVENTS
            .iter()
            .find(|(name, _)| *name == event)
            .unwrap_or_else(|| panic!("undocumented event `{event}` in {line}"));
        for field in *fields {
            assert!(
                value.get(field).is_some(),
                "`{event}` lacks `{field}`: {line}"
            );
        }
        seen.push(event.to_string());
    }
    seen
}

#[test]
fn ndjson_events_follow_the_documented_schema() {
    let (_qs_dir, qs) = quickstart_copy();
    let db = TestDb::sqlite();
    let plan = qs.clone();
    let output = common::phased_cmd()
        .args([
            "run",
            &plan,
            "--format",
            "json",
            "--until",
            "switch",
            "--database",
            &db.url(),
        ])
        .output()
        .expect("phased run");
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    let seen = check_ndjson(&stdout_of(&output));
    for expected in [
        "run_start",
        "phase_start",
        "step_start",
        "step_end",
        "backfill_progress",
        "phase_end",
        "run_end",
    ] {
        assert!(
            seen.iter().any(|e| e == expected),
            "no {expected} in {seen:?}"
        );
    }
    // Resumed: skipped phases; then a rollback's events; then a failure's error event.
    let output = common::phased_cmd()
        .args([
            "run",
            &plan,
            "--format",
            "json",
            "--until",
            "switch",
            "--database",
            &db.url(),
        ])
        .output()
        .expect("phased run");
    assert!(check_ndjson(&stdout_of(&output)).contains(&"phase_skipped".to_string()));
    let output = common::phased_cmd()
        .args([
            "rollback",
            &plan,
            "--yes",
            "--format",
            "json",
            "--database",
            &db.url(),
        ])
        .output()
        .expect("phased rollback");
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    let seen = check_ndjson(&stdout_of(&output));
    assert_eq!(seen.first().map(String::as_str), Some("rollback_start"));
    assert!(seen.contains(&"step_undone".to_string()));
    let dir = tempfile::tempdir().expect("temp dir");
    let failing = write_plan(&dir, FAILING_PLAN);
    let output = common::phased_cmd()
        .args(["run", "--format", "json", "--database", &db.url()])
        .arg(&failing)
        .output()
        .expect("phased run");
    assert_eq!(output.status.code(), Some(1));
    let seen = check_ndjson(&stdout_of(&output));
    assert!(seen.contains(&"step_failed".to_string()));
    assert_eq!(seen.last().map(String::as_str), Some("error"));
    // Verify's result is an event too.
    let output = common::phased_cmd()
        .args([
            "verify",
            &plan,
            "--format",
            "json",
            "--database",
            &TestDb::sqlite().url(),
        ])
        .output()
        .expect("phased verify");
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    assert_eq!(
        check_ndjson(&stdout_of(&output)).last().map(String::as_str),
        Some("verify_result")
    );
}

// ─── rollback: the engine-driven inverses, and resuming ──────────────────────────────────────

/// A backfill of a column that existed before the plan runs its `down`; a command runs its
/// `down` program; a flag that existed before gets its old value back.
async fn rollback_runs_down_sql_down_commands_and_restores_flags(db: TestDb) {
    let dir = tempfile::tempdir().expect("temp dir");
    let marker = dir.path().join("flag-service.txt");
    db.execute("CREATE TABLE users (id integer PRIMARY KEY, name text, name_upper text)")
        .await;
    db.execute("INSERT INTO users (id, name) VALUES (1, 'ada'), (2, 'bob')")
        .await;
    set_flag(&db, "upper_names", "off").await;
    let yaml = format!(
        "plan: engine-inverses\nphases:\n  - name: migrate\n    kind: migrate\n    steps:\n      \
         - backfill: {{ table: users, set: {{ name_upper: \"upper(name)\" }}, batch_size: 1, down: \"UPDATE users SET name_upper = NULL\" }}\n  \
         - name: switch\n    kind: switch-flag\n    steps:\n      \
         - flag: {{ name: upper_names, value: \"on\" }}\n      \
         - command: {{ run: [sh, -c, \"echo on > {m}\"], down: [sh, -c, \"echo off > {m}\"] }}\n",
        m = marker.display()
    );
    let loaded = common::plan_in(&yaml, dir.path());
    assert_eq!(loaded.report.warnings().count(), 0);
    common::run_ok(&db, &loaded).await;
    assert_eq!(
        db.scalar("SELECT count(*) FROM users WHERE name_upper IS NOT NULL")
            .await,
        2
    );
    assert_eq!(flag(&db, "upper_names").await.as_deref(), Some("on"));
    assert_eq!(
        std::fs::read_to_string(&marker).ok().as_deref(),
        Some("on\n")
    );

    let undone = roll_back(&db, &loaded, None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(undone.len(), 3);
    assert_eq!(
        std::fs::read_to_string(&marker).ok().as_deref(),
        Some("off\n")
    );
    assert_eq!(flag(&db, "upper_names").await.as_deref(), Some("off"));
    assert_eq!(
        db.scalar("SELECT count(*) FROM users WHERE name_upper IS NOT NULL")
            .await,
        0
    );
    // Run again: the backfill starts over from its first row.
    common::run_ok(&db, &loaded).await;
    assert_eq!(
        db.scalar("SELECT count(*) FROM users WHERE name_upper IS NOT NULL")
            .await,
        2
    );
}

#[tokio::test]
async fn rollback_runs_down_sql_down_commands_and_restores_flags_sqlite() {
    rollback_runs_down_sql_down_commands_and_restores_flags(TestDb::sqlite()).await;
}

#[tokio::test]
async fn rollback_runs_down_sql_down_commands_and_restores_flags_postgres() {
    rollback_runs_down_sql_down_commands_and_restores_flags(TestDb::pg().await).await;
}

/// An inverse that fails stops the rollback with the step still done; fixed, the same rollback
/// resumes with the steps that were left.
async fn rollback_resumes_after_a_failed_inverse(db: TestDb) {
    let loaded = common::plan(
        "plan: resumable\ndefaults: { retry: { attempts: 1 } }\nphases:\n  - name: expand\n    kind: expand\n    steps:\n      \
         - create_table: { name: t, columns: [{ name: id, type: integer, primary_key: true }] }\n      \
         - sql: { up: \"INSERT INTO t (id) VALUES (1)\", down: \"INSERT INTO rollback_log (note) VALUES ('undone')\" }\n      \
         - add_column: { table: t, name: c, type: text }\n",
    );
    common::run_ok(&db, &loaded).await;
    let err = roll_back(&db, &loaded, None).await.err();
    let Some(EngineError::UndoFailed { step, undone, .. }) = err else {
        panic!("expected the inverse to fail, got {err:?}");
    };
    assert_eq!(step, "expand#2");
    assert_eq!(undone, vec!["expand#3 add_column t.c".to_string()]);
    assert!(db.has_table("t").await);
    db.execute("CREATE TABLE rollback_log (note text)").await;
    let undone = roll_back(&db, &loaded, None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        undone,
        vec![
            "expand#2 sql INSERT INTO t (id) VALUES (1)".to_string(),
            "expand#1 create_table t".to_string()
        ]
    );
    assert!(!db.has_table("t").await);
    assert_eq!(db.scalar("SELECT count(*) FROM rollback_log").await, 1);
}

#[tokio::test]
async fn rollback_resumes_after_a_failed_inverse_sqlite() {
    rollback_resumes_after_a_failed_inverse(TestDb::sqlite()).await;
}

#[tokio::test]
async fn rollback_resumes_after_a_failed_inverse_postgres() {
    rollback_resumes_after_a_failed_inverse(TestDb::pg().await).await;
}

#[test]
fn validate_warns_about_steps_rollback_cannot_undo() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = write_plan(
        &dir,
        "plan: warned\nphases:\n  - name: expand\n    kind: expand\n    steps:\n      \
         - sql: \"UPDATE t SET c = 1\"\n      \
         - command: { run: [./hook.sh] }\n",
    );
    let output = common::phased_cmd()
        .args(["validate"])
        .arg(&plan)
        .output()
        .expect("phased validate");
    assert_eq!(output.status.code(), Some(0));
    assert!(
        stdout_of(&output).contains("2 warning(s)"),
        "{}",
        stdout_of(&output)
    );
    let err = stderr_of(&output);
    assert!(err.contains("this `sql` step has no `down`"), "{err}");
    assert!(err.contains("this `command` step has no `down`"), "{err}");
}

/// A `migrations` step shows the SQL of each pending migration, counting the steps before it as
/// applied (offline) or reading the version state (online).
async fn plan_shows_the_sql_of_pending_migrations(db: TestDb) {
    let path = common::repo_root().join("tests/fixtures/plans/migrations.yaml");
    let path = path.display().to_string();
    let offline = common::phased_cmd()
        .args([
            "plan",
            &path,
            "--offline",
            "--dialect",
            if db.is_pg() { "postgres" } else { "sqlite" },
        ])
        .args(["--phase", "data"])
        .output()
        .expect("phased plan");
    assert_eq!(offline.status.code(), Some(0), "{}", stderr_of(&offline));
    let text = stdout_of(&offline);
    assert!(
        text.contains("-- Running upgrade 8d3e5b1a0c27 -> b7a2c4e9d315"),
        "{text}"
    );
    assert!(!text.contains("<base> -> "), "{text}");
    let loaded = match phased::plan::load(std::path::Path::new(&path)) {
        Ok(p) => p,
        Err(report) => panic!("{}", report.render_plain()),
    };
    until(&db, &loaded, "schema").await;
    let online = common::phased_cmd()
        .args(["plan", &path, "--database", &db.url()])
        .output()
        .expect("phased plan");
    assert_eq!(online.status.code(), Some(0), "{}", stderr_of(&online));
    let text = stdout_of(&online);
    assert!(
        text.contains("-- step schema#1 migrations ../migrations to 8d3e5b1a0c27: done, skipped"),
        "{text}"
    );
    assert!(
        text.contains("-- Running upgrade 8d3e5b1a0c27 -> b7a2c4e9d315"),
        "{text}"
    );
    assert!(!text.contains("<base> -> "), "{text}");
}

#[tokio::test]
async fn plan_shows_the_sql_of_pending_migrations_sqlite() {
    plan_shows_the_sql_of_pending_migrations(TestDb::sqlite()).await;
}

#[tokio::test]
async fn plan_shows_the_sql_of_pending_migrations_postgres() {
    plan_shows_the_sql_of_pending_migrations(TestDb::pg().await).await;
}
