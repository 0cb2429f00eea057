//! `add_check`: PostgreSQL adds it `NOT VALID` (a brief ACCESS EXCLUSIVE, no scan), then validates in
//! a separate transaction under SHARE UPDATE EXCLUSIVE, which lets reads and writes go on.
//! SQLite cannot add a constraint in place: the table is rebuilt.
//!
//! Resumes: the add is skipped when a retry finds the constraint there already, and `VALIDATE`
//! of a valid constraint is a no-op, so a crash between the two units is picked up where it stopped.

use serde::{Deserialize, Serialize};

use super::constraint::add_not_valid_then_validate;
use super::name::{Name, TableName};
use super::{
    Dialect, Inverse, InverseContext, LockMode, Operation, RenderError, TableChange, TableLock,
    Unit,
};
use crate::plan::{PhaseKind, PlanDuration};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AddCheck {
    pub table: TableName,
    pub name: Name,
    pub expression: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
}

impl Operation for AddCheck {
    fn kind(&self) -> &'static str {
        "add_check"
    }

    fn subject(&self) -> String {
        self.name.to_string()
    }

    fn allowed_in(&self) -> &'static [PhaseKind] {
        &[PhaseKind::Expand, PhaseKind::Contract]
    }

    fn table(&self) -> Option<&TableName> {
        Some(&self.table)
    }

    /// ADD CONSTRAINT … CHECK … NOT VALID takes ACCESS EXCLUSIVE (briefly: no scan).
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
        Ok(match dialect {
            Dialect::Postgres => add_not_valid_then_validate(
                &self.table,
                &self.name,
                &format!("CHECK ({})", self.expression),
            ),
            Dialect::Sqlite => vec![Unit::RebuildTable {
                table: self.table.to_string(),
                change: TableChange::AddCheck {
                    name: self.name.to_string(),
                    expression: self.expression.clone(),
                },
            }],
        })
    }

    /// Drop the constraint (ACCESS EXCLUSIVE for a moment on PostgreSQL); on SQLite, a rebuild
    /// without it.
    fn inverse(&self, _ctx: &InverseContext<'_>, _done: bool, dialect: Dialect) -> Inverse {
        Inverse::Units(drop_constraint(&self.table, &self.name, dialect))
    }
}

/// `DROP CONSTRAINT IF EXISTS` on PostgreSQL; a rebuild without it on SQLite.
pub fn drop_constraint(table: &TableName, name: &Name, dialect: Dialect) -> Vec<Unit> {
    match dialect {
        Dialect::Postgres => vec![Unit::Transaction(vec![format!(
            "ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}",
            table.quoted(),
            name.quoted()
        )])],
        Dialect::Sqlite => vec![Unit::RebuildTable {
            table: table.to_string(),
            change: TableChange::DropConstraint {
                name: name.to_string(),
            },
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::parse_step;

    #[test]
    fn not_valid_then_validate_and_its_inverse() {
        let check = parse_step("add_check: { table: t, name: t_pos, expression: \"c > 0\" }");
        let units = check.op().units(Dialect::Postgres).unwrap_or_default();
        assert_eq!(units.len(), 2);
        assert!(
            units[0]
                .sql_text()
                .contains("ALTER TABLE \"t\" ADD CONSTRAINT \"t_pos\" CHECK (c > 0) NOT VALID"),
            "{units:?}"
        );
        assert_eq!(
            units[1],
            Unit::Transaction(vec![
                "ALTER TABLE \"t\" VALIDATE CONSTRAINT \"t_pos\"".into()
            ])
        );
        let ctx = InverseContext::default();
        assert!(matches!(
            check.op().inverse(&ctx, true, Dialect::Postgres),
            Inverse::Units(_)
        ));
        assert_eq!(
            check.op().inverse(&ctx, true, Dialect::Sqlite),
            Inverse::Units(vec![Unit::RebuildTable {
                table: "t".into(),
                change: TableChange::DropConstraint {
                    name: "t_pos".into()
                }
            }])
        );
    }
}
