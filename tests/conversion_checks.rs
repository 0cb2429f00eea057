//! Issue 13's "let `validate`/`verify` warn where they can see it coming": a conversion `up`
//! cannot make (a `change_type` to integer over text holding 'abc') fails the old application's
//! writes and stops the backfill. `validate` warns offline by type; `verify` evaluates `up` over
//! the real target's rows, read-only, and names the first row that fails.

use std::time::Duration;

use phased::db::conversion_check::Conversion;

use crate::common::{self, phased_cmd, TestDb};

fn output_of(output: &std::process::Output) -> (i32, String, String) {
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn write_plan(dir: &tempfile::TempDir, yaml: &str) -> std::path::PathBuf {
    let path = dir.path().join("plan.yaml");
    std::fs::write(&path, yaml).expect("write plan");
    path
}

// ─── validate ────────────────────────────────────────────────────────────────────────────────

const VALIDATE_PLAN: &str = r#"plan: conversions
phases:
  - name: expand
    kind: expand
    steps:
      - create_table:
          name: counters
          columns:
            - { name: id, type: bigint, primary_key: true }
            - { name: hits, type: integer }
      - change_type: { table: counters, column: hits, type: bigint }
      - change_type: { table: orders, column: total, type: integer }
      - change_type: { table: orders, column: placed, type: date }
      - change_type: { table: orders, column: code, type: "varchar(8)" }
      - add_column: { table: orders, name: meta, type: jsonb, up: "payload::jsonb" }
      - add_column: { table: orders, name: total_int, type: integer, up: "CASE WHEN total ~ '^[0-9]+$' THEN total::integer END" }
      - add_column: { table: orders, name: email_lower, type: text, up: "lower(email)" }
  - name: migrate
    kind: migrate
    steps: []
  - name: contract
    kind: contract
    steps: []
"#;

/// Each warning at its step (file:line:col), and none where nothing can fail: a widening the
/// plan can see (`counters.hits` is made `integer` by the plan), an `up` that guards itself with
/// `CASE`, an `up` without a cast.
#[test]
fn validate_warns_at_each_conversion_that_may_fail() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_plan(&dir, VALIDATE_PLAN);
    let (code, stdout, _) = output_of(
        &phased_cmd()
            .current_dir(dir.path())
            .args(["validate", "--format", "github", "plan.yaml"])
            .output()
            .expect("phased validate"),
    );
    assert_eq!(code, 0, "warnings do not fail validate:\n{stdout}");
    let ours: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("fails for") || l.contains("truncates"))
        .collect();
    insta::assert_snapshot!(ours.join("\n"));
    // A change_type's backfill fills the shadow column the plan itself adds: rollback drops
    // it, so no `down` is asked for (regression: every change_type drew that warning).
    assert!(
        !stdout.contains("writes columns that existed before the plan"),
        "{stdout}"
    );

    // The human form: located, with the consequence and what to do.
    let (code, stdout, stderr) = output_of(
        &phased_cmd()
            .current_dir(dir.path())
            .args(["validate", "plan.yaml"])
            .output()
            .expect("phased validate"),
    );
    assert_eq!(code, 0);
    assert!(stdout.contains("warning(s)"), "{stdout}");
    assert!(
        stderr.contains(
            "plan.yaml:12:9: warning: `change_type orders.total → integer`: converting `total` to `integer`"
        ),
        "{stderr}"
    );
    // miette wraps lines: compare the words.
    let words = stderr.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        words.contains("and the backfill stops on the first such row already stored"),
        "{stderr}"
    );
}

// ─── verify: the target's rows ───────────────────────────────────────────────────────────────

const TO_INTEGER: &str = "plan: total-to-integer\nchanges:\n  - change_type: { table: orders, column: total, type: integer }\n";

/// Fifty orders whose `total` is text holding integers, but for `bad` (if any) at id `at`.
async fn orders(db: &TestDb, bad: Option<(i64, &str)>) {
    db.execute("CREATE TABLE orders (id bigint PRIMARY KEY, total text, payload text)")
        .await;
    let mut values = Vec::new();
    for id in 1..=50i64 {
        let total = match bad {
            Some((at, value)) if at == id => value.to_string(),
            _ => (id * 100).to_string(),
        };
        values.push(format!("({id}, '{total}', '{{\"id\": {id}}}')"));
    }
    db.execute(&format!("INSERT INTO orders VALUES {}", values.join(", ")))
        .await;
}

/// Everything a run would leave on the target: the schema, the rows, phased's own state.
async fn target_state(db: &TestDb) -> (Vec<String>, Option<String>, i64) {
    let mut target = db.target("verify-test").await;
    let schema =
        phased::with_target!(&mut target, t => t.schema_snapshot().await).expect("schema snapshot");
    drop(target);
    let rows = match db {
        TestDb::Pg(_) => {
            db.text("SELECT string_agg(id || ':' || total || ':' || payload, ',' ORDER BY id) FROM orders")
                .await
        }
        TestDb::Sqlite(_) => {
            db.text("SELECT group_concat(id || ':' || total || ':' || payload, ',') FROM (SELECT * FROM orders ORDER BY id)")
                .await
        }
    };
    let state = match db {
        TestDb::Pg(_) => {
            db.scalar("SELECT count(*) FROM pg_namespace WHERE nspname = 'phased'")
                .await
        }
        TestDb::Sqlite(_) => {
            db.scalar("SELECT count(*) FROM sqlite_schema WHERE name LIKE 'phased%'")
                .await
        }
    };
    (schema, rows, state)
}

fn verify_json(db: &TestDb, plan: &std::path::Path) -> (i32, serde_json::Value) {
    let (code, stdout, stderr) = output_of(
        &phased_cmd()
            .args(["verify", "--format", "json", "--database", &db.url()])
            .arg(plan)
            .output()
            .expect("phased verify"),
    );
    let result = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "verify_result")
        .unwrap_or_else(|| panic!("no verify_result in:\n{stdout}\n{stderr}"));
    (code, result)
}

#[tokio::test]
async fn verify_names_the_row_up_cannot_convert_postgres() {
    let db = TestDb::pg().await;
    orders(&db, Some((37, "abc"))).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = write_plan(&dir, TO_INTEGER);
    let before = target_state(&db).await;

    let (code, stdout, stderr) = output_of(
        &phased_cmd()
            .args(["verify", "--database", &db.url()])
            .arg(&plan)
            .output()
            .expect("phased verify"),
    );
    // A warning, not a failure: the rehearsal passed; the data needs fixing.
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.starts_with("verify passed"), "{stdout}");
    let warning = stdout
        .lines()
        .find(|l| l.starts_with("warning: expand#1 change_type orders.total → integer"))
        .unwrap_or_else(|| panic!("no warning in:\n{stdout}"));
    assert!(
        warning.contains("the first row that fails is id=37"),
        "{warning}"
    );
    assert!(
        warning.contains("invalid input syntax for type integer: \"abc\""),
        "{warning}"
    );
    assert!(warning.contains("the backfill stops there"), "{warning}");

    let (code, result) = verify_json(&db, &plan);
    assert_eq!(code, 0);
    assert_eq!(result["result"], "passed");
    let check = &result["data_checks"][0];
    assert_eq!(check["conversion"], "fails", "{result}");
    assert_eq!(check["step"], "expand#1");
    assert_eq!(check["table"], "orders");
    assert_eq!(check["row"], "id=37");
    assert!(check["error"]
        .as_str()
        .is_some_and(|e| e.contains("\"abc\"") && e.contains("22P02")));

    // Verify left the target as it found it: schema, rows, and no state of phased's.
    assert_eq!(target_state(&db).await, before);
    assert_eq!(before.2, 0);
}

#[tokio::test]
async fn verify_is_quiet_about_data_that_converts_postgres() {
    let db = TestDb::pg().await;
    orders(&db, None).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = write_plan(&dir, TO_INTEGER);
    let before = target_state(&db).await;

    let (code, stdout, stderr) = output_of(
        &phased_cmd()
            .args(["verify", "--database", &db.url()])
            .arg(&plan)
            .output()
            .expect("phased verify"),
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(!stdout.contains("warning"), "{stdout}");
    assert!(
        stdout.contains(
            "data: expand#1 change_type orders.total → integer: `CAST((CAST(\"total\" AS integer)) AS integer)` converts all 50 existing row(s) of orders"
        ),
        "{stdout}"
    );
    let (_, result) = verify_json(&db, &plan);
    assert_eq!(result["data_checks"][0]["conversion"], "converts");
    assert_eq!(result["data_checks"][0]["rows"], 50);
    assert_eq!(target_state(&db).await, before);
}

/// A check that runs out of time says so, and never that the rows convert.
#[tokio::test]
async fn a_check_that_runs_out_of_time_is_cut_short_postgres() {
    let db = TestDb::pg().await;
    orders(&db, None).await;
    // 50 rows of 20 ms each (correlated with the row, so evaluated per row) against 200 ms.
    let loaded = common::plan(
        "plan: slow-up\nchanges:\n  - add_column: { table: orders, name: total_int, type: integer, up: \"total::integer + (SELECT 0 FROM pg_sleep(0.02 + 0 * id))\" }\n",
    );
    let mut target = db.target("slow-up").await;
    let checks = phased::with_target!(&mut target, t => phased::engine::verify::check_data(
        t,
        &loaded,
        Duration::from_millis(200),
    )
    .await);
    assert_eq!(checks.len(), 1, "{checks:?}");
    assert_eq!(checks[0].found, Conversion::CutShort { timeout_ms: 200 });
    assert!(checks[0].is_warning());
}

/// SQLite's CAST does not fail ('abc' becomes 0), so the default `up` converts every row; an
/// `up` of the plan's own that raises an error (json() of text that is not JSON) is found.
#[tokio::test]
async fn verify_on_sqlite_finds_what_can_fail_there() {
    let db = TestDb::sqlite();
    orders(&db, Some((37, "abc"))).await;
    db.execute("UPDATE orders SET payload = 'not json' WHERE id = 12")
        .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = write_plan(
        &dir,
        "plan: sqlite-checks\nchanges:\n  - change_type: { table: orders, column: total, type: integer }\n  - add_column: { table: orders, name: doc, type: text, up: \"json(payload)\" }\n",
    );
    let before = target_state(&db).await;
    let (code, result) = verify_json(&db, &plan);
    assert_eq!(code, 0, "{result}");
    let checks = result["data_checks"].as_array().expect("data_checks");
    assert_eq!(checks.len(), 2, "{result}");
    assert_eq!(checks[0]["conversion"], "converts");
    assert_eq!(checks[0]["rows"], 50);
    assert_eq!(checks[1]["conversion"], "fails");
    assert_eq!(checks[1]["row"], "id=12");
    assert!(checks[1]["error"]
        .as_str()
        .is_some_and(|e| e.contains("malformed JSON")));
    assert_eq!(target_state(&db).await, before);
}
