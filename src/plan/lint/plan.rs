//! Lints the SQL a plan carries: each `sql` step's `up` (inline or from its file), in the
//! phase it stands in and as transactional as it says, minus the rules its `allow:` names; and
//! lists the findings suppressed on purpose, with what suppressed them, for the dry run.

use std::path::Path;

use super::{lint, lint_file_text, lint_sql, Context, SqlFinding, Suppressed};
use crate::plan::{Finding, Plan, Severity, Step};

/// Every lint finding of the plan's `sql` steps, located at the step, in file order; and the
/// conversions that may fail on a value (`change_type`, `add_column` with `up`).
pub fn lint_plan(plan: &Plan) -> Vec<Finding> {
    let mut out = super::conversion::check(plan);
    for phase in &plan.phases.value {
        let kind = phase.value.kind.value;
        for step in &phase.value.steps.value {
            let Step::Sql(sql) = &step.value else {
                continue;
            };
            let Some(text) = sql.up_sql() else {
                continue;
            };
            let ctx = Context {
                phase: Some(kind),
                transactional: sql.transactional,
            };
            let origin = match &sql.file {
                Some(file) => format!("{}", file.display()),
                None => "its SQL".to_string(),
            };
            for f in lint_sql(text, &ctx, &sql.allow) {
                out.push(located(step.referenced, &origin, &f));
            }
        }
    }
    out
}

/// The findings suppressed in the SQL each step runs (a `sql` step's `up`, the migration files
/// a `migrations` step runs), as `(phase#N, line)`, in plan order: the dry run shows them under
/// the step, so a reviewer sees what was let through and why. A step's `allow:` gives its
/// reason as a YAML comment on its line (`allow: [rule]  # why`), read from `source`, the plan's
/// text.
pub fn suppressed_in_plan(plan: &Plan, source: &str, base: &Path) -> Vec<(String, String)> {
    let lines: Vec<&str> = source.lines().collect();
    let starts: Vec<u64> = plan
        .phases
        .value
        .iter()
        .flat_map(|p| p.value.steps.value.iter().map(|s| s.referenced.line()))
        .collect();
    let mut out = Vec::new();
    for phase in &plan.phases.value {
        let phase = &phase.value;
        for (index, step) in phase.steps.value.iter().enumerate() {
            let Step::Sql(sql) = &step.value else {
                continue;
            };
            let Some(text) = sql.up_sql() else {
                continue;
            };
            let ctx = Context {
                phase: Some(phase.kind.value),
                transactional: sql.transactional,
            };
            let origin = match &sql.file {
                Some(file) => file.display().to_string(),
                None => "its SQL".to_string(),
            };
            let id = format!("{}#{}", phase.name.value, index + 1);
            let line = step.referenced.line();
            let next = starts.iter().copied().filter(|l| *l > line).min();
            let reason = allow_reason(&lines, line, next);
            for mut s in lint(text, &ctx, &sql.allow).suppressed {
                if let (true, Some(reason)) = (s.by.starts_with("`allow:`"), &reason) {
                    s.by = format!("{} ({reason})", s.by);
                }
                out.push((id.clone(), suppressed_line(&origin, &s)));
            }
        }
    }
    for file in super::migrations::files_run(plan, base) {
        let Ok(text) = std::fs::read_to_string(&file.path) else {
            continue;
        };
        let origin = file.path.display().to_string();
        for s in lint_file_text(&text, Some(file.phase), false).suppressed {
            out.push((file.step_id.clone(), suppressed_line(&origin, &s)));
        }
    }
    out
}

/// The YAML comment on the line of a step's `allow:` key (1-based lines from `from` up to the
/// next step's `to`): `allow: [rule]  # the reason` gives `the reason`.
fn allow_reason(lines: &[&str], from: u64, to: Option<u64>) -> Option<String> {
    let first = usize::try_from(from).ok()?.checked_sub(1)?;
    let last = to
        .and_then(|t| usize::try_from(t).ok())
        .map_or(lines.len(), |t| t.saturating_sub(1));
    let line = lines
        .get(first..last.min(lines.len()))?
        .iter()
        .find(|l| l.contains("allow:"))?;
    let at = line.find("allow:")?;
    let rest = line.get(at..)?;
    let hash = rest.find(" #")?;
    let reason = rest.get(hash + 2..)?.trim();
    (!reason.is_empty()).then(|| reason.to_string())
}

fn suppressed_line(origin: &str, s: &Suppressed) -> String {
    let f = &s.finding;
    format!(
        "lint: {} at {origin}:{}:{} suppressed by {} — `{}`",
        f.rule, f.line, f.column, s.by, f.statement
    )
}

fn located(at: serde_saphyr::Location, origin: &str, f: &SqlFinding) -> Finding {
    let message = format!(
        "sql step, {origin}:{}:{}: {}",
        f.line,
        f.column,
        f.headline()
    );
    let finding = match f.severity {
        Severity::Error => Finding::error(at, message),
        Severity::Warning => Finding::warning(at, message),
    };
    finding.with_help(format!(
        "{}; or `allow: [{}]` on the step, or `-- phased: allow {} — reason` above the statement",
        f.help, f.rule, f.rule
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn plan(yaml: &str) -> Plan {
        match crate::plan::parse_str("plan.yaml", yaml, Path::new(".")) {
            Ok(loaded) => loaded.plan,
            Err(report) => panic!("{}", report.render_plain()),
        }
    }

    const DESTRUCTIVE: [&str; 4] = [
        "DROP TABLE legacy",
        "TRUNCATE audit_log",
        "ALTER TABLE accounts ALTER COLUMN email SET NOT NULL",
        "ALTER TABLE accounts RENAME COLUMN email TO email_address",
    ];

    fn with_step(kind: &str, sql: &str) -> String {
        format!(
            "plan: p\nphases:\n  - name: only\n    kind: {kind}\n    steps:\n      - sql: {{ up: \"{sql}\", down: \"SELECT 1\" }}\n"
        )
    }

    #[test]
    fn each_destructive_statement_in_each_phase_kind() {
        for kind in ["expand", "migrate", "switch-flag", "contract"] {
            for sql in DESTRUCTIVE {
                let findings = lint_plan(&plan(&with_step(kind, sql)));
                let destructive = findings
                    .iter()
                    .any(|f| f.message.contains("destructive-outside-contract"));
                assert_eq!(destructive, kind != "contract", "{sql} in {kind}");
                if kind != "contract" {
                    assert!(findings.iter().any(|f| f.severity == Severity::Error));
                    assert_eq!(findings[0].line, 6, "located at the step");
                }
            }
        }
    }

    /// Every rule that depends on the phase, each with a `sql` step in each phase kind: on
    /// everywhere but `contract`, where dropping and renaming is the point.
    #[test]
    fn each_phase_aware_rule_in_each_phase_kind() {
        let phase_aware: Vec<(&str, &str)> = vec![
            ("destructive-outside-contract", "DROP TABLE legacy"),
            ("ban-drop-column", "ALTER TABLE accounts DROP COLUMN legacy"),
            ("ban-drop-table", "DROP TABLE legacy"),
            (
                "ban-drop-not-null",
                "ALTER TABLE accounts ALTER COLUMN note DROP NOT NULL",
            ),
            (
                "renaming-column",
                "ALTER TABLE accounts RENAME COLUMN email TO email_address",
            ),
            ("renaming-table", "ALTER TABLE accounts RENAME TO clients"),
        ];
        let squawk_phase_aware: Vec<&str> = super::super::squawk_rules::RULES
            .iter()
            .filter(|r| r.old_code_breaks)
            .map(|r| r.name)
            .collect();
        for name in &squawk_phase_aware {
            assert!(
                phase_aware.iter().any(|(rule, _)| rule == name),
                "{name} is phase-aware and needs a case here"
            );
        }
        for kind in ["expand", "migrate", "switch-flag", "contract"] {
            for (rule, sql) in &phase_aware {
                let findings = lint_plan(&plan(&with_step(kind, sql)));
                let hit = findings
                    .iter()
                    .any(|f| f.message.contains(&format!(" {rule}: ")));
                assert_eq!(
                    hit,
                    kind != "contract",
                    "{rule} for `{sql}` in {kind}: {findings:?}"
                );
            }
        }
    }

    #[test]
    fn allow_on_the_step() {
        let yaml = "plan: p\nphases:\n  - name: only\n    kind: expand\n    steps:\n      - sql: { up: \"DROP TABLE legacy\", down: \"SELECT 1\", allow: [destructive-outside-contract, ban-drop-table] }\n";
        assert!(lint_plan(&plan(yaml)).is_empty());
    }

    #[test]
    fn suppressed_findings_are_listed_with_what_suppressed_them() {
        let yaml = "plan: p\nphases:\n  - name: grow\n    kind: expand\n    steps:\n      - sql: { up: \"SELECT 1\", down: \"SELECT 1\" }\n      - sql:\n          up: |\n            -- phased: allow table-rewrite — the table is tiny\n            VACUUM FULL settings;\n          down: SELECT 1\n          allow: [require-concurrent-index-creation]  # nothing to index here\n      - sql: { up: \"CREATE INDEX i ON t (c)\", down: \"DROP INDEX i\", allow: [require-concurrent-index-creation] }  # t has 12 rows\n      - sql: { up: \"CREATE INDEX j ON t (d)\", down: \"DROP INDEX j\", allow: [require-concurrent-index-creation] }\n";
        let listed = suppressed_in_plan(&plan(yaml), yaml, Path::new("."));
        assert_eq!(
            listed,
            vec![
                (
                    "grow#2".to_string(),
                    "lint: table-rewrite at its SQL:2:1 suppressed by phased: allow table-rewrite — the table is tiny — `VACUUM FULL settings`".to_string()
                ),
                (
                    "grow#3".to_string(),
                    "lint: require-concurrent-index-creation at its SQL:1:1 suppressed by `allow:` on the step (t has 12 rows) — `CREATE INDEX i ON t (c)`".to_string()
                ),
                (
                    "grow#4".to_string(),
                    "lint: require-concurrent-index-creation at its SQL:1:1 suppressed by `allow:` on the step — `CREATE INDEX j ON t (d)`".to_string()
                ),
            ]
        );
    }

    #[test]
    fn rendered_in_a_plan() {
        let yaml = with_step(
            "expand",
            "CREATE INDEX accounts_email_idx ON accounts (email)",
        );
        let findings = lint_plan(&plan(&yaml));
        let report = crate::plan::PlanReport {
            file: "plan.yaml".into(),
            source: yaml,
            findings,
        };
        insta::assert_snapshot!(report.render_plain());
    }
}
