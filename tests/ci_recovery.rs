//! CI gating and recovery: rollback, dry run, verify, JUnit reports, exit codes, NDJSON events.

use phased::engine::events::Recorder;
use phased::engine::rollback::{rollback, RollbackOptions};
use phased::engine::{EngineError, RunOptions};
use phased::plan::LoadedPlan;
use phased::target::Target;

use crate::common::{self, TestDb};

fn quickstart() -> LoadedPlan {
    let path = common::repo_root().join("plans/quickstart.yaml");
    match phased::plan::load(&path) {
        Ok(p) => p,
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
    let loaded = quickstart();
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
            .all(|r| r.status == phased::target::StepStatus::RolledBack));
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
    let loaded = quickstart();
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
    assert_eq!(roll_back(&db, &loaded, Some("expand")).await.ok(), Some(vec![]));
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
    let loaded = quickstart();
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

