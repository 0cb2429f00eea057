//! Rendered errors for bad plans: each names file:line:column, says what was expected, and shows
//! the source line with a caret. Snapshots in tests/snapshots/.

use std::path::Path;

fn errors(yaml: &str) -> String {
    match phased::plan::parse_str("plan.yaml", yaml, Path::new("tests")) {
        Ok(_) => panic!("the plan was accepted, but it is invalid:\n{yaml}"),
        Err(report) => report.render_plain(),
    }
}

const HEAD: &str = "plan: demo\nphases:\n";

fn with_phases(phases: &str) -> String {
    format!("{HEAD}{phases}")
}

#[test]
fn yaml_syntax_error() {
    insta::assert_snapshot!(errors("plan: demo\nphases: [\n  - name: x\n"));
}

#[test]
fn unknown_top_level_key() {
    insta::assert_snapshot!(errors(
        "plan: demo\ndescripton: typo\nphases:\n  - name: e\n    kind: expand\n    steps:\n      - drop_index: { name: i }\n"
    ));
}

#[test]
fn unknown_step_field() {
    insta::assert_snapshot!(errors(&with_phases(
        "  - name: e\n    kind: expand\n    steps:\n      - add_column: { table: t, nme: c, type: text }\n"
    )));
}

#[test]
fn missing_field() {
    insta::assert_snapshot!(errors(&with_phases(
        "  - name: e\n    kind: expand\n    steps:\n      - add_column: { table: t, name: c }\n"
    )));
}

#[test]
fn wrong_type() {
    insta::assert_snapshot!(errors(&with_phases(
        "  - name: m\n    kind: migrate\n    steps:\n      - backfill: { table: t, set: { c: \"1\" }, batch_size: lots }\n"
    )));
}

#[test]
fn name_longer_than_postgres_keeps() {
    insta::assert_snapshot!(errors(&with_phases(
        "  - name: e\n    kind: expand\n    steps:\n      - add_column: { table: accounts, name: email_address_normalised_to_lower_case_for_lookups_by_the_new_app, type: text }\n"
    )));
}

#[test]
fn table_name_with_two_dots() {
    insta::assert_snapshot!(errors(&with_phases(
        "  - name: e\n    kind: expand\n    steps:\n      - drop_table: { name: db.app.accounts }\n"
    )));
}

#[test]
fn unknown_step_kind() {
    insta::assert_snapshot!(errors(&with_phases(
        "  - name: e\n    kind: expand\n    steps:\n      - add_colum: { table: t, name: c, type: text }\n"
    )));
}

#[test]
fn unknown_phase_kind() {
    insta::assert_snapshot!(errors(&with_phases(
        "  - name: e\n    kind: expnad\n    steps:\n      - sql: SELECT 1\n"
    )));
}

#[test]
fn bad_duration() {
    insta::assert_snapshot!(errors(
        "plan: demo\ndefaults:\n  lock_timeout: 2 seconds\nphases:\n  - name: e\n    kind: expand\n    steps:\n      - sql: SELECT 1\n"
    ));
}

#[test]
fn duplicate_phase_names() {
    insta::assert_snapshot!(errors(&with_phases(
        "  - name: e\n    kind: expand\n    steps:\n      - sql: SELECT 1\n  - name: e\n    kind: contract\n    steps:\n      - sql: SELECT 2\n"
    )));
}

#[test]
fn empty_phase() {
    insta::assert_snapshot!(errors(&with_phases(
        "  - name: e\n    kind: expand\n    steps: []\n"
    )));
}

#[test]
fn destructive_step_outside_contract() {
    insta::assert_snapshot!(errors(&with_phases(
        "  - name: e\n    kind: expand\n    steps:\n      - drop_column: { table: t, name: c }\n"
    )));
}

#[test]
fn backfill_outside_migrate() {
    insta::assert_snapshot!(errors(&with_phases(
        "  - name: e\n    kind: expand\n    steps:\n      - backfill: { table: t, set: { c: \"1\" } }\n"
    )));
}

#[test]
fn flag_outside_switch_flag() {
    insta::assert_snapshot!(errors(&with_phases(
        "  - name: m\n    kind: migrate\n    steps:\n      - flag: { name: f, value: true }\n"
    )));
}

#[test]
fn sql_file_missing() {
    insta::assert_snapshot!(errors(&with_phases(
        "  - name: e\n    kind: expand\n    steps:\n      - sql: { file: no/such/file.sql }\n"
    )));
}

#[test]
fn gate_refers_to_later_phase() {
    insta::assert_snapshot!(errors(&with_phases(
        "  - name: e\n    kind: expand\n    gate:\n      - phase_done: c\n    steps:\n      - sql: SELECT 1\n  - name: c\n    kind: contract\n    steps:\n      - sql: SELECT 2\n"
    )));
}

#[test]
fn volatile_default_on_existing_table() {
    insta::assert_snapshot!(errors(&with_phases(
        "  - name: e\n    kind: expand\n    steps:\n      - add_column: { table: t, name: created, type: timestamptz, default: \"now()\" }\n"
    )));
}

#[test]
fn several_errors_are_all_reported() {
    let out = errors(&with_phases(
        "  - name: e\n    kind: expand\n    steps:\n      - drop_table: { name: old }\n      - flag: { name: f, value: true }\n  - name: e\n    kind: migrate\n    steps: []\n",
    ));
    assert_eq!(out.matches("error:").count(), 4, "{out}");
    insta::assert_snapshot!(out);
}

#[test]
fn valid_example_plans_pass() {
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/plans")).expect("plans/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            if let Err(report) = phased::plan::load(&path) {
                panic!("{} is invalid:\n{}", path.display(), report.render_plain());
            }
        }
    }
}

/// Two `dual_write`s on one table would be one trigger, the second replacing the first's: the
/// second is refused where it stands (one after a `drop_dual_write` of the table is fine).
#[test]
fn a_second_dual_write_on_a_table() {
    let out = errors(&with_phases(
        "  - name: e\n    kind: expand\n    steps:\n      - dual_write: { table: t, set: { a: \"1\" } }\n      - dual_write: { table: t, set: { b: \"2\" } }\n",
    ));
    assert!(out.contains("plan.yaml:7:9"), "{out}");
    insta::assert_snapshot!(out);
}

/// Mistakes that serde finds (an unknown field, a wrong type, a missing field) are all
/// reported, each where it stands, not only the first.
#[test]
fn three_mistakes_in_three_steps_are_three_errors() {
    let out = errors(&with_phases(
        "  - name: e\n    kind: expand\n    steps:\n      - add_column: { table: t, nme: c, type: text }\n      - create_index:\n          table: t\n          name: t_idx\n          columns: [c]\n          unique: maybe\n      - add_check: { table: t, name: t_chk }\n",
    ));
    assert_eq!(out.matches("error:").count(), 3, "{out}");
    for at in ["plan.yaml:6:", "plan.yaml:11:", "plan.yaml:12:"] {
        assert!(out.contains(at), "no error at {at}:\n{out}");
    }
    insta::assert_snapshot!(out);
}

#[test]
fn max_latency_impact_without_its_x() {
    insta::assert_snapshot!(errors(&with_phases(
        "  - name: m\n    kind: migrate\n    steps:\n      - backfill:\n          table: t\n          set: { c: \"1\" }\n          max_latency_impact: 1.5\n"
    )));
}

#[test]
fn max_latency_impact_below_one() {
    insta::assert_snapshot!(errors(&with_phases(
        "  - name: m\n    kind: migrate\n    steps:\n      - backfill: { table: t, set: { c: \"1\" }, max_latency_impact: 0.5x }\n"
    )));
}

#[test]
fn throttle_auto_with_a_fixed_knob() {
    insta::assert_snapshot!(errors(&with_phases(
        "  - name: m\n    kind: migrate\n    steps:\n      - backfill: { table: t, set: { c: \"1\" }, throttle: auto, pause: 10ms }\n"
    )));
}

#[test]
fn max_latency_impact_under_fixed_knobs() {
    insta::assert_snapshot!(errors(&with_phases(
        "  - name: m\n    kind: migrate\n    steps:\n      - backfill: { table: t, set: { c: \"1\" }, max_rows_per_second: 500, max_latency_impact: 2x }\n"
    )));
}
