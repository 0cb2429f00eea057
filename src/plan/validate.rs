//! Checks a parsed plan for what YAML cannot express: phase rules, references, unsafe defaults.

use std::collections::{HashMap, HashSet};

use serde_saphyr::{Location, Spanned};

use super::diagnostic::Finding;
use super::model::{Gate, PhaseKind, Plan, Step};
use crate::ops::backfill::{Throttle, ThrottleMode};

/// Every finding in the plan, errors and warnings, in file order.
pub fn validate(plan: &Plan) -> Vec<Finding> {
    let mut findings = Vec::new();
    check_plan_id(plan, &mut findings);
    if plan.phases.value.is_empty() {
        findings.push(
            Finding::error(plan.phases.referenced, "the plan has no phases")
                .with_help("add at least one phase under `phases:`"),
        );
    }
    let mut seen: HashMap<&str, Location> = HashMap::new();
    let mut created_tables: HashSet<&str> = HashSet::new();
    // The `dual_write` standing on each table: one trigger per table.
    let mut dual_writes: HashMap<&str, Location> = HashMap::new();
    for (index, phase) in plan.phases.value.iter().enumerate() {
        let phase = &phase.value;
        let name = phase.name.value.as_str();
        if name.trim().is_empty() {
            findings.push(Finding::error(
                phase.name.referenced,
                "a phase name cannot be empty",
            ));
        }
        if let Some(first) = seen.get(name) {
            findings.push(
                Finding::error(
                    phase.name.referenced,
                    format!("duplicate phase name `{name}`"),
                )
                .with_help(format!(
                    "phase names must be unique; `{name}` is first used on line {}",
                    first.line()
                )),
            );
        } else {
            seen.insert(name, phase.name.referenced);
        }
        if phase.steps.value.is_empty() {
            findings.push(
                Finding::error(
                    phase.steps.referenced,
                    format!("phase `{name}` has no steps"),
                )
                .with_help("give it at least one step, or remove the phase"),
            );
        }
        for gate in &phase.gate {
            check_gate(plan, index, gate, &mut findings);
        }
        for step in &phase.steps.value {
            check_placement(phase.kind.value, name, step, &mut findings);
            check_step(step, &created_tables, &mut findings);
            check_allow(step, &mut findings);
            match &step.value {
                Step::CreateTable(t) => {
                    created_tables.insert(t.name.as_str());
                }
                Step::DualWrite(d) => match dual_writes.get(d.table.as_str()) {
                    Some(first) => findings.push(
                        Finding::error(
                            step.referenced,
                            format!(
                                "a `dual_write` on `{}` already stands on line {}: a table has one dual-write trigger, and this one would replace it",
                                d.table,
                                first.line()
                            ),
                        )
                        .with_help("put every column in the first step's `set` (they run in the order written)"),
                    ),
                    None => {
                        dual_writes.insert(d.table.as_str(), step.referenced);
                    }
                },
                Step::DropDualWrite(d) => {
                    dual_writes.remove(d.table.as_str());
                }
                _ => {}
            }
        }
    }
    for name in &plan.backup.before {
        if plan.phase(&name.value).is_none() && name.referenced != Location::UNKNOWN {
            findings.push(
                Finding::error(
                    name.referenced,
                    format!(
                        "backup.before names `{}`, which is not a phase of this plan",
                        name.value
                    ),
                )
                .with_help(phase_list(plan)),
            );
        }
    }
    findings.sort_by_key(|f| (f.line, f.column));
    findings
}

/// The steps whose operation cannot run on `dialect` (`validate --dialect`), located at each.
pub fn dialect_findings(plan: &Plan, dialect: crate::ops::Dialect) -> Vec<Finding> {
    let mut findings = Vec::new();
    for (p, phase) in plan.phases.value.iter().enumerate() {
        for (i, step) in phase.value.steps.value.iter().enumerate() {
            if plan.scheduled_at(p, i).is_some() {
                continue;
            }
            if let Some(why) = step.value.op().unsupported_on(dialect) {
                findings.push(
                    Finding::error(
                        step.referenced,
                        format!(
                            "`{}` cannot run on {}: {why}",
                            step.value.label(),
                            dialect.as_str()
                        ),
                    )
                    .with_help(
                        "run this plan on PostgreSQL, or write the change another way for SQLite",
                    ),
                );
            }
        }
    }
    findings
}

/// A `sql` step's `allow:` names lint rules phased knows.
fn check_allow(step: &Spanned<Step>, findings: &mut Vec<Finding>) {
    let Step::Sql(sql) = &step.value else {
        return;
    };
    for name in sql.allow.iter().filter(|n| !super::lint::is_rule(n)) {
        findings.push(
            Finding::error(
                step.referenced,
                format!("`allow` names `{name}`, which is not a lint rule"),
            )
            .with_help("docs/lint.md lists the rules; `phased lint` prints each finding's rule"),
        );
    }
}

fn phase_list(plan: &Plan) -> String {
    let names: Vec<&str> = plan.phases().map(|p| p.name()).collect();
    format!("the phases are: {}", names.join(", "))
}

fn check_plan_id(plan: &Plan, findings: &mut Vec<Finding>) {
    let id = plan.id();
    let ok = !id.is_empty()
        && id.len() <= 63
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        findings.push(
            Finding::error(
                plan.plan.referenced,
                format!("plan id `{id}` is not usable"),
            )
            .with_help(
                "use 1 to 63 letters, digits, `-`, `_` or `.`: it names backups and keys the state",
            ),
        );
    }
}

fn check_gate(plan: &Plan, phase_index: usize, gate: &Spanned<Gate>, findings: &mut Vec<Finding>) {
    let mut check_phase_ref = |target: &str| match plan.phase_index(target) {
        None => findings.push(
            Finding::error(
                gate.referenced,
                format!("gate refers to phase `{target}`, which is not in this plan"),
            )
            .with_help(phase_list(plan)),
        ),
        Some(i) if i >= phase_index => findings.push(
            Finding::error(
                gate.referenced,
                format!("gate refers to phase `{target}`, which does not come before this one"),
            )
            .with_help("a gate can only wait for an earlier phase; move the phase or the gate"),
        ),
        Some(_) => {}
    };
    match &gate.value {
        Gate::PhaseDone(target) => check_phase_ref(target),
        Gate::Wait(wait) => {
            if let Some(target) = &wait.phase_done {
                check_phase_ref(target);
            }
            let conditions = usize::from(wait.sql.is_some())
                + usize::from(wait.flag.is_some())
                + usize::from(wait.phase_done.is_some());
            if conditions != 1 {
                findings.push(
                    Finding::error(gate.referenced, "a `wait` gate needs exactly one condition")
                        .with_help(
                        "give one of `sql`, `flag` or `phase_done`, with `timeout` and `interval`",
                    ),
                );
            }
            if wait.interval.is_zero() {
                findings.push(Finding::error(
                    gate.referenced,
                    "a `wait` gate's interval must be above 0",
                ));
            }
        }
        Gate::Sql(sql) if sql.trim().is_empty() => {
            findings.push(Finding::error(
                gate.referenced,
                "a `sql` gate needs a query",
            ));
        }
        Gate::Sql(_) | Gate::Flag(_) => {}
    }
}

fn check_placement(
    kind: PhaseKind,
    phase: &str,
    step: &Spanned<Step>,
    findings: &mut Vec<Finding>,
) {
    let allowed = step.value.op().allowed_in();
    if allowed.contains(&kind) {
        return;
    }
    let names: Vec<&str> = allowed.iter().map(|k| k.as_str()).collect();
    let what = step.value.kind_name();
    let (message, help) = if step.value.is_destructive() {
        (
            format!("`{what}` is destructive and cannot stand in `{kind}` phase `{phase}`"),
            "destructive steps belong in a `contract` phase, after the application stopped using what they remove".to_string(),
        )
    } else {
        (
            format!("`{what}` cannot stand in `{kind}` phase `{phase}`"),
            format!("`{what}` belongs in a phase of kind {}", names.join(" or ")),
        )
    };
    findings.push(Finding::error(step.referenced, message).with_help(help));
}

fn check_step(step: &Spanned<Step>, created: &HashSet<&str>, findings: &mut Vec<Finding>) {
    let at = step.referenced;
    let empty = |findings: &mut Vec<Finding>, what: &str, value: &str| {
        if value.trim().is_empty() {
            findings.push(Finding::error(at, format!("`{what}` cannot be empty")));
        }
    };
    match &step.value {
        Step::CreateTable(t) => {
            empty(findings, "name", &t.name);
            if t.columns.is_empty() {
                findings.push(Finding::error(
                    at,
                    format!("table `{}` has no columns", t.name),
                ));
            }
            let mut names = HashSet::new();
            for c in &t.columns {
                empty(findings, "column name", &c.name);
                empty(findings, "column type", &c.ty);
                if !names.insert(c.name.as_str()) {
                    findings.push(Finding::error(
                        at,
                        format!("table `{}` lists column `{}` twice", t.name, c.name),
                    ));
                }
            }
        }
        Step::AddColumn(c) => {
            empty(findings, "table", &c.table);
            empty(findings, "name", &c.name);
            empty(findings, "type", &c.ty);
            // A non-constant default, a serial or generated type: `lint::add_column`, located
            // at the field.
            let existing = !created.contains(c.table.as_str());
            if let (Some(up), Some(_)) = (&c.up, &c.default) {
                findings.push(
                    Finding::error(
                        at,
                        format!("`add_column {}.{}` has both `up` and `default`", c.table, c.name),
                    )
                    .with_help(format!(
                        "`up` fills the column for every row the old application writes; a default would fill it first (with a constant), and `up` would never run. Drop `default`, or drop `up` and `backfill` with `{up}` yourself"
                    )),
                );
            } else if let Some(up) = c.up.as_deref().filter(|u| u.trim().is_empty()) {
                findings.push(Finding::error(at, format!("`up` cannot be empty{up}")));
            }
            // With `up`: filled by its trigger and its backfill, NOT NULL at contract.
            if c.up.is_none() && c.default.is_none() && !c.nullable && existing {
                findings.push(
                    Finding::error(
                        at,
                        format!("`add_column {}.{}` is NOT NULL without a default", c.table, c.name),
                    )
                    .with_help("existing rows need a value: add it nullable, backfill it, then `set_not_null` in a contract phase"),
                );
            }
        }
        Step::CreateIndex(i) => {
            empty(findings, "name", &i.name);
            empty(findings, "table", &i.table);
            if i.columns.is_empty() {
                findings.push(Finding::error(
                    at,
                    format!("index `{}` has no columns", i.name),
                ));
            }
            if let (Some(index), Some(table)) = (i.name.schema(), i.table.schema()) {
                if index != table {
                    findings.push(
                        Finding::error(
                            at,
                            format!("index `{}` is on table `{}`, in another schema", i.name, i.table),
                        )
                        .with_help("an index lives in its table's schema: leave the schema off the index name"),
                    );
                }
            }
        }
        Step::AddForeignKey(fk)
            if fk.columns.is_empty() || fk.columns.len() != fk.references.columns.len() =>
        {
            findings.push(
                Finding::error(
                    at,
                    format!(
                        "foreign key `{}` has {} column(s) referencing {} column(s)",
                        fk.name,
                        fk.columns.len(),
                        fk.references.columns.len()
                    ),
                )
                .with_help("list the same number of columns on both sides"),
            );
        }
        Step::Sql(sql) if sql.transactional && sql.index_wait_timeout.is_some() => {
            findings.push(
                Finding::warning(
                    at,
                    "`index_wait_timeout` has no effect on a transactional `sql` step",
                )
                .with_help(
                    "it bounds how long a CONCURRENTLY statement waits for older transactions, and those \
                     only run with `transactional: false`",
                ),
            );
        }
        Step::AddUnique(u) if u.columns.is_empty() => {
            findings.push(Finding::error(
                at,
                format!("unique constraint `{}` has no columns", u.name),
            ));
        }
        Step::SetDefault(d) => empty(findings, "default", &d.default),
        Step::CreateEnum(e) => {
            if e.values.is_empty() {
                findings.push(Finding::error(
                    at,
                    format!("enum `{}` has no values", e.name),
                ));
            }
            let mut seen = HashSet::new();
            for value in &e.values {
                empty(findings, "enum value", value);
                if !seen.insert(value.as_str()) {
                    findings.push(Finding::error(
                        at,
                        format!("enum `{}` lists value `{value}` twice", e.name),
                    ));
                }
            }
        }
        Step::AddEnumValue(v) => {
            empty(findings, "value", &v.value);
            if v.before.is_some() && v.after.is_some() {
                findings.push(
                    Finding::error(at, "`add_enum_value` takes `before` or `after`, not both")
                        .with_help("PostgreSQL places a new value before one value or after one"),
                );
            }
        }
        Step::RenameIndex(r) if r.from == r.to => {
            findings.push(Finding::error(
                at,
                format!("`rename_index` renames `{}` to itself", r.from),
            ));
        }
        Step::RenameConstraint(r) if r.from == r.to => {
            findings.push(Finding::error(
                at,
                format!("`rename_constraint` renames `{}` to itself", r.from),
            ));
        }
        Step::RenameTable(r) if r.to.schema().is_some() && r.to.schema() != r.from.schema() => {
            findings.push(
                Finding::error(
                    at,
                    format!(
                        "`rename_table` would move `{}` to another schema (`{}`)",
                        r.from, r.to
                    ),
                )
                .with_help("a rename keeps the table in its schema: write `to` without a schema"),
            );
        }
        Step::DualWrite(d) if d.set.is_empty() => {
            findings.push(Finding::error(
                at,
                "`dual_write` needs at least one column in `set`",
            ));
        }
        Step::Backfill(b) => {
            if b.set.is_empty() {
                findings.push(Finding::error(
                    at,
                    "`backfill` needs at least one column in `set`",
                ));
            }
            if b.target_batch_time.is_some_and(|t| t.is_zero()) {
                findings.push(Finding::error(at, "`target_batch_time` must be above 0"));
            }
            let knobs = b.fixed_knobs();
            if b.throttle == Some(ThrottleMode::Auto) && !knobs.is_empty() {
                findings.push(
                    Finding::error(
                        at,
                        format!(
                            "`throttle: auto` sets the pace from the workload's health, but the step also sets {}",
                            knobs.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                        ),
                    )
                    .with_help("remove the fixed knobs, or write `throttle: fixed` to pace the backfill by them"),
                );
            }
            if b.max_latency_impact.is_some() && !matches!(b.throttle(), Throttle::Auto { .. }) {
                findings.push(
                    Finding::error(
                        at,
                        "`max_latency_impact` is the budget of `throttle: auto`, but this step's pace is fixed",
                    )
                    .with_help(if knobs.is_empty() {
                        "remove `throttle: fixed` or `max_latency_impact`".to_string()
                    } else {
                        format!(
                            "the fixed knobs ({}) override the automatic pace: remove them or `max_latency_impact`",
                            knobs.join(", ")
                        )
                    }),
                );
            }
        }
        Step::Command(c) if c.run.is_empty() || c.run[0].trim().is_empty() => {
            findings.push(
                Finding::error(at, "`command` needs a program to run")
                    .with_help("write `run: [program, arg, …]`; no shell is involved"),
            );
        }
        Step::Flag(f) => empty(findings, "name", &f.name),
        _ => {}
    }
}

/// Warnings for steps outside contract phases that `phased rollback` (and `phased verify`) cannot
/// undo: contract phases are undone by restoring their backup, everything else should have an
/// inverse. Advice for a plan that is otherwise valid (the loader adds it only then).
pub fn reversibility(plan: &Plan) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut added: HashSet<(&str, &str)> = HashSet::new();
    // Columns a step of the plan adds under a name it derives (a change_type's shadow).
    let mut shadows: HashSet<(&str, String)> = HashSet::new();
    let mut created: HashSet<&str> = HashSet::new();
    for phase in plan.phases() {
        for step in phase.steps() {
            match step {
                Step::AddColumn(c) => {
                    added.insert((c.table.as_str(), c.name.as_str()));
                }
                Step::RenameColumn(r) => {
                    added.insert((r.table.as_str(), r.to.as_str()));
                }
                Step::CreateTable(t) => {
                    created.insert(t.name.as_str());
                }
                Step::ChangeType(c) => {
                    shadows.insert((
                        c.table.as_str(),
                        crate::ops::change_type::shadow_of(c.column.as_str())
                            .as_str()
                            .to_string(),
                    ));
                }
                _ => {}
            }
        }
    }
    for phase in plan.phases().filter(|p| p.kind() != PhaseKind::Contract) {
        for step in &phase.steps.value {
            let why = match &step.value {
                Step::Sql(s) if s.down_sql().is_none() => Some((
                    "this `sql` step has no `down`, so `phased rollback` cannot undo it",
                    "add `down: \"SQL that undoes it\"` (or `down_file: PATH`)",
                )),
                Step::Command(c) if c.down.as_ref().is_none_or(|d| d.is_empty()) => Some((
                    "this `command` step has no `down`, so `phased rollback` cannot undo it",
                    "add `down: [program, args…]` that reverts what the command does",
                )),
                Step::Backfill(b)
                    if b.down.is_none()
                        && !created.contains(b.table.as_str())
                        && !b.set.keys().all(|c| {
                            added.contains(&(b.table.as_str(), c.as_str()))
                                || shadows.contains(&(b.table.as_str(), c.to_string()))
                        }) =>
                {
                    Some((
                        "this `backfill` writes columns that existed before the plan and has no `down`, so `phased rollback` cannot undo it",
                        "add `down: { set: { column: expression }, where: condition }`, which rollback walks in batches, or backfill into a column the plan adds",
                    ))
                }
                _ => None,
            };
            if let Some((message, help)) = why {
                findings.push(Finding::warning(step.referenced, message).with_help(help));
            }
        }
    }
    findings
}
