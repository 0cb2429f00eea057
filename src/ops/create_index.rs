//! `create_index`: PostgreSQL builds it `CONCURRENTLY` (SHARE UPDATE EXCLUSIVE: reads and writes go
//! on), outside any transaction; SQLite builds it in a transaction under busy_timeout.
//!
//! Resumes: a concurrent build that died leaves an INVALID index behind; the next attempt finds
//! it by its schema-qualified name (`Unit::ConcurrentIndex`), drops it concurrently and builds
//! again, and finds a valid one done already.

use serde::{Deserialize, Serialize};

use super::name::{ident_list, Name, TableName};
use super::{Dialect, Inverse, InverseContext, Operation, RenderError, Unit};
use crate::plan::{PhaseKind, PlanDuration};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CreateIndex {
    pub table: TableName,
    /// The index; it lives in its table's schema (a schema written here must be that one).
    pub name: TableName,
    pub columns: Vec<Name>,
    #[serde(default)]
    pub unique: bool,
    #[serde(default, rename = "where")]
    pub predicate: Option<String>,
    #[serde(default)]
    pub using: Option<IndexMethod>,
    #[serde(default)]
    pub include: Vec<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement_timeout: Option<PlanDuration>,
    /// How long the build may wait, in total, for older transactions (`defaults`' when absent).
    /// Absent from the serialization when not written, so existing steps keep their checksums.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_wait_timeout: Option<PlanDuration>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IndexMethod {
    Btree,
    Hash,
    Gin,
    Gist,
    Brin,
}

impl IndexMethod {
    pub fn as_sql(self) -> &'static str {
        match self {
            IndexMethod::Btree => "btree",
            IndexMethod::Hash => "hash",
            IndexMethod::Gin => "gin",
            IndexMethod::Gist => "gist",
            IndexMethod::Brin => "brin",
        }
    }
}

/// An index's name qualified by the schema it lives in: its table's when the table is
/// qualified, else the one written on the index, else none (the search path decides).
pub fn qualified_index(index: &TableName, table: Option<&TableName>) -> TableName {
    let schema = table.and_then(TableName::schema).or(index.schema());
    TableName::in_schema(schema, index.name())
}

impl Operation for CreateIndex {
    fn kind(&self) -> &'static str {
        "create_index"
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

    // No locks to look for: CONCURRENTLY takes SHARE UPDATE EXCLUSIVE, which application
    // traffic never queues behind. Its queue for that lock is bounded by lock_timeout; its
    // waits for older transactions (which block no one) by index_wait_timeout — the database
    // layer watches the build from a second session to tell the two apart
    // (`db/postgres/index_build.rs`).

    fn lock_timeout(&self) -> Option<PlanDuration> {
        self.lock_timeout
    }

    fn statement_timeout(&self) -> Option<PlanDuration> {
        self.statement_timeout
    }

    fn index_wait_timeout(&self) -> Option<PlanDuration> {
        self.index_wait_timeout
    }

    fn units(&self, dialect: Dialect) -> Result<Vec<Unit>, RenderError> {
        let unique = if self.unique { "UNIQUE " } else { "" };
        let mut tail = String::new();
        if let Some(using) = self.using.filter(|_| dialect == Dialect::Postgres) {
            tail.push_str(&format!(" USING {}", using.as_sql()));
        }
        tail.push_str(&format!(" ({})", ident_list(&self.columns)));
        if !self.include.is_empty() && dialect == Dialect::Postgres {
            tail.push_str(&format!(" INCLUDE ({})", ident_list(&self.include)));
        }
        if let Some(predicate) = &self.predicate {
            tail.push_str(&format!(" WHERE {predicate}"));
        }
        Ok(match dialect {
            Dialect::Postgres => vec![Unit::ConcurrentIndex {
                name: qualified_index(&self.name, Some(&self.table)).quoted(),
                // CREATE INDEX takes no schema on the index: it goes to its table's.
                create: format!(
                    "CREATE {unique}INDEX CONCURRENTLY {} ON {}{tail}",
                    self.name.name().quoted(),
                    self.table.quoted()
                ),
            }],
            Dialect::Sqlite => vec![Unit::Transaction(vec![format!(
                "CREATE {unique}INDEX {} ON {}{tail}",
                self.name.quoted(),
                self.table.quoted()
            )])],
        })
    }

    /// Drop the index, `CONCURRENTLY` on PostgreSQL (outside a transaction, no ACCESS EXCLUSIVE
    /// on the table), in its table's schema; it also removes an INVALID leftover of a failed build.
    fn inverse(&self, _ctx: &InverseContext<'_>, _done: bool, dialect: Dialect) -> Inverse {
        let index = match dialect {
            Dialect::Postgres => qualified_index(&self.name, Some(&self.table)),
            Dialect::Sqlite => self.name.clone(),
        };
        Inverse::Units(drop_index_units(&index, dialect))
    }
}

/// `DROP INDEX [CONCURRENTLY] IF EXISTS name`: `CONCURRENTLY` on PostgreSQL, outside any
/// transaction (SHARE UPDATE EXCLUSIVE on the table, no ACCESS EXCLUSIVE); SQLite in a transaction.
pub fn drop_index_units(index: &TableName, dialect: Dialect) -> Vec<Unit> {
    match dialect {
        Dialect::Postgres => vec![Unit::Standalone(format!(
            "DROP INDEX CONCURRENTLY IF EXISTS {}",
            index.quoted()
        ))],
        Dialect::Sqlite => vec![Unit::Transaction(vec![format!(
            "DROP INDEX IF EXISTS {}",
            index.quoted()
        )])],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::parse_step;

    #[test]
    fn postgres_is_concurrent_with_options() {
        let step = parse_step(
            "create_index: { table: t, name: t_c_idx, columns: [c], unique: true, where: \"c IS NOT NULL\", using: btree, include: [d] }",
        );
        assert_eq!(
            step.op().units(Dialect::Postgres).ok(),
            Some(vec![Unit::ConcurrentIndex {
                name: "\"t_c_idx\"".into(),
                create: "CREATE UNIQUE INDEX CONCURRENTLY \"t_c_idx\" ON \"t\" USING btree (\"c\") INCLUDE (\"d\") WHERE c IS NOT NULL".into()
            }])
        );
        assert_eq!(
            step.op().units(Dialect::Sqlite).ok(),
            Some(vec![Unit::Transaction(vec![
                "CREATE UNIQUE INDEX \"t_c_idx\" ON \"t\" (\"c\") WHERE c IS NOT NULL".into()
            ])])
        );
    }

    #[test]
    fn an_index_on_a_qualified_table_is_found_in_its_schema() {
        let step = parse_step("create_index: { table: app.accounts, name: idx, columns: [c] }");
        assert_eq!(
            step.op().units(Dialect::Postgres).ok(),
            Some(vec![Unit::ConcurrentIndex {
                name: "\"app\".\"idx\"".into(),
                create: "CREATE INDEX CONCURRENTLY \"idx\" ON \"app\".\"accounts\" (\"c\")".into()
            }])
        );
        assert_eq!(
            step.op()
                .inverse(&InverseContext::default(), true, Dialect::Postgres),
            Inverse::Units(vec![Unit::Standalone(
                "DROP INDEX CONCURRENTLY IF EXISTS \"app\".\"idx\"".into()
            )])
        );
    }

    #[test]
    fn index_wait_timeout_is_read_and_left_out_when_not_written() {
        let step =
            parse_step("create_index: { table: t, name: i, columns: [c], index_wait_timeout: 2h }");
        assert_eq!(
            step.op().index_wait_timeout(),
            Some(PlanDuration::from_millis(7_200_000))
        );
        // Not written: not serialized, so the checksums of existing steps stay the same.
        let plain = parse_step("create_index: { table: t, name: i, columns: [c] }");
        assert_eq!(plain.op().index_wait_timeout(), None);
        let json = serde_json::to_string(&plain).unwrap_or_default();
        assert!(!json.contains("index_wait_timeout"), "{json}");
    }

    #[test]
    fn inverses_per_dialect() {
        let index = parse_step("create_index: { table: t, name: t_c_idx, columns: [c] }");
        let ctx = InverseContext::default();
        assert_eq!(
            index.op().inverse(&ctx, true, Dialect::Postgres),
            Inverse::Units(vec![Unit::Standalone(
                "DROP INDEX CONCURRENTLY IF EXISTS \"t_c_idx\"".into()
            )])
        );
        assert_eq!(
            index.op().inverse(&ctx, true, Dialect::Sqlite),
            Inverse::Units(vec![Unit::Transaction(vec![
                "DROP INDEX IF EXISTS \"t_c_idx\"".into()
            ])])
        );
    }
}
