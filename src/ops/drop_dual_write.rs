//! `drop_dual_write`: removes the trigger (and its function) a `dual_write` created, once no old
//! application code writes the table. ACCESS EXCLUSIVE for `DROP TRIGGER`, briefly.
//!
//! Resumes: one transaction with `IF EXISTS`, so a retry finishes or finds nothing to do.

use serde::{Deserialize, Serialize};

use super::dual_write::drop_units;
use super::name::TableName;
use super::{Dialect, Inverse, InverseContext, LockMode, Operation, RenderError, TableLock, Unit};
use crate::plan::{PhaseKind, PlanDuration};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DropDualWrite {
    pub table: TableName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
}

impl Operation for DropDualWrite {
    fn kind(&self) -> &'static str {
        "drop_dual_write"
    }

    fn subject(&self) -> String {
        self.table.to_string()
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

    /// DROP TRIGGER takes ACCESS EXCLUSIVE.
    fn locks(&self) -> Vec<TableLock> {
        vec![TableLock {
            table: self.table.clone(),
            mode: LockMode::AccessExclusive,
        }]
    }

    fn lock_timeout(&self) -> Option<PlanDuration> {
        self.lock_timeout
    }

    fn units(&self, dialect: Dialect) -> Result<Vec<Unit>, RenderError> {
        Ok(drop_units(&self.table, dialect))
    }

    /// Re-create the plan's (last) `dual_write` for the table.
    fn inverse(&self, ctx: &InverseContext<'_>, _done: bool, dialect: Dialect) -> Inverse {
        match ctx.dual_write_for(&self.table).map(|d| d.units(dialect)) {
            Some(Ok(units)) => Inverse::Units(units),
            _ => Inverse::Irreversible(format!(
                "the plan has no `dual_write` for `{}` to re-create",
                self.table
            )),
        }
    }
}
