//! How a step is undone (`phased rollback`, `phased verify`, and `validate`'s reversibility
//! advice): the plan-level part common to every kind, then each kind's own `inverse`.

use std::collections::HashSet;

use super::dual_write::DualWrite;
use super::name::{Name, TableName};
use super::unit::{Dialect, Unit};
use crate::db::StepStatus;
use crate::plan::{PhaseKind, Plan, Step, StepRef};

/// How one step is undone.
#[derive(Debug, Clone, PartialEq)]
pub enum Inverse {
    /// Nothing to run: the step left nothing behind (a failed atomic step, a backfill into
    /// columns this plan added, which go with their `add_column`).
    Nothing(String),
    /// SQL units.
    Units(Vec<Unit>),
    /// A reverse backfill (a backfill's `down: { set, where }`), walked in batches by the
    /// backfill engine.
    Backfill(Box<super::backfill::Backfill>),
    /// Put a flag back to the value it had (remove it when it had none).
    Flag { name: String },
    /// Run the command step's `down`.
    Command(Vec<String>),
    /// Downgrade the versioned migrations to the revisions recorded before the step ran.
    Migrations,
    /// No inverse: rollback stops here.
    Irreversible(String),
}

impl Inverse {
    /// A one-line description for events and dry runs.
    pub fn describe(&self) -> String {
        match self {
            Inverse::Nothing(why) => format!("nothing to undo ({why})"),
            Inverse::Units(units) => units
                .iter()
                .map(Unit::sql_text)
                .collect::<Vec<_>>()
                .join("; "),
            Inverse::Backfill(b) => format!(
                "walk {} in batches, setting {}{}",
                b.table,
                b.set
                    .iter()
                    .map(|(c, e)| format!("{c} = {e}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                b.predicate
                    .as_deref()
                    .map(|p| format!(" where {p}"))
                    .unwrap_or_default()
            ),
            Inverse::Flag { name } => format!("put flag `{name}` back to its previous value"),
            Inverse::Command(argv) => format!("run {}", argv.join(" ")),
            Inverse::Migrations => {
                "downgrade the migrations to the revisions recorded before the step".to_string()
            }
            Inverse::Irreversible(why) => format!("irreversible: {why}"),
        }
    }
}

/// What the rest of the plan tells a step's inverse: the columns and tables the plan creates
/// (a backfill into them needs no undo), and its `dual_write`s (which re-create what a
/// `drop_dual_write` removed).
#[derive(Debug, Default)]
pub struct InverseContext<'p> {
    added_columns: HashSet<(&'p TableName, &'p Name)>,
    created_tables: HashSet<&'p TableName>,
    dual_writes: Vec<&'p DualWrite>,
    /// Columns operations add and drop themselves (`Operation::adds_columns`).
    operation_columns: Vec<(TableName, Name)>,
}

impl<'p> InverseContext<'p> {
    pub fn of(plan: &'p Plan) -> Self {
        let mut ctx = InverseContext::default();
        for step in plan.phases().flat_map(|p| p.steps()) {
            match step {
                Step::AddColumn(c) => {
                    ctx.added_columns.insert((&c.table, &c.name));
                }
                Step::CreateTable(t) => {
                    ctx.created_tables.insert(&t.name);
                }
                Step::DualWrite(d) => ctx.dual_writes.push(d),
                Step::RenameColumn(r) => {
                    ctx.added_columns.insert((&r.table, &r.to));
                }
                _ => {}
            }
            ctx.operation_columns.extend(step.op().adds_columns());
        }
        ctx
    }

    /// Does the plan add this column (or create its table)?
    pub fn adds_column(&self, table: &TableName, column: &Name) -> bool {
        self.created_tables.contains(table)
            || self.added_columns.contains(&(table, column))
            || self
                .operation_columns
                .iter()
                .any(|(t, c)| t == table && c == column)
    }

    /// The plan's last `dual_write` on `table`.
    pub fn dual_write_for(&self, table: &TableName) -> Option<&'p DualWrite> {
        self.dual_writes
            .iter()
            .rev()
            .find(|d| &d.table == table)
            .copied()
    }
}

/// The inverse of a step in the state it was left in. Pure: no database needed.
pub fn inverse_of(plan: &Plan, def: &Step, status: StepStatus, dialect: Dialect) -> Inverse {
    let op = def.op();
    let done = status == StepStatus::Done;
    // A failed or interrupted step whose work is one transaction left nothing behind.
    let atomic = matches!(
        op.units(dialect).as_deref(),
        Ok([Unit::Transaction(_)] | [Unit::RebuildTable { .. }])
    );
    if !done && atomic {
        return Inverse::Nothing("its transaction never committed".to_string());
    }
    op.inverse(&InverseContext::of(plan), done, dialect)
}

/// Steps of the plan that cannot be undone on any target, outside contract phases (which are
/// undone by restoring a backup).
pub fn irreversible_steps(plan: &Plan) -> Vec<(StepRef, String)> {
    plan.step_refs()
        .into_iter()
        .filter(|(s, _)| plan.phases.value[s.phase_index].value.kind() != PhaseKind::Contract)
        .filter_map(
            |(s, def)| match inverse_of(plan, def, StepStatus::Done, Dialect::Postgres) {
                Inverse::Irreversible(why) => Some((s, why)),
                _ => None,
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(steps: &str) -> crate::plan::LoadedPlan {
        let source = format!(
            "plan: p\nbackup: {{ before: [] }}\nphases:\n  - name: e\n    kind: expand\n    steps:\n{steps}  - name: m\n    kind: migrate\n    steps:\n      - backfill: {{ table: t, set: {{ c: \"1\" }} }}\n      - backfill: {{ table: t, set: {{ old: \"1\" }} }}\n  - name: c\n    kind: contract\n    steps:\n      - drop_dual_write: {{ table: t }}\n"
        );
        match crate::plan::parse_str("p.yaml", &source, std::path::Path::new(".")) {
            Ok(loaded) => loaded,
            Err(report) => panic!("{}", report.render_plain()),
        }
    }

    #[test]
    fn backfills_into_added_columns_need_no_undo() {
        let loaded = plan(
            "      - add_column: { table: t, name: c, type: text }\n      - dual_write: { table: t, set: { c: \"1\" } }\n",
        );
        let steps = loaded.plan.step_refs();
        let inverse =
            |i: usize, status| inverse_of(&loaded.plan, steps[i].1, status, Dialect::Postgres);
        assert!(matches!(inverse(2, StepStatus::Done), Inverse::Nothing(_)));
        assert!(matches!(
            inverse(3, StepStatus::Done),
            Inverse::Irreversible(_)
        ));
        // drop_dual_write is undone by re-creating the plan's dual_write.
        assert_eq!(
            inverse(4, StepStatus::Done),
            Inverse::Units(
                loaded.plan.step_refs()[1]
                    .1
                    .op()
                    .units(Dialect::Postgres)
                    .unwrap_or_default()
            )
        );
        // An atomic step that failed left nothing behind.
        assert!(matches!(
            inverse(0, StepStatus::Failed),
            Inverse::Nothing(_)
        ));
        let irreversible: Vec<String> = irreversible_steps(&loaded.plan)
            .into_iter()
            .map(|(s, _)| s.id())
            .collect();
        assert_eq!(irreversible, vec!["m#2".to_string()]);
    }

    #[test]
    fn drop_dual_write_without_a_dual_write_is_irreversible() {
        let loaded = plan("      - add_column: { table: t, name: c, type: text }\n");
        let steps = loaded.plan.step_refs();
        assert!(matches!(
            inverse_of(&loaded.plan, steps[3].1, StepStatus::Done, Dialect::Sqlite),
            Inverse::Irreversible(why) if why.contains("no `dual_write` for `t`")
        ));
    }
}
