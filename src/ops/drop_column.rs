//! `drop_column`: catalog-only on PostgreSQL (ACCESS EXCLUSIVE for a moment, under lock_timeout);
//! SQLite rewrites the table in its own `ALTER TABLE … DROP COLUMN`.
//!
//! The indexes and constraints that involve the column go with it, on both dialects, and each is
//! dropped by name first, in the same transaction (`Unit::DropColumn`; the target looks them up
//! when the step runs): PostgreSQL would drop them silently (a `create_index` step would still
//! say done for an index that is gone), SQLite refuses to drop an indexed column. Named, they
//! show in `phased plan` and in the log. The extra drops take no lock beyond the ACCESS
//! EXCLUSIVE the column's drop takes anyway.
//!
//! Resumes: one transaction, so a crash leaves the column or not, and the step records done with it.

use serde::{Deserialize, Serialize};

use super::add_column::drop_column_sql;
use super::name::{Name, TableName};
use super::{
    lost, Dialect, Inverse, InverseContext, LockMode, Operation, RenderError, TableLock, Unit,
};
use crate::plan::{PhaseKind, PlanDuration};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DropColumn {
    pub table: TableName,
    pub name: Name,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
}

impl Operation for DropColumn {
    fn kind(&self) -> &'static str {
        "drop_column"
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

    /// ALTER TABLE … DROP COLUMN takes ACCESS EXCLUSIVE.
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
        Ok(vec![Unit::DropColumn {
            table: self.table.to_string(),
            column: self.name.to_string(),
            drop: drop_column_sql(&self.table, &self.name, dialect),
        }])
    }

    fn inverse(&self, _ctx: &InverseContext<'_>, _done: bool, _dialect: Dialect) -> Inverse {
        lost(self.kind(), "dropped a column and its values")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::parse_step;

    #[test]
    fn has_no_inverse() {
        let drop = parse_step("drop_column: { table: t, name: c }");
        let inverse = drop
            .op()
            .inverse(&InverseContext::default(), true, Dialect::Postgres);
        assert!(
            matches!(&inverse, Inverse::Irreversible(why) if why.contains("phased restore")),
            "{inverse:?}"
        );
    }
}
