//! `add_column`: a catalog-only change (no rewrite: defaults are constants), but it needs ACCESS
//! EXCLUSIVE for a moment, so it runs under lock_timeout.
//!
//! Resumes: one transaction, so a crash leaves the column (recorded done with it) or nothing.

use serde::{Deserialize, Serialize};

use super::name::{Name, TableName};
use super::{Dialect, Inverse, InverseContext, LockMode, Operation, RenderError, TableLock, Unit};
use crate::plan::{PhaseKind, PlanDuration};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AddColumn {
    pub table: TableName,
    pub name: Name,
    #[serde(rename = "type")]
    pub ty: String,
    #[serde(default = "super::yes")]
    pub nullable: bool,
    /// A constant SQL expression.
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
}

impl Operation for AddColumn {
    fn kind(&self) -> &'static str {
        "add_column"
    }

    fn subject(&self) -> String {
        format!("{}.{}", self.table, self.name)
    }

    fn allowed_in(&self) -> &'static [PhaseKind] {
        &[PhaseKind::Expand]
    }

    fn table(&self) -> Option<&TableName> {
        Some(&self.table)
    }

    /// ALTER TABLE … ADD COLUMN takes ACCESS EXCLUSIVE.
    fn locks(&self) -> Vec<TableLock> {
        vec![TableLock {
            table: self.table.clone(),
            mode: LockMode::AccessExclusive,
        }]
    }

    fn lock_timeout(&self) -> Option<PlanDuration> {
        self.lock_timeout
    }

    fn units(&self, _dialect: Dialect) -> Result<Vec<Unit>, RenderError> {
        let mut sql = format!(
            "ALTER TABLE {} ADD COLUMN {} {}",
            self.table.quoted(),
            self.name.quoted(),
            self.ty
        );
        if let Some(default) = &self.default {
            sql.push_str(&format!(" DEFAULT {default}"));
        }
        if !self.nullable {
            sql.push_str(" NOT NULL");
        }
        Ok(vec![Unit::Transaction(vec![sql])])
    }

    /// Drop the column (catalog-only on PostgreSQL, ACCESS EXCLUSIVE for a moment). SQLite has
    /// no `IF EXISTS` here and refuses while an index or trigger still uses the column, which
    /// rollback's newest-first order takes care of.
    fn inverse(&self, _ctx: &InverseContext<'_>, _done: bool, dialect: Dialect) -> Inverse {
        Inverse::Units(vec![Unit::Transaction(vec![drop_column_sql(
            &self.table,
            &self.name,
            dialect,
        )])])
    }
}

/// `ALTER TABLE … DROP COLUMN [IF EXISTS] …` (SQLite has no `IF EXISTS` there).
pub fn drop_column_sql(table: &TableName, column: &Name, dialect: Dialect) -> String {
    let if_exists = match dialect {
        Dialect::Postgres => "IF EXISTS ",
        Dialect::Sqlite => "",
    };
    format!(
        "ALTER TABLE {} DROP COLUMN {if_exists}{}",
        table.quoted(),
        column.quoted()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::parse_step;

    #[test]
    fn renders_default_and_not_null() {
        let step = parse_step(
            "add_column: { table: accounts, name: score, type: integer, nullable: false, default: \"0\" }",
        );
        assert_eq!(
            step.op().units(Dialect::Postgres).ok(),
            Some(vec![Unit::Transaction(vec![
                "ALTER TABLE \"accounts\" ADD COLUMN \"score\" integer DEFAULT 0 NOT NULL".into()
            ])])
        );
    }

    #[test]
    fn inverse_drops_the_column() {
        let column = parse_step("add_column: { table: t, name: c, type: text }");
        assert_eq!(
            column
                .op()
                .inverse(&InverseContext::default(), true, Dialect::Postgres),
            Inverse::Units(vec![Unit::Transaction(vec![
                "ALTER TABLE \"t\" DROP COLUMN IF EXISTS \"c\"".into()
            ])])
        );
    }
}
