//! `drop_constraint`: old code may rely on what the constraint guarantees (and a dropped
//! UNIQUE takes its index, which old queries may use), so it is destructive: `contract` only.
//! The constraint's definition (`pg_get_constraintdef`, and its index's `pg_get_indexdef` for
//! UNIQUE and PRIMARY KEY; SQLite: its clause in the table's SQL) is recorded in the step's
//! state first, in the drop's transaction on PostgreSQL, so rollback puts it back the safe way:
//! `NOT VALID` then `VALIDATE` (a UNIQUE or PRIMARY KEY: its index built `CONCURRENTLY`, then
//! attached). PostgreSQL's `DROP CONSTRAINT` takes ACCESS EXCLUSIVE for a moment (catalog
//! only); SQLite rebuilds the table without it.
//!
//! Resumes: `IF EXISTS`; a rerun that finds the constraint gone keeps what was recorded.

use serde::{Deserialize, Serialize};

use super::add_check::drop_constraint;
use super::name::{Name, TableName};
use super::unit::Remembered;
use super::{Dialect, Inverse, InverseContext, LockMode, Operation, RenderError, TableLock, Unit};
use crate::plan::{PhaseKind, PlanDuration};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DropConstraint {
    pub table: TableName,
    pub name: Name,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
    /// How long putting a UNIQUE constraint's index back (a rollback) may wait for older
    /// transactions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_wait_timeout: Option<PlanDuration>,
}

impl DropConstraint {
    fn remembered(&self) -> Remembered {
        Remembered::Constraint {
            table: self.table.to_string(),
            name: self.name.to_string(),
        }
    }
}

impl Operation for DropConstraint {
    fn kind(&self) -> &'static str {
        "drop_constraint"
    }

    fn subject(&self) -> String {
        format!("{}.{}", self.table, self.name)
    }

    fn allowed_in(&self) -> &'static [PhaseKind] {
        &[PhaseKind::Contract]
    }

    fn is_destructive(&self) -> bool {
        true
    }

    fn table(&self) -> Option<&TableName> {
        Some(&self.table)
    }

    /// DROP CONSTRAINT takes ACCESS EXCLUSIVE (briefly: catalog only).
    fn locks(&self) -> Vec<TableLock> {
        vec![TableLock {
            table: self.table.clone(),
            mode: LockMode::AccessExclusive,
        }]
    }

    fn lock_timeout(&self) -> Option<PlanDuration> {
        self.lock_timeout
    }

    fn index_wait_timeout(&self) -> Option<PlanDuration> {
        self.index_wait_timeout
    }

    fn units(&self, dialect: Dialect) -> Result<Vec<Unit>, RenderError> {
        let drop = drop_constraint(&self.table, &self.name, dialect);
        Ok(drop
            .into_iter()
            .map(|unit| Unit::Remember {
                what: self.remembered(),
                then: Box::new(unit),
            })
            .collect())
    }

    /// The recorded definition, added back `NOT VALID` and validated.
    fn inverse(&self, _ctx: &InverseContext<'_>, _done: bool, _dialect: Dialect) -> Inverse {
        Inverse::Recorded(self.remembered())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::parse_step;

    #[test]
    fn records_then_drops() {
        let step = parse_step("drop_constraint: { table: t, name: t_pos }");
        assert_eq!(
            step.op().units(Dialect::Postgres).ok(),
            Some(vec![Unit::Remember {
                what: Remembered::Constraint {
                    table: "t".into(),
                    name: "t_pos".into()
                },
                then: Box::new(Unit::Transaction(vec![
                    "ALTER TABLE \"t\" DROP CONSTRAINT IF EXISTS \"t_pos\"".into()
                ]))
            }])
        );
        assert_eq!(step.op().allowed_in(), &[PhaseKind::Contract]);
    }
}
