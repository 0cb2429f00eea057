//! The JSON examples in docs/ci.md are what phased prints: each is parsed and compared, line by
//! line, with the output of the command it documents, run for real on a copy of the quickstart.
//! Times, paths and timestamps differ from run to run; the events, their fields and every
//! other value must not.

use crate::common::{phased_cmd, repo_root};

/// The ```json block that follows `after` in docs/ci.md, one value per line.
fn example(after: &str) -> Vec<serde_json::Value> {
    let doc = std::fs::read_to_string(repo_root().join("docs/ci.md")).expect("docs/ci.md");
    let start = doc
        .find(after)
        .unwrap_or_else(|| panic!("docs/ci.md has no `{after}`"));
    let block = &doc[start..];
    let open = block.find("```json\n").expect("a json block") + "```json\n".len();
    let body = &block[open..];
    let body = &body[..body.find("```").expect("the end of the block")];
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("docs/ci.md: {e}: {l}")))
        .collect()
}

/// Fields whose values belong to one run (durations, paths, clocks, the database's URL).
const VARYING: &[&str] = &[
    "elapsed_ms",
    "database",
    "path",
    "backup_created_at",
    "restored_at",
];

fn assert_like(documented: &[serde_json::Value], printed: &str) {
    let printed: Vec<serde_json::Value> = printed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("output: {e}: {l}")))
        .collect();
    assert_eq!(documented.len(), printed.len(), "{printed:#?}");
    for (doc, real) in documented.iter().zip(&printed) {
        assert_same_shape(doc, real, doc);
    }
}

fn assert_same_shape(doc: &serde_json::Value, real: &serde_json::Value, line: &serde_json::Value) {
    match (doc, real) {
        (serde_json::Value::Object(d), serde_json::Value::Object(r)) => {
            let keys = |m: &serde_json::Map<String, serde_json::Value>| {
                m.keys().cloned().collect::<Vec<_>>()
            };
            let (mut dk, mut rk) = (keys(d), keys(r));
            dk.sort();
            rk.sort();
            assert_eq!(dk, rk, "fields of {line}");
            for (key, value) in d {
                if !VARYING.contains(&key.as_str()) {
                    assert_same_shape(value, &r[key], line);
                }
            }
        }
        _ => assert_eq!(doc, real, "in {line}"),
    }
}

#[test]
fn the_json_examples_in_docs_ci_md_are_what_phased_prints() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plans = dir.path().join("plans");
    std::fs::create_dir(&plans).expect("plans folder");
    let plan = plans.join("quickstart.yaml");
    std::fs::copy(repo_root().join("plans/quickstart.yaml"), &plan).expect("copy");
    let db = format!("sqlite://{}", dir.path().join("phased.db").display());
    let run = |args: &[&str]| {
        let out = phased_cmd()
            .args(args)
            .args(["--database", &db])
            .output()
            .expect("phased");
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{args:?}: {stderr}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let plan = plan.display().to_string();

    run(&["run", &plan, "--until", "backfill"]);
    let printed = run(&["run", &plan, "--phase", "switch", "--format", "json"]);
    assert_like(
        &example("Example (`phased run plans/quickstart.yaml --phase switch --format json`)"),
        &printed,
    );

    run(&["run", &plan]);
    let backup = std::fs::read_dir(plans.join("backups"))
        .expect("the backup folder")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "sqlite"))
        .expect("the backup taken before contract");
    let printed = run(&[
        "restore",
        &backup.display().to_string(),
        "--yes",
        "--format",
        "json",
    ]);
    assert_like(
        &example("`phased restore BACKUP --yes --format json`"),
        &printed,
    );
}
