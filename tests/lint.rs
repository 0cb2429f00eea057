//! `phased lint` and the lint inside `phased validate`, end to end: exit codes, the three
//! output formats, suppression, and real-world migration files in the style of Django, Rails
//! and Alembic output (tests/fixtures/lint).

use predicates::prelude::*;

use crate::common::{phased_cmd, repo_root};

fn stdout_of(cmd: &mut assert_cmd::Command) -> (i32, String) {
    let out = cmd.output().expect("phased runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn the_shipped_migrations_lint_clean() {
    phased_cmd()
        .current_dir(repo_root())
        .args(["lint", "migrations"])
        .assert()
        .success()
        .stdout(predicate::str::contains("5 file(s): 0 error(s)"));
}

#[test]
fn framework_migrations_give_the_expected_findings() {
    let (code, stdout) = stdout_of(phased_cmd().current_dir(repo_root()).args([
        "lint",
        "--format",
        "json",
        "tests/fixtures/lint",
    ]));
    assert_eq!(code, 2, "errors exit 2");
    let findings: Vec<String> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            if v.get("rule").is_some() {
                format!(
                    "{}:{}:{} {} [{}]",
                    v["file"].as_str().unwrap_or(""),
                    v["line"],
                    v["column"],
                    v["rule"].as_str().unwrap_or(""),
                    v["severity"].as_str().unwrap_or("")
                )
            } else {
                v.to_string()
            }
        })
        .collect();
    // Alembic's autocommit_block: the CONCURRENTLY build between its COMMIT and BEGIN runs
    // outside a transaction, the foreign key after BEGIN inside one.
    let autocommit = "tests/fixtures/lint/alembic/upgrade_offline_autocommit_block.sql";
    assert!(!findings
        .iter()
        .any(|f| f.starts_with(&format!("{autocommit}:26:"))));
    assert!(findings.contains(&format!(
        "{autocommit}:30:1 constraint-missing-not-valid [error]"
    )));
    insta::assert_snapshot!(findings.join("\n"));
}

#[test]
fn human_output_shows_the_source_line_and_the_safe_way() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("change.sql");
    std::fs::write(
        &file,
        "-- widen the total\nALTER TABLE orders ALTER COLUMN total TYPE bigint;\n",
    )
    .expect("write");
    phased_cmd()
        .arg("lint")
        .arg(&file)
        .assert()
        .code(2)
        .stdout(predicate::str::contains(
            "change.sql:2:1: error: changing-column-type",
        ))
        .stdout(predicate::str::contains(
            "2 │ ALTER TABLE orders ALTER COLUMN total TYPE bigint;",
        ))
        .stdout(predicate::str::contains("`change_type`"))
        .stdout(predicate::str::contains(
            "1 file(s): 1 error(s), 0 warning(s)",
        ));
}

#[test]
fn github_format_annotates_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("vacuum.sql");
    std::fs::write(&file, "SELECT 1;\nVACUUM FULL invoices;\n").expect("write");
    let (code, stdout) = stdout_of(phased_cmd().current_dir(dir.path()).args([
        "lint",
        "--format",
        "github",
        "vacuum.sql",
    ]));
    assert_eq!(code, 2);
    assert!(
        stdout.starts_with(
            "::error file=vacuum.sql,line=2,col=1,title=phased lint%3A table-rewrite::VACUUM FULL rewrites"
        ),
        "{stdout}"
    );
}

#[test]
fn warnings_do_not_fail_and_comments_suppress() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("ok.sql");
    std::fs::write(
        &file,
        "-- phased: allow table-rewrite — run in the maintenance window\nVACUUM FULL invoices;\n\
         ALTER TABLE users RENAME COLUMN login TO username;\n",
    )
    .expect("write");
    phased_cmd()
        .arg("lint")
        .arg(&file)
        .assert()
        .success()
        .stdout(predicate::str::contains("0 error(s), 1 warning(s)"))
        .stdout(predicate::str::contains("renaming-column"));
}

#[test]
fn the_phase_flag_turns_on_the_phase_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("drop.sql");
    std::fs::write(&file, "DROP TABLE invoice_drafts;\n").expect("write");
    phased_cmd().arg("lint").arg(&file).assert().success();
    phased_cmd()
        .args(["lint", "--phase", "expand"])
        .arg(&file)
        .assert()
        .code(2)
        .stdout(predicate::str::contains("destructive-outside-contract"));
    phased_cmd()
        .args(["lint", "--phase", "contract"])
        .arg(&file)
        .assert()
        .success();
}

#[test]
fn a_missing_path_is_a_usage_error() {
    phased_cmd()
        .args(["lint", "/nonexistent/phased-lint.sql"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "cannot read /nonexistent/phased-lint.sql",
        ));
}

fn plan_with(dir: &std::path::Path, kind: &str, step: &str) -> std::path::PathBuf {
    let path = dir.join("plan.yaml");
    std::fs::write(
        &path,
        format!("plan: lint-test\nphases:\n  - name: only\n    kind: {kind}\n    steps:\n      - {step}\n"),
    )
    .expect("write");
    path
}

#[test]
fn validate_lints_sql_steps_phase_aware() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = plan_with(
        dir.path(),
        "expand",
        r#"sql: { up: "ALTER TABLE accounts DROP COLUMN legacy", down: "SELECT 1" }"#,
    );
    phased_cmd()
        .arg("validate")
        .arg(&plan)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "plan.yaml:6:9: error: sql step, its SQL:1:1: destructive-outside-contract",
        ))
        .stdout(predicate::str::contains("invalid — 1 lint error(s)"));
    let plan = plan_with(
        dir.path(),
        "contract",
        r#"sql: { up: "ALTER TABLE accounts DROP COLUMN legacy", down: "SELECT 1" }"#,
    );
    phased_cmd()
        .arg("validate")
        .arg(&plan)
        .assert()
        .success()
        .stdout(predicate::str::contains("plan.yaml: ok"));
}

#[test]
fn validate_honours_allow_and_rejects_unknown_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = plan_with(
        dir.path(),
        "expand",
        r#"sql: { up: "CREATE INDEX i ON accounts (email)", down: "DROP INDEX i", allow: [require-concurrent-index-creation] }"#,
    );
    phased_cmd().arg("validate").arg(&plan).assert().success();
    let plan = plan_with(
        dir.path(),
        "expand",
        r#"sql: { up: "SELECT 1", down: "SELECT 1", allow: [no-such-rule] }"#,
    );
    phased_cmd()
        .arg("validate")
        .arg(&plan)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("`allow` names `no-such-rule`"));
}

#[test]
fn validate_github_format_annotates_the_plan() {
    let dir = tempfile::tempdir().expect("tempdir");
    plan_with(
        dir.path(),
        "expand",
        r#"sql: { up: "CREATE INDEX CONCURRENTLY i ON accounts (email)", down: "SELECT 1" }"#,
    );
    let (code, stdout) = stdout_of(phased_cmd().current_dir(dir.path()).args([
        "validate",
        "--format",
        "github",
        "plan.yaml",
    ]));
    assert_eq!(code, 2);
    assert!(
        stdout.contains("::error file=plan.yaml,line=6,col=9,title=phased validate::sql step, its SQL:1:1: concurrently-in-transaction"),
        "{stdout}"
    );
}

#[test]
fn github_format_is_refused_elsewhere() {
    phased_cmd()
        .args(["status", "--format", "github", "plan.yaml"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("`--format github` is for"));
}

/// A folder of two revisions: a new table, then a drop of an old one (line 7 of its file).
fn migrations_folder(dir: &std::path::Path) {
    let folder = dir.join("migrations");
    std::fs::create_dir_all(&folder).expect("migrations folder");
    std::fs::write(
        folder.join("20261120_0900_aa11bb22cc33_add_invoices.sql"),
        "-- revision: aa11bb22cc33\n-- revises: none\n-- message: add invoices\n\n-- migrate:up\nCREATE TABLE invoices (id bigint PRIMARY KEY);\n\n-- migrate:down\nDROP TABLE invoices;\n",
    )
    .expect("write");
    std::fs::write(
        folder.join("20261121_0900_dd44ee55ff66_drop_drafts.sql"),
        "-- revision: dd44ee55ff66\n-- revises: aa11bb22cc33\n-- message: drop drafts\n\n-- migrate:up\n-- the drafts are gone\n  DROP TABLE invoice_drafts;\n",
    )
    .expect("write");
}

fn plan_text(phases: &[(&str, &str)]) -> String {
    let mut text = String::from("plan: lint-migrations\nphases:\n");
    for (i, (kind, to)) in phases.iter().enumerate() {
        text.push_str(&format!(
            "  - name: p{i}\n    kind: {kind}\n    steps:\n      - migrations: {{ dir: migrations, to: {to} }}\n"
        ));
    }
    text
}

/// Issue 16: the migration files a `migrations` step runs are linted in that step's phase, and
/// located in the migration file; a revision no step runs is not.
#[test]
fn validate_lints_each_migration_in_the_phase_of_the_step_that_runs_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    migrations_folder(dir.path());
    for kind in ["expand", "migrate"] {
        std::fs::write(
            dir.path().join("plan.yaml"),
            plan_text(&[("expand", "aa11bb22cc33"), (kind, "head")]),
        )
        .expect("write plan");
        let (code, stdout) = stdout_of(phased_cmd().current_dir(dir.path()).args([
            "validate",
            "--format",
            "github",
            "plan.yaml",
        ]));
        assert_eq!(code, 2, "{stdout}");
        assert!(
            stdout.contains(&format!(
                "::error file=./migrations/20261121_0900_dd44ee55ff66_drop_drafts.sql,line=7,col=3,title=phased lint%3A destructive-outside-contract::this statement drops a table, in `{kind}`"
            )),
            "{stdout}"
        );
        assert_eq!(stdout.matches("::error").count(), 1, "{stdout}");
        phased_cmd()
            .current_dir(dir.path())
            .args(["validate", "plan.yaml"])
            .assert()
            .code(2)
            .stdout(predicate::str::contains("invalid — 1 lint error(s)"));
    }
    // The drop is past the only step's `to`: nothing runs it, nothing flags it.
    std::fs::write(
        dir.path().join("plan.yaml"),
        plan_text(&[("expand", "aa11bb22cc33")]),
    )
    .expect("write plan");
    phased_cmd()
        .current_dir(dir.path())
        .args(["validate", "plan.yaml"])
        .assert()
        .success();
    // A comment on the statement suppresses it, with a reason the dry run shows.
    let drop = dir
        .path()
        .join("migrations/20261121_0900_dd44ee55ff66_drop_drafts.sql");
    let text = std::fs::read_to_string(&drop).expect("read");
    std::fs::write(
        &drop,
        text.replace(
            "-- the drafts are gone\n",
            "-- phased: allow destructive-outside-contract — the drafts table was never read\n",
        ),
    )
    .expect("write");
    std::fs::write(
        dir.path().join("plan.yaml"),
        plan_text(&[("expand", "head")]),
    )
    .expect("write plan");
    phased_cmd()
        .current_dir(dir.path())
        .args(["validate", "plan.yaml"])
        .assert()
        .success();
    phased_cmd()
        .current_dir(dir.path())
        .args(["plan", "plan.yaml", "--offline", "--dialect", "postgres"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "-- lint: destructive-outside-contract at ./migrations/20261121_0900_dd44ee55ff66_drop_drafts.sql:7:3 suppressed by phased: allow destructive-outside-contract — the drafts table was never read — `DROP TABLE invoice_drafts`",
        ))
        .stdout(predicate::str::contains(
            "DROP TABLE invoice_drafts;\n--   takes ACCESS EXCLUSIVE on invoice_drafts",
        ));
}

/// Issue 16: `phased plan` shows the lock each statement of a `sql` step takes, and a
/// suppressed finding's rule and reason.
#[test]
fn the_dry_run_shows_each_statements_lock_and_what_was_suppressed() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("plan.yaml"),
        "plan: dry-lint\nphases:\n  - name: grow\n    kind: expand\n    steps:\n      - sql:\n          up: |\n            ALTER TABLE accounts ADD COLUMN note text;\n            -- phased: allow require-concurrent-index-creation — accounts has 40 rows\n            CREATE INDEX accounts_note_idx ON accounts (note);\n            UPDATE settings SET v = 1;\n          down: SELECT 1\n",
    )
    .expect("write plan");
    let (code, stdout) = stdout_of(phased_cmd().current_dir(dir.path()).args([
        "plan",
        "plan.yaml",
        "--offline",
        "--dialect",
        "postgres",
    ]));
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("-- lint: require-concurrent-index-creation at its SQL:3:1 suppressed by phased: allow require-concurrent-index-creation — accounts has 40 rows — `CREATE INDEX accounts_note_idx ON accounts (note)`"), "{stdout}");
    assert!(
        stdout.contains("--   takes ACCESS EXCLUSIVE on accounts")
            && stdout.contains("--   takes SHARE on accounts")
            && stdout.contains("--   takes ROW EXCLUSIVE on settings"),
        "{stdout}"
    );
}
