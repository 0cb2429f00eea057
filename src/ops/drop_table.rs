//! `drop_table`: ACCESS EXCLUSIVE on the table for the (catalog-only) drop, under lock_timeout.
//!
//! Resumes: one transaction (`IF EXISTS`), so a retry after a crash is harmless.

use serde::{Deserialize, Serialize};

use super::name::TableName;
use super::{
    lost, Dialect, Inverse, InverseContext, LockMode, Operation, RenderError, TableLock, Unit,
};
use crate::plan::{PhaseKind, PlanDuration};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DropTable {
    pub name: TableName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
}

impl Operation for DropTable {
    fn kind(&self) -> &'static str {
        "drop_table"
    }

    fn subject(&self) -> String {
        self.name.to_string()
    }

    fn allowed_in(&self) -> &'static [PhaseKind] {
        &[PhaseKind::Contract]
    }

    fn is_destructive(&self) -> bool {
        true
    }

    fn table(&self) -> Option<&TableName> {
        Some(&self.name)
    }

    /// DROP TABLE takes ACCESS EXCLUSIVE.
    fn locks(&self) -> Vec<TableLock> {
        vec![TableLock {
            table: self.name.clone(),
            mode: LockMode::AccessExclusive,
        }]
    }

    fn lock_timeout(&self) -> Option<PlanDuration> {
        self.lock_timeout
    }

    fn units(&self, _dialect: Dialect) -> Result<Vec<Unit>, RenderError> {
        Ok(vec![Unit::Transaction(vec![format!(
            "DROP TABLE IF EXISTS {}",
            self.name.quoted()
        )])])
    }

    fn inverse(&self, _ctx: &InverseContext<'_>, _done: bool, _dialect: Dialect) -> Inverse {
        lost(self.kind(), "dropped a table and its rows")
    }
}
