//! `set_not_null`: PostgreSQL adds `CHECK (col IS NOT NULL) NOT VALID`, validates it (no ACCESS
//! EXCLUSIVE scan), then `SET NOT NULL` uses the validated check to skip its own scan, and the
//! helper check is dropped. SQLite rebuilds the table.
//!
//! Resumes: the helper check is added unless a retry finds it there; validating it again and
//! `SET NOT NULL` on a column that is already NOT NULL are no-ops.

use serde::{Deserialize, Serialize};

use super::constraint::add_not_valid_then_validate;
use super::name::{derived_name, Name, TableName};
use super::{
    Dialect, Inverse, InverseContext, LockMode, Operation, RenderError, TableChange, TableLock,
    Unit,
};
use crate::plan::{PhaseKind, PlanDuration};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SetNotNull {
    pub table: TableName,
    pub column: Name,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
}

impl SetNotNull {
    /// The helper check's name: `<table>_<column>_not_null`.
    pub fn helper_name(&self) -> Name {
        derived_name(
            self.table.schema(),
            &[self.table.name(), &self.column, "not_null"],
        )
    }
}

impl Operation for SetNotNull {
    fn kind(&self) -> &'static str {
        "set_not_null"
    }

    fn subject(&self) -> String {
        format!("{}.{}", self.table, self.column)
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

    /// ADD CONSTRAINT … NOT VALID and SET NOT NULL take ACCESS EXCLUSIVE (briefly: no scan).
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
        let table = self.table.quoted();
        let column = self.column.quoted();
        let helper = self.helper_name();
        Ok(match dialect {
            Dialect::Postgres => {
                let mut units = add_not_valid_then_validate(
                    &self.table,
                    &helper,
                    &format!("CHECK ({column} IS NOT NULL)"),
                );
                units.push(Unit::Transaction(vec![
                    format!("ALTER TABLE {table} ALTER COLUMN {column} SET NOT NULL"),
                    format!("ALTER TABLE {table} DROP CONSTRAINT {}", helper.quoted()),
                ]));
                units
            }
            Dialect::Sqlite => vec![Unit::RebuildTable {
                table: self.table.to_string(),
                change: TableChange::SetNotNull {
                    column: self.column.to_string(),
                },
            }],
        })
    }

    /// `DROP NOT NULL` (catalog-only, ACCESS EXCLUSIVE for a moment) on PostgreSQL; on SQLite, a
    /// rebuild with the column nullable.
    fn inverse(&self, _ctx: &InverseContext<'_>, _done: bool, dialect: Dialect) -> Inverse {
        Inverse::Units(match dialect {
            Dialect::Postgres => vec![Unit::Transaction(vec![format!(
                "ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL",
                self.table.quoted(),
                self.column.quoted()
            )])],
            Dialect::Sqlite => vec![Unit::RebuildTable {
                table: self.table.to_string(),
                change: TableChange::DropNotNull {
                    column: self.column.to_string(),
                },
            }],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::parse_step;

    #[test]
    fn validated_check_then_set_not_null() {
        let step = parse_step("set_not_null: { table: app.t, column: c }");
        let units = step.op().units(Dialect::Postgres).unwrap_or_default();
        assert_eq!(
            units.last(),
            Some(&Unit::Transaction(vec![
                "ALTER TABLE \"app\".\"t\" ALTER COLUMN \"c\" SET NOT NULL".into(),
                "ALTER TABLE \"app\".\"t\" DROP CONSTRAINT \"t_c_not_null\"".into(),
            ]))
        );
        assert_eq!(
            step.op()
                .inverse(&InverseContext::default(), true, Dialect::Sqlite),
            Inverse::Units(vec![Unit::RebuildTable {
                table: "app.t".into(),
                change: TableChange::DropNotNull { column: "c".into() }
            }])
        );
    }
}
