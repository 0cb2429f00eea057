//! `add_foreign_key`: PostgreSQL adds it `NOT VALID` (SHARE ROW EXCLUSIVE on both tables, briefly),
//! then validates separately (SHARE UPDATE EXCLUSIVE / ROW SHARE: writes go on). SQLite rebuilds.
//!
//! Resumes: like `add_check`, the add is skipped when a retry finds the constraint there.

use serde::{Deserialize, Serialize};

use super::add_check::drop_constraint;
use super::constraint::add_not_valid_then_validate;
use super::name::{ident_list, Name, TableName};
use super::{
    Dialect, Inverse, InverseContext, LockMode, Operation, RenderError, TableChange, TableLock,
    Unit,
};
use crate::plan::{PhaseKind, PlanDuration};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AddForeignKey {
    pub table: TableName,
    pub name: Name,
    pub columns: Vec<Name>,
    pub references: References,
    #[serde(default)]
    pub on_delete: Option<ReferentialAction>,
    #[serde(default)]
    pub on_update: Option<ReferentialAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct References {
    pub table: TableName,
    pub columns: Vec<Name>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
pub enum ReferentialAction {
    #[serde(rename = "CASCADE", alias = "cascade")]
    Cascade,
    #[serde(rename = "RESTRICT", alias = "restrict")]
    Restrict,
    #[serde(rename = "SET NULL", alias = "set null")]
    SetNull,
    #[serde(rename = "SET DEFAULT", alias = "set default")]
    SetDefault,
    #[serde(rename = "NO ACTION", alias = "no action")]
    NoAction,
}

impl ReferentialAction {
    pub fn as_sql(self) -> &'static str {
        match self {
            ReferentialAction::Cascade => "CASCADE",
            ReferentialAction::Restrict => "RESTRICT",
            ReferentialAction::SetNull => "SET NULL",
            ReferentialAction::SetDefault => "SET DEFAULT",
            ReferentialAction::NoAction => "NO ACTION",
        }
    }
}

impl AddForeignKey {
    /// `FOREIGN KEY (…) REFERENCES t (…) [ON DELETE …] [ON UPDATE …]`
    pub fn definition(&self) -> String {
        let mut def = format!(
            "FOREIGN KEY ({}) REFERENCES {} ({})",
            ident_list(&self.columns),
            self.references.table.quoted(),
            ident_list(&self.references.columns)
        );
        if let Some(action) = self.on_delete {
            def.push_str(&format!(" ON DELETE {}", action.as_sql()));
        }
        if let Some(action) = self.on_update {
            def.push_str(&format!(" ON UPDATE {}", action.as_sql()));
        }
        def
    }
}

impl Operation for AddForeignKey {
    fn kind(&self) -> &'static str {
        "add_foreign_key"
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

    /// ADD CONSTRAINT … FOREIGN KEY … NOT VALID: SHARE ROW EXCLUSIVE on both tables.
    fn locks(&self) -> Vec<TableLock> {
        vec![
            TableLock {
                table: self.table.clone(),
                mode: LockMode::ShareRowExclusive,
            },
            TableLock {
                table: self.references.table.clone(),
                mode: LockMode::ShareRowExclusive,
            },
        ]
    }

    fn lock_timeout(&self) -> Option<PlanDuration> {
        self.lock_timeout
    }

    fn units(&self, dialect: Dialect) -> Result<Vec<Unit>, RenderError> {
        Ok(match dialect {
            Dialect::Postgres => {
                add_not_valid_then_validate(&self.table, &self.name, &self.definition())
            }
            Dialect::Sqlite => vec![Unit::RebuildTable {
                table: self.table.to_string(),
                change: TableChange::AddForeignKey {
                    name: self.name.to_string(),
                    definition: self.definition(),
                },
            }],
        })
    }

    /// Drop the constraint (SHARE ROW EXCLUSIVE on both tables, briefly, on PostgreSQL); on
    /// SQLite, a rebuild without it.
    fn inverse(&self, _ctx: &InverseContext<'_>, _done: bool, dialect: Dialect) -> Inverse {
        Inverse::Units(drop_constraint(&self.table, &self.name, dialect))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::parse_step;

    #[test]
    fn locks_both_tables_and_renders_the_actions() {
        let fk = parse_step(
            "add_foreign_key: { table: t, name: f, columns: [u], references: { table: app.u, columns: [id] }, on_delete: cascade }",
        );
        assert_eq!(
            fk.op().locks(),
            vec![
                TableLock {
                    table: TableName::new("t").unwrap_or_else(|e| panic!("{e}")),
                    mode: LockMode::ShareRowExclusive
                },
                TableLock {
                    table: TableName::new("app.u").unwrap_or_else(|e| panic!("{e}")),
                    mode: LockMode::ShareRowExclusive
                },
            ]
        );
        let crate::plan::Step::AddForeignKey(fk) = fk else {
            panic!("not a foreign key")
        };
        assert_eq!(
            fk.definition(),
            "FOREIGN KEY (\"u\") REFERENCES \"app\".\"u\" (\"id\") ON DELETE CASCADE"
        );
    }
}
