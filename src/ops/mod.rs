//! The operations a plan's steps perform, one file per step kind. Each kind owns everything about
//! itself: its fields as plans write them, where it may stand, its label, the table it changes and
//! the locks it takes there, its timeouts, its SQL per dialect, its inverse, and how it resumes
//! after a crash. Pure: nothing here opens a connection.
//!
//! Adding a kind: its file here, one line in [`step_kinds!`], and its section in
//! docs/plan-reference.md.

pub mod assignments;
pub mod constraint;
pub mod facts;
pub mod inverse;
pub mod lock;
pub mod name;
pub mod unit;

pub mod add_check;
pub mod add_column;
pub mod add_enum_value;
pub mod add_foreign_key;
pub mod add_unique;
pub mod backfill;
pub mod change_type;
pub mod command;
pub mod create_enum;
pub mod create_index;
pub mod create_table;
pub mod drop_column;
pub mod drop_constraint;
pub mod drop_default;
pub mod drop_dual_write;
pub mod drop_index;
pub mod drop_not_null;
pub mod drop_table;
pub mod dual_write;
pub mod flag;
pub mod migrations;
pub mod rename_column;
pub mod rename_constraint;
pub mod rename_index;
pub mod rename_table;
pub mod set_comment;
pub mod set_default;
pub mod set_not_null;
pub mod sql;
pub mod sync;

pub use facts::TableFacts;
pub use inverse::{inverse_of, irreversible_steps, put_back, Inverse, InverseContext};
pub use lock::{LockMode, TableLock};
pub use name::{Name, NameError, TableName};
pub use unit::{Dialect, Recorded, Remembered, RenderError, TableChange, Unit};

use crate::plan::{PhaseKind, PlanDuration};

/// THE list of step kinds: `Variant("name in plans", its operation type)`, in the order plans
/// document them; then, after `parts`, the kinds plans never write: the later parts of an
/// operation written once (its clean-up in `contract`), which scheduling places (see
/// [`Operation::later_parts`]).
/// `plan::Step` (the enum plans deserialize into) and its dispatch to [`Operation`] are
/// generated from it; the name is the key plans write (serde's snake_case of the variant: a
/// test holds the two together).
macro_rules! step_kinds {
    ($m:ident) => {
        $m! {
            kinds {
            CreateTable("create_table", $crate::ops::create_table::CreateTable),
            DropTable("drop_table", $crate::ops::drop_table::DropTable),
            AddColumn("add_column", $crate::ops::add_column::AddColumn),
            DropColumn("drop_column", $crate::ops::drop_column::DropColumn),
            CreateIndex("create_index", $crate::ops::create_index::CreateIndex),
            DropIndex("drop_index", $crate::ops::drop_index::DropIndex),
            AddCheck("add_check", $crate::ops::add_check::AddCheck),
            AddForeignKey("add_foreign_key", $crate::ops::add_foreign_key::AddForeignKey),
            SetNotNull("set_not_null", $crate::ops::set_not_null::SetNotNull),
            SetDefault("set_default", $crate::ops::set_default::SetDefault),
            DropDefault("drop_default", $crate::ops::drop_default::DropDefault),
            DropNotNull("drop_not_null", $crate::ops::drop_not_null::DropNotNull),
            AddUnique("add_unique", $crate::ops::add_unique::AddUnique),
            DropConstraint("drop_constraint", $crate::ops::drop_constraint::DropConstraint),
            CreateEnum("create_enum", $crate::ops::create_enum::CreateEnum),
            AddEnumValue("add_enum_value", $crate::ops::add_enum_value::AddEnumValue),
            RenameIndex("rename_index", $crate::ops::rename_index::RenameIndex),
            RenameConstraint("rename_constraint", $crate::ops::rename_constraint::RenameConstraint),
            SetComment("set_comment", $crate::ops::set_comment::SetComment),
            DualWrite("dual_write", $crate::ops::dual_write::DualWrite),
            DropDualWrite("drop_dual_write", $crate::ops::drop_dual_write::DropDualWrite),
            Backfill("backfill", $crate::ops::backfill::Backfill),
            Flag("flag", $crate::ops::flag::Flag),
            Sql("sql", $crate::ops::sql::SqlStep),
            Migrations("migrations", $crate::ops::migrations::Migrations),
            Command("command", $crate::ops::command::Command),
            RenameTable("rename_table", $crate::ops::rename_table::RenameTable),
            RenameColumn("rename_column", $crate::ops::rename_column::RenameColumn),
            ChangeType("change_type", $crate::ops::change_type::ChangeType),
            }
            parts {
            RenameTableContract("rename_table.contract", $crate::ops::rename_table::RenameTableContract),
            DropSync("drop_sync", $crate::ops::sync::DropSync),
            RenameColumnContract("rename_column.contract", $crate::ops::rename_column::RenameColumnContract),
            ChangeTypeRebuild("change_type.rebuild", $crate::ops::change_type::ChangeTypeRebuild),
            ChangeTypeSwap("change_type.swap", $crate::ops::change_type::ChangeTypeSwap),
            }
        }
    };
}
pub(crate) use step_kinds;

/// One step kind. After validation the engine works on `&dyn Operation` (`Step::op`).
pub trait Operation {
    /// The kind's name as plans write it: `add_column`.
    fn kind(&self) -> &'static str;

    /// What the step works on, for labels: `accounts.email_lower`.
    fn subject(&self) -> String;

    /// A short human label: `add_column accounts.email_lower`.
    fn label(&self) -> String {
        format!("{} {}", self.kind(), self.subject())
    }

    /// The phase kinds the step may stand in (`validate` checks it).
    fn allowed_in(&self) -> &'static [PhaseKind];

    /// Destructive steps remove what the old application may still use: `contract` only.
    fn is_destructive(&self) -> bool {
        false
    }

    /// The existing table the step changes, when there is one (lock reports use it). A new
    /// table nobody can hold a lock on yet, and steps that do not say what they touch, have none.
    fn table(&self) -> Option<&TableName> {
        None
    }

    /// The table locks (PostgreSQL) the step asks for that application traffic would queue
    /// behind, for the look before it queues. Locks nobody queues behind are left out.
    fn locks(&self) -> Vec<TableLock> {
        Vec::new()
    }

    /// [`Operation::locks`], from the catalog as it is when the step runs
    /// ([`Operation::facts_of`]): a step that also changes tables the catalog names (the
    /// foreign keys of other tables that reference a column) asks for locks on those too.
    fn locks_with(&self, _facts: &TableFacts) -> Vec<TableLock> {
        self.locks()
    }

    /// Whether [`Operation::locks_with`] needs the catalog: the runner reads the facts of
    /// [`Operation::facts_of`] before its look only for kinds that say so.
    fn locks_need_facts(&self) -> bool {
        false
    }

    /// The table locks its inverse asks for that application traffic would queue behind, for
    /// rollback's look before it queues: a transactional inverse (`DROP COLUMN`, `DROP
    /// CONSTRAINT`, `DROP TRIGGER`, a SQLite rebuild) asks for ACCESS EXCLUSIVE (or SHARE ROW
    /// EXCLUSIVE) on the step's table; a `CONCURRENTLY` drop takes none worth a look.
    fn inverse_locks(&self, units: &[Unit]) -> Vec<TableLock> {
        inverse_locks_on(self.table(), units)
    }

    /// The step's own lock_timeout override, if it has one.
    fn lock_timeout(&self) -> Option<PlanDuration> {
        None
    }

    /// The step's own statement_timeout override, if it has one.
    fn statement_timeout(&self) -> Option<PlanDuration> {
        None
    }

    /// The step's own index_wait_timeout override, if it has one: kinds whose statements may
    /// build or drop an index `CONCURRENTLY` take it.
    fn index_wait_timeout(&self) -> Option<PlanDuration> {
        None
    }

    /// The units of work, in order, for a dialect. Kinds the engine drives itself (backfill,
    /// flag, migrations, command) have no fixed SQL and say so.
    fn units(&self, dialect: Dialect) -> Result<Vec<Unit>, RenderError>;

    /// How the step is undone, given what the plan creates, whether the step finished, and the
    /// dialect. [`inverse_of`] handles what is common to all kinds first (an atomic step that
    /// did not finish left nothing behind).
    fn inverse(&self, ctx: &InverseContext<'_>, done: bool, dialect: Dialect) -> Inverse;

    /// The table whose catalog facts the step's SQL depends on, when it does: the runner reads
    /// them as the step runs and renders with [`Operation::units_with`].
    fn facts_of(&self) -> Option<&TableName> {
        None
    }

    /// The units, rendered from the catalog as it is now ([`Operation::facts_of`]).
    fn units_with(&self, dialect: Dialect, _facts: &TableFacts) -> Result<Vec<Unit>, RenderError> {
        self.units(dialect)
    }

    /// [`Operation::units_with`] for an attempt at a step that may have committed part of its
    /// work before (a rerun after a crash): `checkpoint` is what its earlier attempt recorded
    /// (`Unit::Checkpoint`), so the units can be what is left.
    fn units_resumed(
        &self,
        dialect: Dialect,
        facts: &TableFacts,
        _checkpoint: Option<&str>,
    ) -> Result<Vec<Unit>, RenderError> {
        self.units_with(dialect, facts)
    }

    /// For rollback, a step that did not finish but whose checkpoint says it committed a part
    /// that its inverse cannot take back (`Unit::Checkpoint`): what state that left and what
    /// to do. Rollback stops there rather than report nothing to undo.
    /// `facts` are the catalog's of [`Operation::facts_of`] now, when they could be read.
    fn committed_part(
        &self,
        _checkpoint: Option<&str>,
        _facts: Option<&TableFacts>,
    ) -> Option<String> {
        None
    }

    /// Columns the step adds to existing tables that its own inverse drops (a shadow column):
    /// work done later into them needs no undo of its own.
    fn adds_columns(&self) -> Vec<(TableName, Name)> {
        Vec::new()
    }

    /// The work an operation written once in `expand` schedules into later phases: each part
    /// runs as a step of its own, appended to the next phase of its kind after the step's own
    /// phase (`validate` fails, located at the step, when the plan has none). Most kinds have
    /// none.
    fn later_parts(&self) -> Vec<LaterPart> {
        Vec::new()
    }

    /// Whether the operation can run on a dialect at all, said before anything runs (`validate
    /// --dialect`, and a run before its first step): the reason when it cannot.
    fn unsupported_on(&self, _dialect: Dialect) -> Option<String> {
        None
    }
}

/// One part of an operation that runs in a later phase than the step written in the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct LaterPart {
    /// The kind of phase it runs in: the next phase of this kind after the step's own.
    pub phase: PhaseKind,
    /// Names the part in its checksum and in `plan`: `backfill`, `contract`.
    pub tag: &'static str,
    /// What runs: a step of a kind plans write (a `backfill`) or of a part kind.
    pub step: crate::plan::Step,
}

/// ACCESS EXCLUSIVE on `table` when any of `units` is transactional (see
/// [`Operation::inverse_locks`]).
fn inverse_locks_on(table: Option<&TableName>, units: &[Unit]) -> Vec<TableLock> {
    let transactional = units.iter().any(|u| match u {
        Unit::Remember { then, .. } | Unit::Checkpoint { then, .. } => {
            matches!(**then, Unit::Transaction(_) | Unit::RebuildTable { .. })
        }
        other => matches!(other, Unit::Transaction(_) | Unit::RebuildTable { .. }),
    });
    match (transactional, table) {
        (true, Some(table)) => vec![TableLock {
            table: table.clone(),
            mode: LockMode::AccessExclusive,
        }],
        _ => Vec::new(),
    }
}

/// The error of `units` for kinds the engine drives.
fn engine_driven(kind: &str) -> RenderError {
    RenderError(format!("`{kind}` has no fixed SQL; the engine runs it"))
}

/// The inverse of a step whose work only a backup brings back.
fn lost(kind: &str, what: &str) -> Inverse {
    Inverse::Irreversible(format!(
        "`{kind}` {what}; only a backup brings it back (`phased restore`)"
    ))
}

/// Serde's default for flags that are on unless a plan says otherwise (`nullable`, `transactional`).
fn yes() -> bool {
    true
}

/// Parses one step as plans write it, for the kinds' tests.
#[cfg(test)]
fn parse_step(yaml: &str) -> crate::plan::Step {
    match serde_saphyr::from_str(yaml) {
        Ok(step) => step,
        Err(e) => panic!("{yaml}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<crate::plan::Step> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/every_step_kind.yaml");
        match crate::plan::load(&path) {
            Ok(loaded) => loaded
                .plan
                .step_refs()
                .into_iter()
                .map(|(_, s)| s.clone())
                .collect(),
            Err(report) => panic!("{}", report.render_plain()),
        }
    }

    #[test]
    fn each_kind_is_named_as_plans_write_it() {
        let steps = every_kind();
        let mut kinds: Vec<&str> = steps.iter().map(|s| s.op().kind()).collect();
        for step in &steps {
            let json = serde_json::to_value(step).unwrap_or_default();
            let tag = json.as_object().and_then(|o| o.keys().next().cloned());
            assert_eq!(tag.as_deref(), Some(step.op().kind()));
            assert!(step.label().starts_with(step.op().kind()));
        }
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(kinds.len(), 26, "the fixture has every kind: {kinds:?}");
    }

    #[test]
    fn destructive_kinds_stand_in_contract_only() {
        for step in every_kind() {
            let op = step.op();
            if op.is_destructive() {
                assert_eq!(op.allowed_in(), &[PhaseKind::Contract], "{}", op.kind());
            }
        }
    }

    #[test]
    fn steps_name_the_locks_they_need() {
        let locks = |yaml: &str| parse_step(yaml).op().locks();
        let table = |t: &str| TableName::new(t).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            locks("set_not_null: { table: t, column: c }"),
            vec![TableLock {
                table: table("t"),
                mode: LockMode::AccessExclusive
            }]
        );
        assert_eq!(
            locks("dual_write: { table: app.t, set: { c: \"1\" } }"),
            vec![TableLock {
                table: table("app.t"),
                mode: LockMode::AccessExclusive
            }]
        );
        assert!(locks("create_index: { table: t, name: i, columns: [c] }").is_empty());
        assert!(locks("drop_index: { name: i }").is_empty());
        assert!(locks("backfill: { table: t, set: { c: \"1\" } }").is_empty());
        assert!(locks("sql: \"SELECT 1\"").is_empty());
        // The catalog operations: ACCESS EXCLUSIVE for a catalog-only moment where they take
        // it; nothing to look for where they take a lock traffic never queues behind.
        for step in [
            "set_default: { table: t, column: c, default: \"0\" }",
            "drop_default: { table: t, column: c }",
            "drop_not_null: { table: t, column: c }",
            "add_unique: { table: t, name: k, columns: [c] }",
            "drop_constraint: { table: t, name: k }",
            "rename_constraint: { table: t, from: a, to: b }",
        ] {
            assert_eq!(
                locks(step),
                vec![TableLock {
                    table: table("t"),
                    mode: LockMode::AccessExclusive
                }],
                "{step}"
            );
        }
        for step in [
            "create_enum: { name: e, values: [a] }",
            "add_enum_value: { enum: e, value: b }",
            "rename_index: { table: t, from: a, to: b }",
            "set_comment: { table: t, comment: x }",
        ] {
            assert!(locks(step).is_empty(), "{step}");
        }
    }
}

#[cfg(test)]
mod kinds_tests {
    use crate::plan::Step;

    /// The names in the list are serde's keys: an unknown kind's error names exactly them.
    #[test]
    fn the_listed_names_are_the_keys_plans_write() {
        let err = match serde_saphyr::from_str::<Step>("no_such_kind: {}") {
            Err(e) => e.to_string(),
            Ok(step) => panic!("parsed {step:?}"),
        };
        assert!(err.contains(&Step::KINDS.join(", ")), "{err}");
    }
}
