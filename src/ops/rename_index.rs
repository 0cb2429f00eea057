//! `rename_index`: `ALTER INDEX … RENAME TO` on PostgreSQL is catalog-only and takes SHARE
//! UPDATE EXCLUSIVE on the index (since PostgreSQL 12), which queries using it do not wait for.
//! SQLite cannot rename an index in place; the step says so before anything runs.
//!
//! Resumes: one transaction that records the step done with it.

use serde::{Deserialize, Serialize};

use super::create_index::qualified_index;
use super::name::{Name, TableName};
use super::{Dialect, Inverse, InverseContext, Operation, RenderError, Unit};
use crate::plan::{PhaseKind, PlanDuration};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RenameIndex {
    /// The index's table: a schema-qualified one says where the index lives.
    pub table: TableName,
    pub from: Name,
    pub to: Name,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
}

/// `ALTER INDEX from RENAME TO to`, `from` in `table`'s schema.
fn rename(
    table: &TableName,
    from: &Name,
    to: &Name,
    dialect: Dialect,
) -> Result<Vec<Unit>, RenderError> {
    match dialect {
        Dialect::Postgres => Ok(vec![Unit::Transaction(vec![format!(
            "ALTER INDEX {} RENAME TO {}",
            qualified_index(&TableName::in_schema(None, from), Some(table)).quoted(),
            to.quoted()
        )])]),
        Dialect::Sqlite => Err(RenderError(
            "`rename_index` is PostgreSQL-only: SQLite cannot rename an index in place (drop it \
             and create it by the new name instead)"
                .to_string(),
        )),
    }
}

impl Operation for RenameIndex {
    fn kind(&self) -> &'static str {
        "rename_index"
    }

    fn subject(&self) -> String {
        format!("{} -> {}", self.from, self.to)
    }

    fn allowed_in(&self) -> &'static [PhaseKind] {
        &[PhaseKind::Expand, PhaseKind::Contract]
    }

    fn table(&self) -> Option<&TableName> {
        Some(&self.table)
    }

    // No table locks to look for: SHARE UPDATE EXCLUSIVE on the index only.

    fn lock_timeout(&self) -> Option<PlanDuration> {
        self.lock_timeout
    }

    fn supported_on(&self, dialect: Dialect) -> Result<(), RenderError> {
        self.units(dialect).map(|_| ())
    }

    fn units(&self, dialect: Dialect) -> Result<Vec<Unit>, RenderError> {
        rename(&self.table, &self.from, &self.to, dialect)
    }

    /// The rename back.
    fn inverse(&self, _ctx: &InverseContext<'_>, _done: bool, dialect: Dialect) -> Inverse {
        match rename(&self.table, &self.to, &self.from, dialect) {
            Ok(units) => Inverse::Units(units),
            Err(e) => Inverse::Irreversible(e.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::parse_step;

    #[test]
    fn renames_in_the_tables_schema_and_back() {
        let step = parse_step("rename_index: { table: app.t, from: a_idx, to: b_idx }");
        assert_eq!(
            step.op().units(Dialect::Postgres).ok(),
            Some(vec![Unit::Transaction(vec![
                "ALTER INDEX \"app\".\"a_idx\" RENAME TO \"b_idx\"".into()
            ])])
        );
        assert_eq!(
            step.op()
                .inverse(&InverseContext::default(), true, Dialect::Postgres),
            Inverse::Units(vec![Unit::Transaction(vec![
                "ALTER INDEX \"app\".\"b_idx\" RENAME TO \"a_idx\"".into()
            ])])
        );
        assert!(step.op().locks().is_empty());
    }
}
