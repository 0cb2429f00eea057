//! `rename_table`: renames a table, written once in `expand`, with both application versions
//! working until `contract`. Expand renames the table and leaves a view by the old name in its
//! place, in one transaction: on PostgreSQL a view over one table is updatable as it stands
//! (inserts, updates, deletes, `RETURNING`, `ON CONFLICT`); on SQLite INSTEAD OF triggers make it
//! so. The old application keeps using the old name through the view, the new one the new name:
//! one table, so each sees every row the other writes, and nothing is copied. Contract drops the
//! view. pgroll and Reshape call it `rename_table` too.
//!
//! Resumes: each part is one transaction.

use serde::{Deserialize, Serialize};

use super::facts::TableFacts;
use super::name::{quote, TableName};
use super::{
    Dialect, Inverse, InverseContext, LaterPart, LockMode, Operation, RenderError, TableLock, Unit,
};
use crate::plan::{PhaseKind, PlanDuration, Step};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RenameTable {
    pub from: TableName,
    /// The new name, in the table's schema (a schema written here must be the table's).
    pub to: TableName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
}

impl RenameTable {
    /// The new name, schema-qualified like the old one.
    fn renamed(&self) -> TableName {
        TableName::in_schema(self.from.schema(), self.to.name())
    }

    /// The view by the old name that stands in for the table until contract.
    fn view_units(&self, dialect: Dialect, facts: &TableFacts) -> Result<Vec<String>, RenderError> {
        let (view, table) = (self.from.quoted(), self.renamed().quoted());
        let mut sql = vec![format!("CREATE VIEW {view} AS SELECT * FROM {table}")];
        match dialect {
            Dialect::Sqlite => {
                sql.extend(sqlite_view_triggers(&self.from, &self.renamed(), facts)?)
            }
            // The roles the old application runs as reach the table through the view: they
            // get on the view what they had on the table.
            Dialect::Postgres => sql.push(format!(
                "DO $phased$\nDECLARE g record;\nBEGIN\n  FOR g IN SELECT a.privilege_type AS privilege, a.grantee AS role FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = {}::regclass AND a.grantee <> c.relowner LOOP\n    EXECUTE format('GRANT %s ON %s TO %s', g.privilege, {}, CASE WHEN g.role = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(g.role)) END);\n  END LOOP;\nEND\n$phased$",
                self.renamed().literal(),
                self.from.literal()
            )),
        }
        Ok(sql)
    }
}

impl Operation for RenameTable {
    fn kind(&self) -> &'static str {
        "rename_table"
    }

    fn subject(&self) -> String {
        format!("{} → {}", self.from, self.to.name())
    }

    fn allowed_in(&self) -> &'static [PhaseKind] {
        &[PhaseKind::Expand]
    }

    fn table(&self) -> Option<&TableName> {
        Some(&self.from)
    }

    /// ALTER TABLE … RENAME takes ACCESS EXCLUSIVE, for a moment.
    fn locks(&self) -> Vec<TableLock> {
        vec![TableLock {
            table: self.from.clone(),
            mode: LockMode::AccessExclusive,
        }]
    }

    fn lock_timeout(&self) -> Option<PlanDuration> {
        self.lock_timeout
    }

    /// SQLite's INSTEAD OF triggers list the table's columns.
    fn facts_of(&self) -> Option<&TableName> {
        Some(&self.from)
    }

    fn units(&self, dialect: Dialect) -> Result<Vec<Unit>, RenderError> {
        self.units_with(dialect, &TableFacts::default())
    }

    fn units_with(&self, dialect: Dialect, facts: &TableFacts) -> Result<Vec<Unit>, RenderError> {
        let mut sql = vec![format!(
            "ALTER TABLE {} RENAME TO {}",
            self.from.quoted(),
            self.to.name().quoted()
        )];
        sql.extend(self.view_units(dialect, facts)?);
        Ok(vec![Unit::Transaction(sql)])
    }

    /// Drop the view and give the table its old name back: every row either application wrote
    /// is in the one table.
    fn inverse(&self, _ctx: &InverseContext<'_>, _done: bool, dialect: Dialect) -> Inverse {
        let rename = match dialect {
            Dialect::Postgres => format!(
                "ALTER TABLE IF EXISTS {} RENAME TO {}",
                self.renamed().quoted(),
                self.from.name().quoted()
            ),
            Dialect::Sqlite => format!(
                "ALTER TABLE {} RENAME TO {}",
                self.renamed().quoted(),
                self.from.name().quoted()
            ),
        };
        Inverse::Units(vec![Unit::Transaction(vec![
            format!("DROP VIEW IF EXISTS {}", self.from.quoted()),
            rename,
        ])])
    }

    fn later_parts(&self) -> Vec<LaterPart> {
        vec![LaterPart {
            phase: PhaseKind::Contract,
            tag: "contract",
            step: Step::RenameTableContract(RenameTableContract {
                from: self.from.clone(),
                to: self.to.clone(),
                lock_timeout: self.lock_timeout,
            }),
        }]
    }
}

/// `rename_table`'s contract part: drops the view by the old name.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct RenameTableContract {
    pub from: TableName,
    pub to: TableName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
}

impl RenameTableContract {
    fn op(&self) -> RenameTable {
        RenameTable {
            from: self.from.clone(),
            to: self.to.clone(),
            lock_timeout: self.lock_timeout,
        }
    }
}

impl Operation for RenameTableContract {
    fn kind(&self) -> &'static str {
        "rename_table"
    }

    fn subject(&self) -> String {
        format!(
            "{} → {}: drop the view {}",
            self.from,
            self.to.name(),
            self.from
        )
    }

    fn allowed_in(&self) -> &'static [PhaseKind] {
        &[PhaseKind::Contract]
    }

    fn is_destructive(&self) -> bool {
        true
    }

    fn table(&self) -> Option<&TableName> {
        Some(&self.from)
    }

    /// DROP VIEW takes ACCESS EXCLUSIVE on the view: it waits for the old application's
    /// queries through it.
    fn locks(&self) -> Vec<TableLock> {
        vec![TableLock {
            table: self.from.clone(),
            mode: LockMode::AccessExclusive,
        }]
    }

    fn lock_timeout(&self) -> Option<PlanDuration> {
        self.lock_timeout
    }

    fn facts_of(&self) -> Option<&TableName> {
        None
    }

    fn units(&self, _dialect: Dialect) -> Result<Vec<Unit>, RenderError> {
        Ok(vec![Unit::Transaction(vec![format!(
            "DROP VIEW IF EXISTS {}",
            self.from.quoted()
        )])])
    }

    /// The view back, on PostgreSQL; SQLite's needs the table's columns for its triggers.
    fn inverse(&self, _ctx: &InverseContext<'_>, _done: bool, dialect: Dialect) -> Inverse {
        match dialect {
            Dialect::Postgres => match self.op().view_units(dialect, &TableFacts::default()) {
                Ok(mut sql) => {
                    sql.insert(0, format!("DROP VIEW IF EXISTS {}", self.from.quoted()));
                    Inverse::Units(vec![Unit::Transaction(sql)])
                }
                Err(e) => Inverse::Irreversible(e.0),
            },
            Dialect::Sqlite => Inverse::Irreversible(format!(
                "the view `{}` was dropped; on SQLite its INSTEAD OF triggers are not remade by rollback (only a backup brings it back: `phased restore`)",
                self.from
            )),
        }
    }
}

/// The INSTEAD OF triggers that make SQLite's view by the old name writable: each writes through
/// to the table by its primary key. A column left out of an INSERT through the view arrives as
/// NULL: the table's default is used for it instead (so an explicit NULL into a column with a
/// default gets the default too).
fn sqlite_view_triggers(
    view: &TableName,
    table: &TableName,
    facts: &TableFacts,
) -> Result<Vec<String>, RenderError> {
    if !facts.exists {
        return Err(RenderError(format!(
            "table `{view}` does not exist (SQLite's view triggers list its columns)"
        )));
    }
    let keys: Vec<&str> = facts
        .columns
        .iter()
        .filter(|c| c.primary_key)
        .map(|c| c.name.as_str())
        .collect();
    if keys.is_empty() {
        return Err(RenderError(format!(
            "table `{view}` has no primary key: the view by the old name could not find the rows to update or delete"
        )));
    }
    let base = view.name().as_str();
    let trigger = |event: &str| quote(&format!("phased_{base}_view_{event}"));
    let (v, t) = (view.quoted(), table.quoted());
    let names: Vec<String> = facts.columns.iter().map(|c| quote(&c.name)).collect();
    let values: Vec<String> = facts
        .columns
        .iter()
        .map(|c| match &c.default {
            Some(default) => format!("coalesce(NEW.{}, {default})", quote(&c.name)),
            None => format!("NEW.{}", quote(&c.name)),
        })
        .collect();
    let set: Vec<String> = names.iter().map(|n| format!("{n} = NEW.{n}")).collect();
    let key: Vec<String> = keys
        .iter()
        .map(|k| format!("{} = OLD.{}", quote(k), quote(k)))
        .collect();
    let key = key.join(" AND ");
    Ok(vec![
        format!(
            "CREATE TRIGGER {} INSTEAD OF INSERT ON {v} FOR EACH ROW BEGIN INSERT INTO {t} ({}) VALUES ({}); END",
            trigger("insert"),
            names.join(", "),
            values.join(", ")
        ),
        format!(
            "CREATE TRIGGER {} INSTEAD OF UPDATE ON {v} FOR EACH ROW BEGIN UPDATE {t} SET {} WHERE {key}; END",
            trigger("update"),
            set.join(", ")
        ),
        format!(
            "CREATE TRIGGER {} INSTEAD OF DELETE ON {v} FOR EACH ROW BEGIN DELETE FROM {t} WHERE {key}; END",
            trigger("delete")
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::facts::ColumnFacts;
    use crate::ops::parse_step;

    fn rename_grants(table: &str, view: &str) -> String {
        let step = RenameTable {
            from: TableName::new("app.customers").unwrap_or_else(|e| panic!("{e}")),
            to: TableName::new("clients").unwrap_or_else(|e| panic!("{e}")),
            lock_timeout: None,
        };
        let sql = step
            .view_units(Dialect::Postgres, &TableFacts::default())
            .unwrap_or_default();
        assert!(
            sql[1].contains(table) && sql[1].contains(view),
            "{}",
            sql[1]
        );
        sql[1].clone()
    }

    #[test]
    fn expand_renames_and_leaves_a_view() {
        let step = parse_step("rename_table: { from: app.customers, to: clients }");
        assert_eq!(
            step.op().units(Dialect::Postgres).ok(),
            Some(vec![Unit::Transaction(vec![
                "ALTER TABLE \"app\".\"customers\" RENAME TO \"clients\"".into(),
                "CREATE VIEW \"app\".\"customers\" AS SELECT * FROM \"app\".\"clients\"".into(),
                rename_grants("'\"app\".\"clients\"'", "'\"app\".\"customers\"'"),
            ])])
        );
        let parts = step.op().later_parts();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].phase, PhaseKind::Contract);
        assert_eq!(
            parts[0].step.op().units(Dialect::Postgres).ok(),
            Some(vec![Unit::Transaction(vec![
                "DROP VIEW IF EXISTS \"app\".\"customers\"".into()
            ])])
        );
    }

    #[test]
    fn sqlite_writes_through_the_view_by_primary_key() {
        let step = parse_step("rename_table: { from: customers, to: clients }");
        let facts = TableFacts {
            exists: true,
            columns: vec![
                ColumnFacts {
                    name: "id".into(),
                    ty: "INTEGER".into(),
                    primary_key: true,
                    ..ColumnFacts::default()
                },
                ColumnFacts {
                    name: "tier".into(),
                    ty: "TEXT".into(),
                    default: Some("'free'".into()),
                    ..ColumnFacts::default()
                },
            ],
            ..TableFacts::default()
        };
        let units = step
            .op()
            .units_with(Dialect::Sqlite, &facts)
            .unwrap_or_default();
        let text = units.iter().map(Unit::sql_text).collect::<String>();
        assert!(
            text.contains("VALUES (NEW.\"id\", coalesce(NEW.\"tier\", 'free'))"),
            "{text}"
        );
        assert!(text.contains("WHERE \"id\" = OLD.\"id\""), "{text}");
        assert!(
            step.op().units(Dialect::Sqlite).is_err(),
            "no facts, no triggers"
        );
    }
}
