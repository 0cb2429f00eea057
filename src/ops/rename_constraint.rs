//! `rename_constraint`: `ALTER TABLE … RENAME CONSTRAINT` on PostgreSQL is catalog-only
//! (ACCESS EXCLUSIVE for a moment, so it looks before it queues); a UNIQUE or PRIMARY KEY
//! constraint's index is renamed with it. SQLite keeps constraint names in the table's SQL:
//! the table is rebuilt.
//!
//! Resumes: one transaction (or one rebuild) that records the step done with it.

use serde::{Deserialize, Serialize};

use super::name::{Name, TableName};
use super::{
    Dialect, Inverse, InverseContext, LockMode, Operation, RenderError, TableChange, TableLock,
    Unit,
};
use crate::plan::{PhaseKind, PlanDuration};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RenameConstraint {
    pub table: TableName,
    pub from: Name,
    pub to: Name,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
}

fn rename(table: &TableName, from: &Name, to: &Name, dialect: Dialect) -> Vec<Unit> {
    match dialect {
        Dialect::Postgres => vec![Unit::Transaction(vec![format!(
            "ALTER TABLE {} RENAME CONSTRAINT {} TO {}",
            table.quoted(),
            from.quoted(),
            to.quoted()
        )])],
        Dialect::Sqlite => vec![Unit::RebuildTable {
            table: table.to_string(),
            change: TableChange::RenameConstraint {
                from: from.to_string(),
                to: to.to_string(),
            },
        }],
    }
}

impl Operation for RenameConstraint {
    fn kind(&self) -> &'static str {
        "rename_constraint"
    }

    fn subject(&self) -> String {
        format!("{}.{} -> {}", self.table, self.from, self.to)
    }

    fn allowed_in(&self) -> &'static [PhaseKind] {
        &[PhaseKind::Expand, PhaseKind::Contract]
    }

    fn table(&self) -> Option<&TableName> {
        Some(&self.table)
    }

    /// RENAME CONSTRAINT takes ACCESS EXCLUSIVE (briefly: catalog only).
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
        Ok(rename(&self.table, &self.from, &self.to, dialect))
    }

    /// The rename back.
    fn inverse(&self, _ctx: &InverseContext<'_>, _done: bool, dialect: Dialect) -> Inverse {
        Inverse::Units(rename(&self.table, &self.to, &self.from, dialect))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::parse_step;

    #[test]
    fn renames_and_back() {
        let step = parse_step("rename_constraint: { table: t, from: a, to: b }");
        assert_eq!(
            step.op().units(Dialect::Postgres).ok(),
            Some(vec![Unit::Transaction(vec![
                "ALTER TABLE \"t\" RENAME CONSTRAINT \"a\" TO \"b\"".into()
            ])])
        );
        assert_eq!(
            step.op()
                .inverse(&InverseContext::default(), true, Dialect::Sqlite),
            Inverse::Units(vec![Unit::RebuildTable {
                table: "t".into(),
                change: TableChange::RenameConstraint {
                    from: "b".into(),
                    to: "a".into()
                }
            }])
        );
    }
}
