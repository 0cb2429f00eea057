//! `drop_index`: PostgreSQL drops it `CONCURRENTLY` (no ACCESS EXCLUSIVE on the table), outside a
//! transaction; SQLite in a transaction. The index's definition (`pg_get_indexdef`; SQLite: its
//! SQL in `sqlite_schema`) is recorded in the step's state first — on PostgreSQL in a write of
//! its own just before the drop (a `CONCURRENTLY` drop cannot share a transaction), on SQLite
//! in the drop's transaction — so rollback builds it again (`CONCURRENTLY` on PostgreSQL).
//!
//! Resumes: `IF EXISTS`, so a retry after a crash finishes the drop or finds nothing to do; a
//! retry that finds the index gone keeps the definition recorded by the attempt that dropped it.

use serde::{Deserialize, Serialize};

use super::create_index::{drop_index_units, qualified_index};
use super::name::TableName;
use super::unit::Remembered;
use super::{Dialect, Inverse, InverseContext, Operation, RenderError, Unit};
use crate::plan::{PhaseKind, PlanDuration};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DropIndex {
    /// `index` or `schema.index`.
    pub name: TableName,
    /// SQLite needs nothing more; on PostgreSQL, a schema-qualified table says where the index
    /// lives (as a schema-qualified name does).
    #[serde(default)]
    pub table: Option<TableName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
    /// How long the drop may wait, in total, for transactions using the index (`defaults`'
    /// when absent; not serialized when absent, so existing checksums stay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_wait_timeout: Option<PlanDuration>,
}

impl DropIndex {
    /// The index as the target finds it: in its table's schema on PostgreSQL.
    fn index(&self, dialect: Dialect) -> TableName {
        match dialect {
            Dialect::Postgres => qualified_index(&self.name, self.table.as_ref()),
            Dialect::Sqlite => self.name.clone(),
        }
    }
}

impl Operation for DropIndex {
    fn kind(&self) -> &'static str {
        "drop_index"
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
        self.table.as_ref()
    }

    // No locks to look for: DROP INDEX CONCURRENTLY takes no ACCESS EXCLUSIVE.

    fn lock_timeout(&self) -> Option<PlanDuration> {
        self.lock_timeout
    }

    fn index_wait_timeout(&self) -> Option<PlanDuration> {
        self.index_wait_timeout
    }

    fn units(&self, dialect: Dialect) -> Result<Vec<Unit>, RenderError> {
        let index = self.index(dialect);
        Ok(drop_index_units(&index, dialect)
            .into_iter()
            .map(|drop| Unit::Remember {
                what: Remembered::Index {
                    name: index.to_string(),
                },
                then: Box::new(drop),
            })
            .collect())
    }

    /// The definition recorded before the drop, built again (`CONCURRENTLY` on PostgreSQL).
    fn inverse(&self, _ctx: &InverseContext<'_>, _done: bool, dialect: Dialect) -> Inverse {
        Inverse::Recorded(Remembered::Index {
            name: self.index(dialect).to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::parse_step;

    #[test]
    fn drops_in_the_tables_schema() {
        let step = parse_step("drop_index: { name: idx, table: app.accounts }");
        assert_eq!(
            step.op().units(Dialect::Postgres).ok(),
            Some(vec![Unit::Remember {
                what: Remembered::Index {
                    name: "app.idx".into()
                },
                then: Box::new(Unit::Standalone(
                    "DROP INDEX CONCURRENTLY IF EXISTS \"app\".\"idx\"".into()
                ))
            }])
        );
        let plain = parse_step("drop_index: { name: idx }");
        assert_eq!(
            plain.op().units(Dialect::Sqlite).ok(),
            Some(vec![Unit::Remember {
                what: Remembered::Index { name: "idx".into() },
                then: Box::new(Unit::Transaction(vec![
                    "DROP INDEX IF EXISTS \"idx\"".into()
                ]))
            }])
        );
        assert_eq!(
            plain
                .op()
                .inverse(&InverseContext::default(), true, Dialect::Sqlite),
            Inverse::Recorded(Remembered::Index { name: "idx".into() })
        );
    }
}
