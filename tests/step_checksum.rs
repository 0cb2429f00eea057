//! Step checksums (drift detection) follow what the plan file writes, not phased's defaults:
//! a release of phased that changes a default (a backfill's `pause`) leaves done steps done.
//! Databases whose state was written by earlier releases hold checksums of the serialized model
//! (defaults included); those are still accepted.

use phased::engine::{EngineError, Event, RunOptions};
use phased::plan::{PlanDuration, Step};
use sha2::{Digest, Sha256};

use crate::common::{on_both, phased_cmd, plan, run, run_ok, TestDb};

/// The backfill leaves `pause`, `target_batch_time` and `batch_size` to phased's defaults.
const PLAN: &str = r#"
plan: sums
phases:
  - name: expand
    kind: expand
    steps:
      - create_table:
          name: items
          columns:
            - { name: id, type: integer, primary_key: true }
            - { name: name, type: text }
            - { name: name_lower, type: text }
      - sql:
          up: "INSERT INTO items (id, name) VALUES (1, 'One'), (2, 'Two'), (3, 'Three')"
          down: DELETE FROM items
  - name: backfill
    kind: migrate
    steps:
      - backfill: { table: items, set: { name_lower: "lower(name)" }, where: "name_lower IS NULL" }
"#;

fn started(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::StepStart { step, .. } => Some(format!("{}#{}", step.phase, step.step)),
            _ => None,
        })
        .collect()
}

/// A plan run to done, then the same plan file read by a phased whose default `pause` (and
/// batch time) differ: the parsed step differs, what the user wrote does not, so nothing is
/// drift and nothing runs again. A change the user writes is still drift.
async fn a_changed_default_is_not_drift(db: TestDb) {
    run_ok(&db, &plan(PLAN)).await;
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE name_lower = lower(name)")
            .await,
        3
    );

    let mut next_release = plan(PLAN);
    let step = &mut next_release.plan.phases.value[1].value.steps.value[0].value;
    let before = serde_json::to_string(&*step).expect("serialize");
    let Step::Backfill(backfill) = step else {
        panic!("the migrate phase holds the backfill");
    };
    backfill.pause = Some(PlanDuration::from_millis(50));
    backfill.target_batch_time = Some(PlanDuration::from_millis(5));
    let after = serde_json::to_string(&*step).expect("serialize");
    assert_ne!(
        before, after,
        "the step as phased parses it changed (its defaults did)"
    );
    let events = match run(&db, &next_release, RunOptions::default()).await {
        Ok(events) => events,
        Err((e, _)) => panic!("a changed default of phased was taken for drift: {e}"),
    };
    assert!(
        started(&events).is_empty(),
        "done steps ran again: {events:?}"
    );

    // What the user writes still counts: writing the new pause into the plan is a change.
    let written = PLAN.replace(
        "where: \"name_lower IS NULL\" }",
        "where: \"name_lower IS NULL\", pause: 50ms }",
    );
    assert_ne!(written, PLAN);
    match run(&db, &plan(&written), RunOptions::default()).await {
        Err((EngineError::Drift { step, .. }, events)) => {
            assert_eq!(step, "backfill#1");
            assert!(events.is_empty(), "nothing ran: {events:?}");
        }
        Err((other, _)) => panic!("expected drift, got {other}"),
        Ok(_) => panic!("a step the user changed was not drift"),
    }
}
on_both!(a_changed_default_is_not_drift);

/// The checksum phased wrote before it hashed what the plan file writes: sha256 of the step's
/// serialized model (phased's defaults included). Computed here, not by phased, so this pins the
/// format databases in the field hold.
fn todays_checksum(step: &Step) -> String {
    let json = serde_json::to_string(step).expect("serialize");
    Sha256::digest(json.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn steps_table(db: &TestDb) -> &'static str {
    if db.is_pg() {
        "phased.steps"
    } else {
        "phased_steps"
    }
}

/// Every `"drift": true` in `phased status --format json`, as `phase#step`.
fn drifted(status: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for phase in status["phases"].as_array().expect("phases") {
        for step in phase["steps"].as_array().expect("steps") {
            if step["drift"] == serde_json::Value::Bool(true) {
                out.push(format!(
                    "{}#{}",
                    phase["name"].as_str().unwrap_or("?"),
                    step["step"]
                ));
            }
        }
    }
    out
}

fn phased(args: &[&str]) -> (i32, String, String) {
    let out = phased_cmd().args(args).output().expect("phased");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A state whose done steps carry checksums in the earlier format: `phased run` and
/// `phased status` accept them; a checksum in neither format is drift.
async fn checksums_of_earlier_releases_are_accepted(db: TestDb) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("plan.yaml");
    std::fs::write(&file, PLAN).expect("write plan");
    let plan_file = file.to_str().expect("utf-8 path");
    let url = db.url();
    let (code, _, stderr) = phased(&["run", plan_file, "--database", &url]);
    assert_eq!(code, 0, "{stderr}");

    let loaded = phased::plan::load(&file).expect("plan loads");
    let table = steps_table(&db);
    for (step, def) in loaded.plan.step_refs() {
        assert_ne!(
            step.checksum,
            todays_checksum(def),
            "phased now records another format, so the earlier one is what this test exercises"
        );
        db.execute(&format!(
            "UPDATE {table} SET checksum = '{}' WHERE plan = 'sums' AND phase = '{}' AND step_index = {}",
            todays_checksum(def),
            step.phase,
            step.index
        ))
        .await;
    }

    let (code, stdout, stderr) =
        phased(&["run", plan_file, "--database", &url, "--format", "json"]);
    assert_eq!(
        code, 0,
        "a state of an earlier release was refused:\n{stdout}\n{stderr}"
    );
    assert!(
        !stdout.contains("\"step_start\""),
        "done steps ran again:\n{stdout}"
    );
    let (code, stdout, stderr) =
        phased(&["status", plan_file, "--database", &url, "--format", "json"]);
    assert_eq!(code, 0, "{stderr}");
    let status: serde_json::Value = serde_json::from_str(&stdout).expect("status JSON");
    assert!(drifted(&status).is_empty(), "{stdout}");
    let (code, stdout, _) = phased(&["status", plan_file, "--database", &url]);
    assert_eq!(code, 0);
    assert!(!stdout.to_lowercase().contains("drift"), "{stdout}");

    // A checksum in neither format is drift, for both commands.
    db.execute(&format!(
        "UPDATE {table} SET checksum = '{}' WHERE plan = 'sums' AND phase = 'backfill' AND step_index = 0",
        "0".repeat(64)
    ))
    .await;
    let (code, _, stderr) = phased(&["run", plan_file, "--database", &url]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("drift: step backfill#1"), "{stderr}");
    let (_, stdout, _) = phased(&["status", plan_file, "--database", &url, "--format", "json"]);
    let status: serde_json::Value = serde_json::from_str(&stdout).expect("status JSON");
    assert_eq!(drifted(&status), vec!["backfill#1"], "{stdout}");
}
on_both!(checksums_of_earlier_releases_are_accepted);
