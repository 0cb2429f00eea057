//! `rename_index`: `ALTER INDEX … RENAME TO` on PostgreSQL is catalog-only and takes SHARE
//! UPDATE EXCLUSIVE on the index (since PostgreSQL 12), which queries using it do not wait for.
//! SQLite cannot rename an index in place: it is created again under the new name from its
//! stored SQL and the old one dropped, in one transaction (`Unit::RenameIndex`).
//!
//! Resumes: one transaction that records the step done with it; on SQLite, finding the old
//! name gone and the new one there is done.

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
fn rename(table: &TableName, from: &Name, to: &Name, dialect: Dialect) -> Vec<Unit> {
    match dialect {
        Dialect::Postgres => vec![Unit::Transaction(vec![format!(
            "ALTER INDEX {} RENAME TO {}",
            qualified_index(&TableName::in_schema(None, from), Some(table)).quoted(),
            to.quoted()
        )])],
        Dialect::Sqlite => vec![Unit::RenameIndex {
            from: from.to_string(),
            to: to.to_string(),
        }],
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
        assert_eq!(
            step.op().units(Dialect::Sqlite).ok(),
            Some(vec![Unit::RenameIndex {
                from: "a_idx".into(),
                to: "b_idx".into()
            }])
        );
    }
}
