//! `add_column`'s `type` and `default`, checked like raw SQL: on a table the plan did not
//! create, the step runs `ALTER TABLE … ADD COLUMN c TYPE [DEFAULT d]`, and whatever in it
//! rewrites the table under ACCESS EXCLUSIVE — a volatile default (`random()`,
//! `clock_timestamp()`, `gen_random_uuid()`), a `serial` type, `GENERATED … STORED` — is an
//! error located at the field that asks for it. A default evaluated once (`now()`) is refused
//! too: every existing row would get the deploy's time. Run when the plan is loaded, so `run`
//! refuses such a plan as `validate` does.

use std::collections::{HashMap, HashSet};

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use super::{lint_sql, Context};
use crate::ops::add_column::AddColumn;
use crate::plan::{Finding, Plan, Severity, Step};

/// The rules that read what `type` and `default` ask for (the rest concern SQL a step does not
/// write: its NOT NULL is checked by `validate`, its lock is the step's).
const RULES: [&str; 2] = ["adding-field-with-default", "table-rewrite"];

/// Where an `add_column` step writes its `type` and `default`, by the step's location.
#[derive(Debug, Clone, Copy, Default)]
struct Fields {
    ty: Option<Location>,
    default: Option<Location>,
}

/// The findings of every `add_column` step of `plan` (whose text is `source`).
pub fn check(plan: &Plan, source: &str) -> Vec<Finding> {
    let fields = field_locations(source);
    let mut created: HashSet<&str> = HashSet::new();
    let mut out = Vec::new();
    for phase in &plan.phases.value {
        let kind = phase.value.kind.value;
        for step in &phase.value.steps.value {
            match &step.value {
                Step::CreateTable(t) => {
                    created.insert(t.name.as_str());
                }
                Step::AddColumn(c) if !created.contains(c.table.as_str()) => {
                    let at = fields
                        .get(&(step.referenced.line(), step.referenced.column()))
                        .copied()
                        .unwrap_or_default();
                    let ty_at = at.ty.unwrap_or(step.referenced);
                    let default_at = at.default.unwrap_or(step.referenced);
                    out.extend(check_step(c, kind, ty_at, default_at));
                }
                _ => {}
            }
        }
    }
    out
}

fn check_step(
    c: &AddColumn,
    kind: crate::plan::PhaseKind,
    ty_at: Location,
    default_at: Location,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let volatile = c.default.as_deref().and_then(volatile_call);
    if let (Some(func), Some(default)) = (volatile, &c.default) {
        out.push(
            Finding::error(
                default_at,
                format!(
                    "`add_column {}.{}` has the non-constant default `{default}`",
                    c.table, c.name
                ),
            )
            .with_help(format!(
                "{}; SQLite refuses a non-constant default in ADD COLUMN altogether. Add the column \
                 without a default, fill it with a `backfill` step, and set the default for new rows \
                 with a `sql` step",
                default_cost(func)
            )),
        );
    }
    let mut sql = format!(
        "ALTER TABLE {} ADD COLUMN {} {}",
        c.table.quoted(),
        c.name.quoted(),
        c.ty
    );
    if let Some(default) = &c.default {
        sql.push_str(&format!(" DEFAULT {default}"));
    }
    let ctx = Context {
        phase: Some(kind),
        transactional: true,
    };
    for f in lint_sql(&sql, &ctx, &[]) {
        if !RULES.contains(&f.rule) {
            continue;
        }
        let in_type = f.rule == "table-rewrite" || c.ty.to_ascii_uppercase().contains("GENERATED");
        if !in_type && volatile.is_some() {
            continue; // said above, in phased's words
        }
        let (at, field) = if in_type {
            (ty_at, "type")
        } else {
            (default_at, "default")
        };
        let message = format!(
            "`add_column {}.{}`: its `{field}` — {}: {}",
            c.table, c.name, f.rule, f.message
        );
        let finding = match f.severity {
            Severity::Error => Finding::error(at, message),
            Severity::Warning => Finding::warning(at, message),
        };
        out.push(finding.with_help(f.help));
    }
    out
}

/// The location of each `add_column` step's `type` and `default`, keyed by the step's line
/// and column: a second, generic reading of the file (empty should it fail; the step's own
/// location is used then).
fn field_locations(source: &str) -> HashMap<(u64, u64), Fields> {
    #[derive(Deserialize)]
    struct WrittenPlan {
        #[serde(default)]
        phases: Vec<WrittenPhase>,
    }
    #[derive(Deserialize)]
    struct WrittenPhase {
        #[serde(default)]
        steps: Vec<Spanned<WrittenStep>>,
    }
    #[derive(Deserialize)]
    struct WrittenStep {
        #[serde(default)]
        add_column: Option<WrittenAddColumn>,
    }
    #[derive(Deserialize)]
    struct WrittenAddColumn {
        #[serde(default, rename = "type")]
        ty: Option<Spanned<IgnoredAny>>,
        #[serde(default)]
        default: Option<Spanned<IgnoredAny>>,
    }

    let Ok(plan) = serde_saphyr::from_str::<WrittenPlan>(source) else {
        return HashMap::new();
    };
    plan.phases
        .into_iter()
        .flat_map(|p| p.steps)
        .filter_map(|step| {
            let c = step.value.add_column?;
            Some((
                (step.referenced.line(), step.referenced.column()),
                Fields {
                    ty: c.ty.map(|t| t.referenced),
                    default: c.default.map(|d| d.referenced),
                },
            ))
        })
        .collect()
}

/// What a non-constant default costs on PostgreSQL when the column is added to a live table.
fn default_cost(func: &str) -> String {
    // Stable functions (the transaction's timestamp) are evaluated once since PostgreSQL 11: no
    // rewrite, but every existing row gets the deploy's time. Volatile ones force a rewrite.
    const ONCE: &[&str] = &[
        "now",
        "transaction_timestamp",
        "statement_timestamp",
        "current_timestamp",
        "localtimestamp",
        "current_time",
        "current_date",
    ];
    if ONCE.contains(&func) {
        format!(
            "`{func}` is evaluated once when the column is added, so every existing row would get the time of \
             the deploy instead of a value of its own"
        )
    } else {
        format!(
            "`{func}` is volatile: PostgreSQL evaluates it per row and rewrites the whole table under an \
             ACCESS EXCLUSIVE lock, blocking every query for as long as that takes"
        )
    }
}

/// The first function call in a default that is evaluated per row or per statement.
fn volatile_call(default: &str) -> Option<&'static str> {
    const VOLATILE: &[&str] = &[
        "now",
        "random",
        "gen_random_uuid",
        "uuid_generate_v1",
        "uuid_generate_v4",
        "clock_timestamp",
        "statement_timestamp",
        "transaction_timestamp",
        "timeofday",
        "nextval",
        "current_timestamp",
        "localtimestamp",
        "current_time",
        "current_date",
        "randomblob",
    ];
    let lower = default.to_ascii_lowercase();
    VOLATILE.iter().copied().find(|name| {
        lower.match_indices(name).any(|(i, _)| {
            let before_ok = lower[..i]
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
            let after = lower[i + name.len()..].trim_start();
            let after_ok = after.starts_with('(')
                || (name.starts_with("current_") || *name == "localtimestamp")
                    && !after.starts_with(|c: char| c.is_alphanumeric() || c == '_');
            before_ok && after_ok
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn findings(yaml: &str) -> Vec<Finding> {
        match crate::plan::parse_str("plan.yaml", yaml, Path::new(".")) {
            Ok(loaded) => panic!("expected errors, loaded {:?}", loaded.plan.id()),
            Err(report) => report.findings,
        }
    }

    fn with_column(fields: &str) -> String {
        format!(
            "plan: p\nphases:\n  - name: grow\n    kind: expand\n    steps:\n      - add_column:\n          table: accounts\n          name: c\n{fields}"
        )
    }

    #[test]
    fn finds_volatile_defaults() {
        assert_eq!(volatile_call("now()"), Some("now"));
        assert_eq!(volatile_call("gen_random_uuid()"), Some("gen_random_uuid"));
        assert_eq!(
            volatile_call("CURRENT_TIMESTAMP"),
            Some("current_timestamp")
        );
        assert_eq!(volatile_call("(random() * 10)::int"), Some("random"));
    }

    #[test]
    fn constants_are_fine() {
        assert_eq!(volatile_call("0"), None);
        assert_eq!(volatile_call("'now'"), None);
        assert_eq!(volatile_call("'unknown'"), None);
        assert_eq!(volatile_call("false"), None);
    }

    #[test]
    fn a_volatile_default_is_located_at_the_default() {
        for func in ["random()", "clock_timestamp()", "gen_random_uuid()"] {
            let found = findings(&with_column(&format!(
                "          type: text\n          default: \"{func}\"\n"
            )));
            assert_eq!(found.len(), 1, "{func}: {found:?}");
            assert_eq!((found[0].line, found[0].column), (10, 20), "{func}");
            assert!(found[0].message.contains("non-constant default"));
            assert!(found[0]
                .help
                .as_deref()
                .is_some_and(|h| h.contains("rewrites the whole table")));
        }
    }

    #[test]
    fn a_serial_or_generated_type_is_located_at_the_type() {
        for (ty, rule) in [
            ("serial", "table-rewrite"),
            ("bigserial", "table-rewrite"),
            (
                "text GENERATED ALWAYS AS (lower(email)) STORED",
                "adding-field-with-default",
            ),
        ] {
            let found = findings(&with_column(&format!("          type: {ty}\n")));
            assert_eq!(found.len(), 1, "{ty}: {found:?}");
            assert_eq!((found[0].line, found[0].column), (9, 17), "{ty}");
            assert!(found[0].message.contains(rule), "{ty}: {found:?}");
            assert_eq!(found[0].severity, Severity::Error);
        }
    }

    #[test]
    fn a_function_default_squawk_cannot_vouch_for_is_refused() {
        let found = findings(&with_column(
            "          type: text\n          default: \"md5(random()::text)\"\n",
        ));
        assert_eq!(found.len(), 1, "{found:?}");
        let found = findings(&with_column(
            "          type: text\n          default: \"my_sequence_value()\"\n",
        ));
        assert!(found[0].message.contains("adding-field-with-default"));
        assert_eq!((found[0].line, found[0].column), (10, 20));
    }

    #[test]
    fn constants_and_new_tables_pass() {
        let ok = |yaml: &str| crate::plan::parse_str("plan.yaml", yaml, Path::new(".")).is_ok();
        assert!(ok(&with_column(
            "          type: bigint\n          default: \"0\"\n"
        )));
        assert!(ok(&with_column(
            "          type: text\n          default: \"'new'\"\n"
        )));
        assert!(ok("plan: p\nphases:\n  - name: grow\n    kind: expand\n    steps:\n      - create_table: { name: t, columns: [ { name: id, type: bigint, primary_key: true } ] }\n      - add_column: { table: t, name: seq, type: bigserial }\n      - add_column: { table: t, name: token, type: uuid, default: \"gen_random_uuid()\" }\n"));
    }
}
