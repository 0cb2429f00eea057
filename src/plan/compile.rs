//! From what a plan writes to the phases that run: the `changes:` form compiled into phases, and
//! the later parts of operations written once scheduled into the phases where they run. Both
//! happen when a plan is loaded, before validation, so everything later (validate, plan, run,
//! rollback, status) sees ordinary phases of ordinary steps.

use serde_saphyr::{Location, Spanned};

use super::diagnostic::Finding;
use super::model::{Phase, PhaseKind, Plan, Scheduled, Step};

/// The phases a `changes:` plan compiles into, in order, with their names.
const COMPILED: [(PhaseKind, &str); 4] = [
    (PhaseKind::Expand, "expand"),
    (PhaseKind::Migrate, "migrate"),
    (PhaseKind::SwitchFlag, "switch"),
    (PhaseKind::Contract, "contract"),
];

/// Compiles a `changes:` list (and its `flags:` and `gates:`) into phases named `expand`,
/// `migrate`, `switch` (only when something sets a flag) and `contract`: each step goes to the
/// first phase kind its operation may stand in, in the order written; a phase exists when a step
/// goes there or an operation schedules a part there. A `phases:` plan is left alone, and may not
/// use `flags:` or `gates:`.
pub fn compile_changes(plan: &mut Plan) -> Vec<Finding> {
    let mut findings = Vec::new();
    let Some(changes) = plan.changes.take() else {
        for flag in &plan.flags {
            findings.push(
                Finding::error(flag.referenced, "`flags:` belongs to a `changes:` plan").with_help(
                    "in a `phases:` plan, set flags with `flag` steps in a `switch-flag` phase",
                ),
            );
        }
        for (name, gates) in &plan.gates {
            findings.push(
                Finding::error(
                    gates.referenced,
                    format!("`gates:` belongs to a `changes:` plan (here for `{name}`)"),
                )
                .with_help("in a `phases:` plan, write `gate:` on the phase itself"),
            );
        }
        return findings;
    };
    if plan.phases.referenced != Location::UNKNOWN {
        findings.push(
            Finding::error(
                changes.referenced,
                "a plan writes either `phases:` or `changes:`, not both",
            )
            .with_help("`changes:` is compiled into phases; `phased plan --explain` prints them"),
        );
        return findings;
    }
    let at = changes.referenced;
    let mut buckets: [Vec<Spanned<Step>>; 4] = Default::default();
    let mut needed = [false; 4];
    let slot = |kind: PhaseKind| COMPILED.iter().position(|(k, _)| *k == kind).unwrap_or(0);
    for step in changes.value {
        let op = step.value.op();
        let kind = op
            .allowed_in()
            .first()
            .copied()
            .unwrap_or(PhaseKind::Expand);
        for part in op.later_parts() {
            needed[slot(part.phase)] = true;
        }
        buckets[slot(kind)].push(step);
    }
    for flag in std::mem::take(&mut plan.flags) {
        let location = flag.referenced;
        buckets[slot(PhaseKind::SwitchFlag)].push(Spanned::new(
            Step::Flag(flag.value),
            location,
            location,
        ));
    }
    let mut phases = Vec::new();
    for (i, ((kind, name), steps)) in COMPILED.iter().zip(buckets).enumerate() {
        if steps.is_empty() && !needed[i] {
            continue;
        }
        let gate = plan
            .gates
            .remove(*name)
            .map(|g| g.value)
            .unwrap_or_default();
        phases.push(Spanned::new(
            Phase {
                name: Spanned::new(name.to_string(), at, at),
                kind: Spanned::new(*kind, at, at),
                description: None,
                gate,
                steps: Spanned::new(steps, at, at),
            },
            at,
            at,
        ));
    }
    let names: Vec<&str> = phases.iter().map(|p| p.value.name()).collect();
    for (name, gates) in std::mem::take(&mut plan.gates) {
        findings.push(
            Finding::error(
                gates.referenced,
                format!("`gates:` names `{name}`, which is not a phase this plan compiles into"),
            )
            .with_help(format!("its phases are {}", names.join(", "))),
        );
    }
    plan.phases = Spanned::new(phases, at, at);
    findings
}

/// Places the later parts of each operation written once: each part goes to the end of the next
/// phase of its kind after the operation's own phase, in the order the operations are written.
/// A plan without such a phase is an error located at the operation.
pub fn schedule(plan: &mut Plan) -> Vec<Finding> {
    let mut findings = Vec::new();
    // (phase it goes to, the part, where its operation stands, the part's name)
    type Placed = (usize, Spanned<Step>, (usize, usize), &'static str);
    let mut placed: Vec<Placed> = Vec::new();
    let phases = &plan.phases.value;
    // The operations with later parts so far, by table: a later rename of the table would
    // leave their parts naming what became a view.
    let mut with_parts: Vec<(String, &Spanned<Step>)> = Vec::new();
    for (p, phase) in phases.iter().enumerate() {
        for (i, step) in phase.value.steps.value.iter().enumerate() {
            if let Step::RenameTable(rename) = &step.value {
                for (table, earlier) in &with_parts {
                    if table == rename.from.as_str() {
                        findings.push(
                            Finding::error(
                                earlier.referenced,
                                format!(
                                    "`{}` comes before `{}` (line {}), so its later parts would work on what is then a view",
                                    earlier.value.label(),
                                    step.value.label(),
                                    step.referenced.line()
                                ),
                            )
                            .with_help(format!(
                                "write the `rename_table` first, and name the table `{}` in the operations after it",
                                rename.to.name()
                            )),
                        );
                    }
                }
            }
            let parts = step.value.op().later_parts();
            if let (false, Some(table)) = (parts.is_empty(), step.value.table()) {
                with_parts.push((table.as_str().to_string(), step));
            }
            for part in parts {
                let next = phases
                    .iter()
                    .enumerate()
                    .skip(p + 1)
                    .find(|(_, q)| q.value.kind() == part.phase);
                match next {
                    Some((q, _)) => placed.push((
                        q,
                        Spanned::new(part.step, step.referenced, step.referenced),
                        (p, i),
                        part.tag,
                    )),
                    None => findings.push(
                        Finding::error(
                            step.referenced,
                            format!(
                                "`{}` needs a `{}` phase after phase `{}` for its {}",
                                step.value.label(),
                                part.phase,
                                phase.value.name(),
                                part.tag
                            ),
                        )
                        .with_help(format!(
                            "add a phase of kind `{}` after `{}` (its `steps` may be `[]`: phased puts the {} there), or write the plan as `changes:`",
                            part.phase,
                            phase.value.name(),
                            part.tag
                        )),
                    ),
                }
            }
        }
    }
    for (q, step, origin, tag) in placed {
        let steps = &mut plan.phases.value[q].value.steps.value;
        steps.push(step);
        plan.scheduled.push(Scheduled {
            at: (q, steps.len() - 1),
            origin,
            tag,
        });
    }
    findings
}

/// The plan as phases, in YAML a person can copy into a `phases:` plan and edit: the steps as
/// written (operations written once stay in `expand`; their later parts are comments where they
/// will run, since loading the plan schedules them again).
pub fn explain(plan: &Plan) -> String {
    let mut out = String::new();
    out.push_str(&format!("plan: {}\n", yaml_scalar(plan.id())));
    if let Some(description) = &plan.description {
        out.push_str(&format!("description: {}\n", yaml_scalar(description)));
    }
    out.push_str(&format!("defaults: {}\n", flow_json(&plan.defaults)));
    let before: Vec<&str> = plan
        .backup
        .before
        .iter()
        .map(|b| b.value.as_str())
        .collect();
    out.push_str(&format!(
        "backup: {{ before: {}, dir: {}{}{} }}\n",
        flow_json(&before),
        flow_json(&plan.backup.dir),
        if plan.backup.tables.is_empty() {
            String::new()
        } else {
            format!(", tables: {}", flow_json(&plan.backup.tables))
        },
        plan.backup
            .keep
            .map(|k| format!(", keep: {k}"))
            .unwrap_or_default()
    ));
    out.push_str("phases:\n");
    for (p, phase) in plan.phases.value.iter().enumerate() {
        let phase = &phase.value;
        out.push_str(&format!("  - name: {}\n", yaml_scalar(phase.name())));
        out.push_str(&format!("    kind: {}\n", phase.kind()));
        if !phase.gate.is_empty() {
            out.push_str("    gate:\n");
            for gate in &phase.gate {
                out.push_str(&format!("      - {}\n", flow_json(&gate.value)));
            }
        }
        let written: Vec<String> = phase
            .steps
            .value
            .iter()
            .enumerate()
            .filter(|(i, _)| plan.scheduled_at(p, *i).is_none())
            .map(|(_, s)| match plan.written.at(&s.referenced) {
                Some(written) => format!("      - {}\n", flow_json(written)),
                None => format!("      - {}\n", flow_json(&s.value)),
            })
            .collect();
        if written.is_empty() {
            out.push_str("    steps: []\n");
        } else {
            out.push_str("    steps:\n");
            out.extend(written);
        }
        for (i, step) in phase.steps.value.iter().enumerate() {
            if let Some(s) = plan.scheduled_at(p, i) {
                let origin = &plan.phases.value[s.origin.0].value;
                out.push_str(&format!(
                    "      # scheduled here: the {} of {}#{} `{}` ({})\n",
                    s.tag,
                    origin.name(),
                    s.origin.1 + 1,
                    origin
                        .steps
                        .value
                        .get(s.origin.1)
                        .map(|o| o.value.label())
                        .unwrap_or_default(),
                    step.value.label()
                ));
            }
        }
    }
    out
}

/// A value as one line of YAML flow syntax (JSON is valid YAML flow syntax).
fn flow_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// A string as a YAML scalar: plain when it reads back as the same string, else quoted.
fn yaml_scalar(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'));
    if plain {
        text.to_string()
    } else {
        serde_json::Value::String(text.to_string()).to_string()
    }
}
