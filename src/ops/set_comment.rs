//! `set_comment`: `COMMENT ON TABLE | COLUMN … IS …` on PostgreSQL: catalog-only, SHARE UPDATE
//! EXCLUSIVE on the table (reads and writes go on). The comment it replaces (or that there was
//! none) is recorded in the step's state first, in the same transaction, so rollback puts it
//! back. SQLite keeps no comments: the step says so before anything runs.
//!
//! Resumes: one transaction that records the step done with it.

use serde::{Deserialize, Serialize};

use super::name::{literal, Name, TableName};
use super::unit::Remembered;
use super::{Dialect, Inverse, InverseContext, Operation, RenderError, Unit};
use crate::plan::{PhaseKind, PlanDuration};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SetComment {
    pub table: TableName,
    /// The column; without it the comment is the table's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<Name>,
    pub comment: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
}

impl SetComment {
    fn remembered(&self) -> Remembered {
        Remembered::Comment {
            table: self.table.to_string(),
            column: self.column.as_ref().map(|c| c.to_string()),
        }
    }
}

/// `COMMENT ON TABLE t | COLUMN t.c IS 'text' | NULL`.
pub(crate) fn comment_on(
    table: &TableName,
    column: Option<&Name>,
    comment: Option<&str>,
) -> String {
    let target = match column {
        Some(column) => format!("COLUMN {}.{}", table.quoted(), column.quoted()),
        None => format!("TABLE {}", table.quoted()),
    };
    format!(
        "COMMENT ON {target} IS {}",
        comment.map(literal).unwrap_or_else(|| "NULL".to_string())
    )
}

impl Operation for SetComment {
    fn kind(&self) -> &'static str {
        "set_comment"
    }

    fn subject(&self) -> String {
        match &self.column {
            Some(column) => format!("{}.{column}", self.table),
            None => self.table.to_string(),
        }
    }

    fn allowed_in(&self) -> &'static [PhaseKind] {
        &[PhaseKind::Expand, PhaseKind::Contract]
    }

    fn table(&self) -> Option<&TableName> {
        Some(&self.table)
    }

    // No locks to look for: COMMENT takes SHARE UPDATE EXCLUSIVE, which application traffic
    // never queues behind.

    fn lock_timeout(&self) -> Option<PlanDuration> {
        self.lock_timeout
    }

    fn unsupported_on(&self, dialect: Dialect) -> Option<String> {
        self.units(dialect).err().map(|e| e.0)
    }

    fn units(&self, dialect: Dialect) -> Result<Vec<Unit>, RenderError> {
        match dialect {
            Dialect::Postgres => Ok(vec![Unit::Remember {
                what: self.remembered(),
                then: Box::new(Unit::Transaction(vec![comment_on(
                    &self.table,
                    self.column.as_ref(),
                    Some(&self.comment),
                )])),
            }]),
            Dialect::Sqlite => Err(RenderError(
                "`set_comment` is PostgreSQL-only: SQLite keeps no comments on tables or columns"
                    .to_string(),
            )),
        }
    }

    /// The comment recorded before the change (or none) is put back.
    fn inverse(&self, _ctx: &InverseContext<'_>, _done: bool, dialect: Dialect) -> Inverse {
        match self.units(dialect) {
            Ok(_) => Inverse::Recorded(self.remembered()),
            Err(e) => Inverse::Irreversible(e.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::parse_step;

    #[test]
    fn table_or_column_comment() {
        let column = parse_step("set_comment: { table: t, column: c, comment: \"it's\" }");
        assert!(column.op().units(Dialect::Postgres).unwrap_or_default()[0]
            .sql_text()
            .ends_with("COMMENT ON COLUMN \"t\".\"c\" IS 'it''s'"));
        let table = parse_step("set_comment: { table: t, comment: x }");
        assert!(table.op().units(Dialect::Postgres).unwrap_or_default()[0]
            .sql_text()
            .ends_with("COMMENT ON TABLE \"t\" IS 'x'"));
        assert!(table.op().units(Dialect::Sqlite).is_err());
    }
}
