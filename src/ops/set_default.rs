//! `set_default`: `ALTER COLUMN … SET DEFAULT` is catalog-only on PostgreSQL (ACCESS EXCLUSIVE
//! for a moment, no rewrite, no scan: rows written before keep their values); the default it
//! replaces (or that there was none) is recorded in the step's state first, in the same
//! transaction, so rollback puts that one back. SQLite cannot change a default in place: the
//! table is rebuilt.
//!
//! Resumes: one transaction (PostgreSQL) or one rebuild (SQLite) that records the step done
//! with it; setting the same default again is a no-op.

use serde::{Deserialize, Serialize};

use super::name::{Name, TableName};
use super::unit::Remembered;
use super::{
    Dialect, Inverse, InverseContext, LockMode, Operation, RenderError, TableChange, TableLock,
    Unit,
};
use crate::plan::{PhaseKind, PlanDuration};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SetDefault {
    pub table: TableName,
    pub column: Name,
    /// An SQL expression, as in `add_column`: `"'new'"`, `"0"`, `"now()"`.
    pub default: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
}

/// What a default change records first: the column's default as it was.
pub(crate) fn remember_default(table: &TableName, column: &Name) -> Remembered {
    Remembered::Default {
        table: table.to_string(),
        column: column.to_string(),
    }
}

/// `ALTER TABLE … ALTER COLUMN … SET DEFAULT expr | DROP DEFAULT` (PostgreSQL), after recording
/// the default it replaces; on SQLite a rebuild with the column's new default (`expr` wrapped
/// in parentheses, which SQLite takes for any expression).
pub(crate) fn change_default(
    table: &TableName,
    column: &Name,
    default: Option<&str>,
    dialect: Dialect,
) -> Vec<Unit> {
    let change = match dialect {
        Dialect::Postgres => Unit::Transaction(vec![format!(
            "ALTER TABLE {} ALTER COLUMN {} {}",
            table.quoted(),
            column.quoted(),
            match default {
                Some(expr) => format!("SET DEFAULT {expr}"),
                None => "DROP DEFAULT".to_string(),
            }
        )]),
        Dialect::Sqlite => Unit::RebuildTable {
            table: table.to_string(),
            change: TableChange::SetDefault {
                column: column.to_string(),
                default: default.map(|expr| format!("({expr})")),
            },
        },
    };
    vec![Unit::Remember {
        what: remember_default(table, column),
        then: Box::new(change),
    }]
}

impl Operation for SetDefault {
    fn kind(&self) -> &'static str {
        "set_default"
    }

    fn subject(&self) -> String {
        format!("{}.{}", self.table, self.column)
    }

    /// Additive: old code that names the column keeps working, and rows it inserts without
    /// the column get the new default.
    fn allowed_in(&self) -> &'static [PhaseKind] {
        &[PhaseKind::Expand, PhaseKind::Contract]
    }

    fn table(&self) -> Option<&TableName> {
        Some(&self.table)
    }

    /// ALTER COLUMN … SET DEFAULT takes ACCESS EXCLUSIVE (briefly: catalog only).
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
        Ok(change_default(
            &self.table,
            &self.column,
            Some(&self.default),
            dialect,
        ))
    }

    /// The default recorded before the change (or none) is put back.
    fn inverse(&self, _ctx: &InverseContext<'_>, _done: bool, _dialect: Dialect) -> Inverse {
        Inverse::Recorded(remember_default(&self.table, &self.column))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::parse_step;

    #[test]
    fn records_then_sets_per_dialect() {
        let step = parse_step("set_default: { table: app.t, column: c, default: \"'new'\" }");
        let what = Remembered::Default {
            table: "app.t".into(),
            column: "c".into(),
        };
        assert_eq!(
            step.op().units(Dialect::Postgres).ok(),
            Some(vec![Unit::Remember {
                what: what.clone(),
                then: Box::new(Unit::Transaction(vec![
                    "ALTER TABLE \"app\".\"t\" ALTER COLUMN \"c\" SET DEFAULT 'new'".into()
                ]))
            }])
        );
        assert_eq!(
            step.op().units(Dialect::Sqlite).ok(),
            Some(vec![Unit::Remember {
                what: what.clone(),
                then: Box::new(Unit::RebuildTable {
                    table: "app.t".into(),
                    change: TableChange::SetDefault {
                        column: "c".into(),
                        default: Some("('new')".into())
                    }
                })
            }])
        );
        assert_eq!(
            step.op()
                .inverse(&InverseContext::default(), true, Dialect::Sqlite),
            Inverse::Recorded(what)
        );
    }
}
