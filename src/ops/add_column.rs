//! `add_column`: a catalog-only change (no rewrite: defaults are constants), but it needs ACCESS
//! EXCLUSIVE for a moment, so it runs under lock_timeout.
//!
//! Resumes: one transaction, so a crash leaves the column (recorded done with it) or nothing.

use serde::{Deserialize, Serialize};

use super::backfill::Backfill;
use super::name::{Name, TableName};
use super::set_not_null::SetNotNull;
use super::sync;
use super::{
    Dialect, Inverse, InverseContext, LaterPart, LockMode, Operation, RenderError, TableLock, Unit,
};
use crate::plan::{PhaseKind, PlanDuration, Step};

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
    /// The column derived from the row (`lower(email)`), written once: expand adds it nullable
    /// with a trigger that fills it for rows the old application writes; the next `migrate`
    /// phase backfills it; the next `contract` phase makes it NOT NULL (`nullable: false`,
    /// through a validated check) and drops the trigger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up: Option<String>,
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

    fn units(&self, dialect: Dialect) -> Result<Vec<Unit>, RenderError> {
        if let Some(rule) = self.sync_rule() {
            // Nullable until contract: the old application's rows get it from the trigger,
            // the rows before from the backfill.
            let mut sql = vec![format!(
                "ALTER TABLE {} ADD COLUMN {} {}",
                self.table.quoted(),
                self.name.quoted(),
                self.ty
            )];
            sql.extend(sync::create_sql(&self.table, &rule, dialect));
            return Ok(vec![Unit::Transaction(sql)]);
        }
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
        let mut sql = Vec::new();
        if self.up.is_some() {
            sql.extend(sync::drop_sql(&self.table, &self.name, dialect));
        }
        sql.push(drop_column_sql(&self.table, &self.name, dialect));
        Inverse::Units(vec![Unit::Transaction(sql)])
    }

    /// With `up`: the backfill in the next `migrate` phase, then in the next `contract` phase
    /// NOT NULL (when asked for) and the end of the sync.
    fn later_parts(&self) -> Vec<LaterPart> {
        let Some(rule) = self.sync_rule() else {
            return Vec::new();
        };
        let up = self.up.clone().unwrap_or_default();
        let column = self.name.quoted();
        let backfill = serde_json::json!({
            "table": self.table.as_str(),
            "set": { self.name.as_str(): up },
            "where": format!("{column} IS NULL"),
        });
        let mut parts = Vec::new();
        match serde_json::from_value::<Backfill>(backfill) {
            Ok(backfill) => parts.push(LaterPart {
                phase: PhaseKind::Migrate,
                tag: "backfill",
                step: Step::Backfill(backfill),
            }),
            Err(e) => tracing::error!("the backfill of {}: {e}", self.label()),
        }
        if !self.nullable {
            parts.push(LaterPart {
                phase: PhaseKind::Contract,
                tag: "not null",
                step: Step::SetNotNull(SetNotNull {
                    table: self.table.clone(),
                    column: self.name.clone(),
                    lock_timeout: self.lock_timeout,
                }),
            });
        }
        parts.push(LaterPart {
            phase: PhaseKind::Contract,
            tag: "end of sync",
            step: Step::DropSync(sync::DropSync {
                table: self.table.clone(),
                rule,
                of: self.label(),
                lock_timeout: self.lock_timeout,
            }),
        });
        parts
    }
}

impl AddColumn {
    /// The trigger that fills the column for the old application's writes, with `up`.
    fn sync_rule(&self) -> Option<sync::Rule> {
        self.up.as_ref().map(|up| sync::Rule::Derive {
            column: self.name.clone(),
            up: up.clone(),
        })
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
