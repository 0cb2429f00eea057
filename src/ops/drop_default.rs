//! `drop_default`: `ALTER COLUMN … DROP DEFAULT`, catalog-only on PostgreSQL (ACCESS EXCLUSIVE
//! for a moment); SQLite rebuilds the table. Old code that inserts rows without the column
//! relies on the default, so this is destructive: `contract` only. The default is recorded in
//! the step's state first (in the same transaction on PostgreSQL), so rollback puts it back.
//!
//! Resumes: one transaction (PostgreSQL) or one rebuild (SQLite) that records the step done
//! with it; dropping a default that is not there is a no-op.

use serde::{Deserialize, Serialize};

use super::name::{Name, TableName};
use super::set_default::{change_default, remember_default};
use super::{Dialect, Inverse, InverseContext, LockMode, Operation, RenderError, TableLock, Unit};
use crate::plan::{PhaseKind, PlanDuration};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DropDefault {
    pub table: TableName,
    pub column: Name,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
}

impl Operation for DropDefault {
    fn kind(&self) -> &'static str {
        "drop_default"
    }

    fn subject(&self) -> String {
        format!("{}.{}", self.table, self.column)
    }

    fn allowed_in(&self) -> &'static [PhaseKind] {
        &[PhaseKind::Contract]
    }

    /// Old code may insert rows that leave the column to its default.
    fn is_destructive(&self) -> bool {
        true
    }

    fn table(&self) -> Option<&TableName> {
        Some(&self.table)
    }

    /// ALTER COLUMN … DROP DEFAULT takes ACCESS EXCLUSIVE (briefly: catalog only).
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
        Ok(change_default(&self.table, &self.column, None, dialect))
    }

    /// The default recorded before the drop is put back.
    fn inverse(&self, _ctx: &InverseContext<'_>, _done: bool, _dialect: Dialect) -> Inverse {
        Inverse::Recorded(remember_default(&self.table, &self.column))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::parse_step;

    #[test]
    fn records_then_drops() {
        let step = parse_step("drop_default: { table: t, column: c }");
        let units = step.op().units(Dialect::Postgres).unwrap_or_default();
        assert_eq!(
            units[0].sql_text(),
            "-- first: record the default of \"t\".\"c\" in the step's state (rollback puts it back)\nALTER TABLE \"t\" ALTER COLUMN \"c\" DROP DEFAULT"
        );
        assert!(step.op().is_destructive());
    }
}
