//! `create_table`: a new table. Takes no lock other sessions can be waiting on (the table is new).
//!
//! Resumes: one transaction, so a crash leaves either the table (and the step recorded done in
//! the same transaction) or nothing, and a retry starts over.

use serde::{Deserialize, Serialize};

use super::name::{ident_list, Name, TableName};
use super::{Dialect, Inverse, InverseContext, Operation, RenderError, Unit};
use crate::plan::{PhaseKind, PlanDuration};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CreateTable {
    pub name: TableName,
    pub columns: Vec<Column>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
}

/// A column of a new table; several `primary_key` columns make a composite key.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Column {
    pub name: Name,
    #[serde(rename = "type")]
    pub ty: String,
    #[serde(default = "super::yes")]
    pub nullable: bool,
    #[serde(default)]
    pub primary_key: bool,
    #[serde(default)]
    pub unique: bool,
    #[serde(default)]
    pub default: Option<String>,
}

impl Operation for CreateTable {
    fn kind(&self) -> &'static str {
        "create_table"
    }

    /// Its inverse drops the table it made (ACCESS EXCLUSIVE), which others use by then.
    fn inverse_locks(&self, units: &[Unit]) -> Vec<super::TableLock> {
        super::inverse_locks_on(Some(&self.name), units)
    }

    fn subject(&self) -> String {
        self.name.to_string()
    }

    fn allowed_in(&self) -> &'static [PhaseKind] {
        &[PhaseKind::Expand]
    }

    fn lock_timeout(&self) -> Option<PlanDuration> {
        self.lock_timeout
    }

    fn units(&self, _dialect: Dialect) -> Result<Vec<Unit>, RenderError> {
        let keys: Vec<&Name> = self
            .columns
            .iter()
            .filter(|c| c.primary_key)
            .map(|c| &c.name)
            .collect();
        let mut defs: Vec<String> = self
            .columns
            .iter()
            .map(|c| {
                let mut def = format!("{} {}", c.name.quoted(), c.ty);
                if keys.len() == 1 && c.primary_key {
                    def.push_str(" PRIMARY KEY");
                } else if !c.nullable {
                    def.push_str(" NOT NULL");
                }
                if c.unique {
                    def.push_str(" UNIQUE");
                }
                if let Some(default) = &c.default {
                    def.push_str(&format!(" DEFAULT {default}"));
                }
                def
            })
            .collect();
        if keys.len() > 1 {
            defs.push(format!("PRIMARY KEY ({})", ident_list(&keys)));
        }
        Ok(vec![Unit::Transaction(vec![format!(
            "CREATE TABLE {} (\n  {}\n)",
            self.name.quoted(),
            defs.join(",\n  ")
        )])])
    }

    /// Drop the table (it is new, so nothing else is lost). ACCESS EXCLUSIVE, briefly.
    fn inverse(&self, _ctx: &InverseContext<'_>, _done: bool, _dialect: Dialect) -> Inverse {
        Inverse::Units(vec![Unit::Transaction(vec![format!(
            "DROP TABLE IF EXISTS {}",
            self.name.quoted()
        )])])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::parse_step;

    #[test]
    fn single_and_composite_keys() {
        let single = parse_step(
            "create_table: { name: t, columns: [{ name: id, type: bigint, primary_key: true }, { name: v, type: text }] }",
        );
        assert_eq!(
            single.op().units(Dialect::Postgres).ok(),
            Some(vec![Unit::Transaction(vec![
                "CREATE TABLE \"t\" (\n  \"id\" bigint PRIMARY KEY,\n  \"v\" text\n)".into()
            ])])
        );
        let composite = parse_step(
            "create_table: { name: t, columns: [{ name: a, type: int, primary_key: true }, { name: b, type: int, primary_key: true }] }",
        );
        let units = composite.op().units(Dialect::Sqlite).unwrap_or_default();
        let Some(Unit::Transaction(sql)) = units.first() else {
            panic!("expected a transaction: {units:?}");
        };
        assert!(sql[0].contains("PRIMARY KEY (\"a\", \"b\")"), "{}", sql[0]);
    }

    #[test]
    fn inverse_drops_the_new_table() {
        let table = parse_step("create_table: { name: t, columns: [{ name: id, type: int }] }");
        let ctx = InverseContext::default();
        assert_eq!(
            table.op().inverse(&ctx, true, Dialect::Sqlite),
            Inverse::Units(vec![Unit::Transaction(vec![
                "DROP TABLE IF EXISTS \"t\"".into()
            ])])
        );
    }
}
