//! How a step is undone (`phased rollback`, `phased verify`, and `validate`'s reversibility
//! advice): the plan-level part common to every kind, then each kind's own `inverse`.

use std::collections::HashSet;

use super::constraint::{add_not_valid_then_validate, unless_constraint_exists};
use super::dual_write::DualWrite;
use super::name::ident;
use super::name::{Name, TableName};
use super::unit::{Dialect, Recorded, Remembered, TableChange, Unit};
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
    /// Put back what the step recorded in its checkpoint before it changed or dropped it (a
    /// dropped index or constraint, a default, a comment): [`put_back`] makes the units.
    Recorded(Remembered),
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
            Inverse::Recorded(what) => format!(
                "put back {} as recorded in the step's state before it ran",
                what.describe()
            ),
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
    created_enums: HashSet<&'p TableName>,
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
                Step::CreateEnum(e) => {
                    ctx.created_enums.insert(&e.name);
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

    /// Does the plan create this enum type?
    pub fn creates_enum(&self, name: &TableName) -> bool {
        self.created_enums.contains(name)
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

/// The units that put back what a step recorded before it ran (`Unit::Remember`): an index
/// built `CONCURRENTLY`; a constraint added `NOT VALID` then validated (one recorded `NOT
/// VALID` stays so; a UNIQUE or PRIMARY KEY gets its index built `CONCURRENTLY`, then attached);
/// a default or comment set back (or dropped, when there was none). Each is a no-op when the
/// thing is there already, so an interrupted rollback runs them again safely. No units: it was
/// not there when the step ran. An error says why it cannot be put back.
pub fn put_back(
    what: &Remembered,
    recorded: &Recorded,
    dialect: Dialect,
) -> Result<Vec<Unit>, String> {
    let definition = recorded.definition.as_deref();
    // An index or constraint that was not there when the step ran: nothing to put back.
    if definition.is_none()
        && matches!(
            what,
            Remembered::Index { .. } | Remembered::Constraint { .. }
        )
    {
        return Ok(Vec::new());
    }
    let missing = || {
        format!(
            "the definition of {} was recorded incompletely, so it cannot be put back",
            what.describe()
        )
    };
    let table_name = |table: &str| TableName::new(table).map_err(|e| e.to_string());
    let name = |n: &str| Name::new(n).map_err(|e| e.to_string());
    match (what, dialect) {
        (Remembered::Index { name }, Dialect::Postgres) => {
            let definition = definition.ok_or_else(missing)?;
            Ok(vec![Unit::ConcurrentIndex {
                name: ident(name),
                create: concurrently(definition)?,
            }])
        }
        (Remembered::Index { .. }, Dialect::Sqlite) => {
            let definition = definition.ok_or_else(missing)?;
            Ok(vec![Unit::Transaction(vec![if_not_exists(definition)])])
        }
        (Remembered::Constraint { table, name: n }, Dialect::Postgres) => {
            let definition = definition.ok_or_else(missing)?;
            let table = table_name(table)?;
            let constraint = name(n)?;
            let not_valid = definition.ends_with(" NOT VALID");
            match recorded.contype.as_deref() {
                Some("u" | "p") => {
                    let index = recorded.index_name.as_deref().ok_or_else(missing)?;
                    let index_definition =
                        recorded.index_definition.as_deref().ok_or_else(missing)?;
                    let index = TableName::in_schema(table.schema(), &name(index)?);
                    let kind = if recorded.contype.as_deref() == Some("p") {
                        "PRIMARY KEY"
                    } else {
                        "UNIQUE"
                    };
                    let mut attach = format!(
                        "ALTER TABLE {} ADD CONSTRAINT {} {kind} USING INDEX {}",
                        table.quoted(),
                        constraint.quoted(),
                        index.name().quoted()
                    );
                    if definition.contains(" DEFERRABLE") && !definition.contains("NOT DEFERRABLE")
                    {
                        attach.push_str(" DEFERRABLE");
                    }
                    if definition.contains(" INITIALLY DEFERRED") {
                        attach.push_str(" INITIALLY DEFERRED");
                    }
                    Ok(vec![
                        Unit::ConcurrentIndex {
                            name: index.quoted(),
                            create: concurrently(index_definition)?,
                        },
                        Unit::Transaction(vec![unless_constraint_exists(
                            &table,
                            &constraint,
                            &attach,
                        )]),
                    ])
                }
                Some("c" | "f") if !not_valid => {
                    Ok(add_not_valid_then_validate(&table, &constraint, definition))
                }
                // Recorded NOT VALID (it stays so), or a kind that cannot be added NOT VALID
                // (an exclusion constraint: added as it was, under the lock).
                _ => Ok(vec![Unit::Transaction(vec![unless_constraint_exists(
                    &table,
                    &constraint,
                    &format!(
                        "ALTER TABLE {} ADD CONSTRAINT {} {definition}",
                        table.quoted(),
                        constraint.quoted()
                    ),
                )])]),
            }
        }
        (Remembered::Constraint { table, name }, Dialect::Sqlite) => {
            let clause = definition.ok_or_else(missing)?;
            Ok(vec![Unit::RebuildTable {
                table: table.clone(),
                change: TableChange::RestoreConstraint {
                    name: name.clone(),
                    clause: clause.to_string(),
                },
            }])
        }
        (Remembered::Default { table, column }, Dialect::Postgres) => {
            let table = table_name(table)?;
            let column = name(column)?;
            Ok(vec![Unit::Transaction(vec![format!(
                "ALTER TABLE {} ALTER COLUMN {} {}",
                table.quoted(),
                column.quoted(),
                match definition {
                    Some(expr) => format!("SET DEFAULT {expr}"),
                    None => "DROP DEFAULT".to_string(),
                }
            )])])
        }
        (Remembered::Default { table, column }, Dialect::Sqlite) => Ok(vec![Unit::RebuildTable {
            table: table.clone(),
            change: TableChange::SetDefault {
                column: column.clone(),
                default: definition.map(str::to_string),
            },
        }]),
        (Remembered::Comment { table, column }, Dialect::Postgres) => {
            let table = table_name(table)?;
            let column = column.as_deref().map(name).transpose()?;
            Ok(vec![Unit::Transaction(vec![
                super::set_comment::comment_on(&table, column.as_ref(), definition),
            ])])
        }
        (Remembered::Comment { .. }, Dialect::Sqlite) => {
            Err("SQLite keeps no comments".to_string())
        }
    }
}

/// `CREATE [UNIQUE] INDEX name …` (as `pg_get_indexdef` writes it) built `CONCURRENTLY`.
fn concurrently(definition: &str) -> Result<String, String> {
    ["CREATE UNIQUE INDEX ", "CREATE INDEX "]
        .iter()
        .find_map(|prefix| {
            definition
                .strip_prefix(prefix)
                .map(|rest| format!("{prefix}CONCURRENTLY {rest}"))
        })
        .ok_or_else(|| format!("unexpected index definition `{definition}`"))
}

/// SQLite's stored `CREATE [UNIQUE] INDEX name …` with `IF NOT EXISTS`, so a rollback run
/// again finds it done.
fn if_not_exists(definition: &str) -> String {
    let upper = definition.to_ascii_uppercase();
    for prefix in ["CREATE UNIQUE INDEX ", "CREATE INDEX "] {
        if upper.starts_with(prefix)
            && !upper[prefix.len()..]
                .trim_start()
                .starts_with("IF NOT EXISTS")
        {
            return format!("{prefix}IF NOT EXISTS {}", &definition[prefix.len()..]);
        }
    }
    definition.to_string()
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
