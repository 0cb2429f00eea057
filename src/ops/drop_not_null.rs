//! `drop_not_null`: `ALTER COLUMN … DROP NOT NULL` is catalog-only on PostgreSQL (ACCESS
//! EXCLUSIVE for a moment, no scan); SQLite rebuilds the table. Additive for old code (it
//! never writes NULL there), so it stands in `expand`. Its inverse is `set_not_null`'s safe
//! way (a validated `CHECK (col IS NOT NULL)` first, so the table is not scanned under ACCESS
//! EXCLUSIVE), which fails, naming the rows, when NULLs were written meanwhile.
//!
//! Resumes: one transaction (or one rebuild) that records the step done with it; dropping
//! NOT NULL from a nullable column is a no-op.

use serde::{Deserialize, Serialize};

use super::name::{Name, TableName};
use super::set_not_null::SetNotNull;
use super::{
    Dialect, Inverse, InverseContext, LockMode, Operation, RenderError, TableChange, TableLock,
    Unit,
};
use crate::plan::{PhaseKind, PlanDuration};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DropNotNull {
    pub table: TableName,
    pub column: Name,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
}

impl Operation for DropNotNull {
    fn kind(&self) -> &'static str {
        "drop_not_null"
    }

    fn subject(&self) -> String {
        format!("{}.{}", self.table, self.column)
    }

    fn allowed_in(&self) -> &'static [PhaseKind] {
        &[PhaseKind::Expand, PhaseKind::Contract]
    }

    fn table(&self) -> Option<&TableName> {
        Some(&self.table)
    }

    /// ALTER COLUMN … DROP NOT NULL takes ACCESS EXCLUSIVE (briefly: catalog only).
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

    /// `set_not_null`'s units: a validated check, then SET NOT NULL (SQLite: a rebuild).
    fn inverse(&self, _ctx: &InverseContext<'_>, _done: bool, dialect: Dialect) -> Inverse {
        let back = SetNotNull {
            table: self.table.clone(),
            column: self.column.clone(),
            lock_timeout: self.lock_timeout,
        };
        match back.units(dialect) {
            Ok(units) => Inverse::Units(units),
            Err(e) => Inverse::Irreversible(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::parse_step;

    #[test]
    fn drops_in_place_and_comes_back_through_a_validated_check() {
        let step = parse_step("drop_not_null: { table: t, column: c }");
        assert_eq!(
            step.op().units(Dialect::Postgres).ok(),
            Some(vec![Unit::Transaction(vec![
                "ALTER TABLE \"t\" ALTER COLUMN \"c\" DROP NOT NULL".into()
            ])])
        );
        let Inverse::Units(back) =
            step.op()
                .inverse(&InverseContext::default(), true, Dialect::Postgres)
        else {
            panic!("no units")
        };
        assert!(back[0]
            .sql_text()
            .contains("CHECK (\"c\" IS NOT NULL) NOT VALID"));
        assert_eq!(
            step.op().units(Dialect::Sqlite).ok(),
            Some(vec![Unit::RebuildTable {
                table: "t".into(),
                change: TableChange::DropNotNull { column: "c".into() }
            }])
        );
    }
}
