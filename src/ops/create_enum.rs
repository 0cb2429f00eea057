//! `create_enum`: `CREATE TYPE … AS ENUM (…)` on PostgreSQL: a new type nobody uses yet, so no
//! lock anyone waits for. SQLite has no enum types: the step says so before anything runs (a
//! CHECK on each column would be a different thing, and `add_enum_value` could not reach it).
//!
//! Resumes: one transaction that records the step done with it.

use serde::{Deserialize, Serialize};

use super::name::{literal, TableName};
use super::{Dialect, Inverse, InverseContext, Operation, RenderError, Unit};
use crate::plan::{PhaseKind, PlanDuration};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CreateEnum {
    /// `type` or `schema.type`.
    pub name: TableName,
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
}

/// The error of an enum step on SQLite.
pub(crate) fn postgres_only(kind: &str) -> RenderError {
    RenderError(format!(
        "`{kind}` is PostgreSQL-only: SQLite has no enum types (use a `text` column with an \
         `add_check` listing the values instead)"
    ))
}

impl Operation for CreateEnum {
    fn kind(&self) -> &'static str {
        "create_enum"
    }

    fn subject(&self) -> String {
        self.name.to_string()
    }

    fn allowed_in(&self) -> &'static [PhaseKind] {
        &[PhaseKind::Expand, PhaseKind::Contract]
    }

    // No locks to look for: the type is new.

    fn lock_timeout(&self) -> Option<PlanDuration> {
        self.lock_timeout
    }

    fn unsupported_on(&self, dialect: Dialect) -> Option<String> {
        (dialect == Dialect::Sqlite).then(|| postgres_only(self.kind()).0)
    }

    fn units(&self, dialect: Dialect) -> Result<Vec<Unit>, RenderError> {
        match dialect {
            Dialect::Postgres => Ok(vec![Unit::Transaction(vec![format!(
                "CREATE TYPE {} AS ENUM ({})",
                self.name.quoted(),
                self.values
                    .iter()
                    .map(|v| literal(v))
                    .collect::<Vec<_>>()
                    .join(", ")
            )])]),
            Dialect::Sqlite => Err(postgres_only(self.kind())),
        }
    }

    /// `DROP TYPE` (it fails, naming them, while columns still use it: steps after this one
    /// are rolled back first).
    fn inverse(&self, _ctx: &InverseContext<'_>, _done: bool, dialect: Dialect) -> Inverse {
        match dialect {
            Dialect::Postgres => Inverse::Units(vec![Unit::Transaction(vec![format!(
                "DROP TYPE IF EXISTS {}",
                self.name.quoted()
            )])]),
            Dialect::Sqlite => Inverse::Irreversible(postgres_only(self.kind()).0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::parse_step;

    #[test]
    fn values_are_literals_and_sqlite_is_refused() {
        let step = parse_step("create_enum: { name: app.status, values: [new, \"it's\"] }");
        assert_eq!(
            step.op().units(Dialect::Postgres).ok(),
            Some(vec![Unit::Transaction(vec![
                "CREATE TYPE \"app\".\"status\" AS ENUM ('new', 'it''s')".into()
            ])])
        );
        let refused = step.op().units(Dialect::Sqlite).err().map(|e| e.0);
        assert!(refused.is_some_and(|e| e.contains("PostgreSQL-only")));
    }
}
