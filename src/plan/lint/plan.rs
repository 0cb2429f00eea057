//! Lints the SQL a plan carries: each `sql` step's `up` (inline or from its file), in the
//! phase it stands in and as transactional as it says, minus the rules its `allow:` names.

use super::{lint_sql, Context, SqlFinding};
use crate::plan::{Finding, Plan, Severity, Step};

/// Every lint finding of the plan's `sql` steps, located at the step, in file order.
pub fn lint_plan(plan: &Plan) -> Vec<Finding> {
    let mut out = Vec::new();
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

    #[test]
    fn allow_on_the_step() {
        let yaml = "plan: p\nphases:\n  - name: only\n    kind: expand\n    steps:\n      - sql: { up: \"DROP TABLE legacy\", down: \"SELECT 1\", allow: [destructive-outside-contract, ban-drop-table] }\n";
        assert!(lint_plan(&plan(yaml)).is_empty());
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
