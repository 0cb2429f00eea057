//! `rename_column`: renames a column, written once in `expand`, with both application versions
//! working until `contract`: the old one by the old name, the new one by the new name, each
//! seeing the other's writes.
//!
//! - **expand** adds `to` (the type of `from`, nullable, no default) and a two-way sync trigger
//!   ([`sync::Rule::Rename`]), then builds a copy of every index that involves `from` on `to`
//!   (`CREATE INDEX CONCURRENTLY` on PostgreSQL, under a derived name), so the new application's
//!   lookups and `ON CONFLICT (to)` find an index.
//! - **migrate** backfills `to = from` where `to` is still NULL, through the backfill engine.
//! - **contract**, in one short transaction, drops the trigger and `to` (with its index copies)
//!   and renames `from` to `to`. A row whose two names one statement set to different values
//!   (the sync keeps both as written; neither application does that, as each knows one name)
//!   keeps the value written under `from`.
//!
//! Why the column kept at contract is `from`, renamed, and not the new `to`: the renamed column
//! is the original itself, so everything attached to it survives exactly, with nothing rebuilt
//! under a lock: its NOT NULL, default (sequence ownership included), CHECK, UNIQUE and primary
//! key constraints, the foreign keys it makes and those of other tables that point at it, its
//! indexes and statistics, views over it, its position, comment and grants. `RENAME COLUMN` is
//! catalog-only (ACCESS EXCLUSIVE for a moment, no scan), and so is dropping `to`. Until then
//! `from`'s constraints guard the new application's writes too: the trigger copies `to` into
//! `from` before (PostgreSQL, `BEFORE`) or as part of (SQLite, `AFTER`) the same statement, so a
//! value that breaks a CHECK, a UNIQUE key or a foreign key of `from` fails the new
//! application's statement with the database's own error.
//!
//! The default trap: a default of `from` fills `from` when the new application inserts only
//! `to`, so "fill the side left NULL" cannot tell which side the writer set. `to` is therefore
//! added without a default, and on INSERT a non-NULL `to` wins (only a writer that knows the new
//! name can have set it); otherwise `to` takes `from`, which is how an INSERT that leaves out
//! both names gets `from`'s default under either name. The default stays where it is, on
//! `from`, so neither rollback nor contract has to move it. The one difference an application
//! may notice: an INSERT that writes NULL explicitly into `to` of a column with a default gets
//! the default.
//!
//! NOT NULL on `from`: PostgreSQL's `BEFORE` trigger fills `from` before the constraint is
//! checked, so the new application may insert only `to`. SQLite checks NOT NULL before `AFTER`
//! triggers run: a NOT NULL `from` without a default would refuse every insert of the new
//! application, so on SQLite such a column is refused (the step fails with that reason before it
//! changes anything). For the same reason a UNIQUE `from` with a default is refused on SQLite:
//! each insert of the new application would first write the default into `from` and collide.
//!
//! Rollback before contract drops the trigger and `to` with everything made on it; `from` was
//! never changed and holds every row either application wrote. pgroll calls it
//! `rename_column`; Reshape `alter_column` with `changes: { name: … }`.
//!
//! Resumes: expand's transaction adds `to` only when it is not there; an index copy that died
//! half-built is rebuilt (`Unit::ConcurrentIndex`); the backfill resumes from its checkpoint;
//! contract is one transaction.

use serde::{Deserialize, Serialize};

use super::add_column::drop_column_sql;
use super::backfill::Backfill;
use super::facts::{replace_identifier, IndexFacts, TableFacts};
use super::name::{derived_name, ident, quote, Name, TableName};
use super::sync;
use super::{
    Dialect, Inverse, InverseContext, LaterPart, LockMode, Operation, RenderError, TableLock, Unit,
};
use crate::plan::{PhaseKind, PlanDuration, Step};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RenameColumn {
    pub table: TableName,
    pub from: Name,
    pub to: Name,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_wait_timeout: Option<PlanDuration>,
}

impl RenameColumn {
    fn rule(&self) -> sync::Rule {
        sync::Rule::Rename {
            from: self.from.clone(),
            to: self.to.clone(),
        }
    }

    /// The name of the copy on `to` of an index on `from`: `from` replaced by `to` in its name
    /// (`users_email_idx` → `users_email_address_idx`), or `_<to>` appended.
    fn copy_name(&self, index: &str) -> Name {
        // SQLite keeps names that start with `sqlite_` for itself.
        let index = index.strip_prefix("sqlite_").unwrap_or(index);
        let natural = if index.contains(self.from.as_str()) {
            index.replacen(self.from.as_str(), self.to.as_str(), 1)
        } else {
            format!("{index}_{}", self.to)
        };
        derived_name(self.table.schema(), &[&natural])
    }

    /// What the catalog must show for the expand to run: the table, `from`, and no other column
    /// named `to` (one of `from`'s type is the step's own, from an attempt that died).
    fn check(&self, dialect: Dialect, facts: &TableFacts) -> Result<(), RenderError> {
        if !facts.exists {
            return Err(RenderError(format!(
                "table `{}` does not exist",
                self.table
            )));
        }
        let Some(from) = facts.column(self.from.as_str()) else {
            return Err(RenderError(format!(
                "table `{}` has no column `{}`",
                self.table, self.from
            )));
        };
        if let Some(to) = facts.column(self.to.as_str()) {
            if to.ty != from.ty || to.not_null || to.default.is_some() {
                return Err(RenderError(format!(
                    "table `{}` already has a column `{}`",
                    self.table, self.to
                )));
            }
        }
        if dialect == Dialect::Sqlite && from.not_null && from.default.is_none() {
            return Err(RenderError(format!(
                "`{}.{}` is NOT NULL without a default, and SQLite checks NOT NULL before triggers run: the new application's inserts, which set only `{}`, would fail. Give `{}` a default, or rename it on PostgreSQL",
                self.table, self.from, self.to, self.from
            )));
        }
        let unique = facts
            .indexes
            .iter()
            .any(|i| i.unique && i.columns.iter().any(|c| c == self.from.as_str()));
        if dialect == Dialect::Sqlite && from.default.is_some() && unique {
            return Err(RenderError(format!(
                "`{}.{}` is UNIQUE with a default, and SQLite's triggers run after the row is written: each insert of the new application, which sets only `{}`, would first write the default into `{}` and collide on it. Drop the default or the unique key first, or rename it on PostgreSQL",
                self.table, self.from, self.to, self.from
            )));
        }
        Ok(())
    }

    /// The copy on `to` of each index that involves `from`, as (name, CREATE statement).
    fn index_copies(
        &self,
        dialect: Dialect,
        facts: &TableFacts,
    ) -> Result<Vec<(Name, String)>, RenderError> {
        let on_from = facts
            .indexes
            .iter()
            .filter(|i| i.columns.iter().any(|c| c == self.from.as_str()));
        let mut copies = Vec::new();
        for index in on_from {
            let name = self.copy_name(&index.name);
            let create = match index_tail(&index.definition) {
                Some(tail) => {
                    let unique = if index.unique { "UNIQUE " } else { "" };
                    let concurrently = match dialect {
                        Dialect::Postgres => "CONCURRENTLY ",
                        Dialect::Sqlite => "IF NOT EXISTS ",
                    };
                    format!(
                        "CREATE {unique}INDEX {concurrently}{} ON {}",
                        name.quoted(),
                        replace_identifier(tail, self.from.as_str(), self.to.as_str())
                    )
                }
                // SQLite's own indexes (inline UNIQUE and PRIMARY KEY) have no statement:
                // their columns make one.
                None if dialect == Dialect::Sqlite && !index.columns.is_empty() => {
                    sqlite_copy_of_autoindex(&self.table, index, &name, &self.from, &self.to)
                }
                None => {
                    return Err(RenderError(format!(
                        "the index `{}` on `{}` has a definition phased cannot read: {:?}",
                        index.name, self.from, index.definition
                    )))
                }
            };
            copies.push((name, create));
        }
        Ok(copies)
    }
}

/// The part of a `CREATE [UNIQUE] INDEX name ON …` after `ON `, whatever its case.
fn index_tail(definition: &str) -> Option<&str> {
    let upper = definition.to_ascii_uppercase();
    let after_index = upper.find("INDEX ")? + "INDEX ".len();
    let on = upper[after_index..].find(" ON ")? + after_index + " ON ".len();
    definition.get(on..).map(str::trim_start)
}

fn sqlite_copy_of_autoindex(
    table: &TableName,
    index: &IndexFacts,
    name: &Name,
    from: &Name,
    to: &Name,
) -> String {
    let columns: Vec<String> = index
        .columns
        .iter()
        .map(|c| {
            if c == from.as_str() {
                to.quoted()
            } else {
                quote(c)
            }
        })
        .collect();
    format!(
        "CREATE {}INDEX IF NOT EXISTS {} ON {} ({})",
        if index.unique { "UNIQUE " } else { "" },
        name.quoted(),
        table.quoted(),
        columns.join(", ")
    )
}

impl Operation for RenameColumn {
    fn kind(&self) -> &'static str {
        "rename_column"
    }

    fn subject(&self) -> String {
        format!("{}.{} → {}", self.table, self.from, self.to)
    }

    fn allowed_in(&self) -> &'static [PhaseKind] {
        &[PhaseKind::Expand]
    }

    fn table(&self) -> Option<&TableName> {
        Some(&self.table)
    }

    /// ADD COLUMN and CREATE TRIGGER take ACCESS EXCLUSIVE, for a moment (no rewrite: no
    /// default); the index copies are built CONCURRENTLY (SHARE UPDATE EXCLUSIVE, which
    /// application traffic does not queue behind).
    fn locks(&self) -> Vec<TableLock> {
        vec![TableLock {
            table: self.table.clone(),
            mode: LockMode::AccessExclusive,
        }]
    }

    fn lock_timeout(&self) -> Option<PlanDuration> {
        self.lock_timeout
    }

    fn index_wait_timeout(&self) -> Option<PlanDuration> {
        self.index_wait_timeout
    }

    /// The type of `from` and its indexes.
    fn facts_of(&self) -> Option<&TableName> {
        Some(&self.table)
    }

    fn units(&self, dialect: Dialect) -> Result<Vec<Unit>, RenderError> {
        self.units_with(dialect, &TableFacts::default())
    }

    fn units_with(&self, dialect: Dialect, facts: &TableFacts) -> Result<Vec<Unit>, RenderError> {
        self.check(dialect, facts)?;
        let ty = facts
            .column(self.from.as_str())
            .map(|c| c.ty.clone())
            .unwrap_or_default();
        let (table, to) = (self.table.quoted(), self.to.quoted());
        let mut sql = Vec::new();
        if facts.column(self.to.as_str()).is_none() {
            // Nullable and without a default: NULL means "not written" to the trigger.
            sql.push(format!("ALTER TABLE {table} ADD COLUMN {to} {ty}"));
        }
        sql.extend(sync::create_sql(&self.table, &self.rule(), dialect));
        let copies = self.index_copies(dialect, facts)?;
        Ok(match dialect {
            Dialect::Postgres => {
                let mut units = vec![Unit::Transaction(sql)];
                for (name, create) in copies {
                    let name = match self.table.schema() {
                        Some(schema) => format!("{}.{}", schema.quoted(), name.quoted()),
                        None => name.quoted(),
                    };
                    units.push(Unit::ConcurrentIndex { name, create });
                }
                units
            }
            Dialect::Sqlite => {
                sql.extend(copies.into_iter().map(|(_, create)| create));
                vec![Unit::Transaction(sql)]
            }
        })
    }

    /// Drop the trigger, then `to` with every index and constraint made on it (looked up as it
    /// runs, so a half-built index copy goes too). `from` was never changed: it holds every row
    /// either application wrote, with its default, constraints and indexes as they were.
    fn inverse(&self, _ctx: &InverseContext<'_>, done: bool, dialect: Dialect) -> Inverse {
        if !done && dialect == Dialect::Sqlite {
            return Inverse::Nothing("its transaction never committed".to_string());
        }
        Inverse::Units(vec![
            Unit::Transaction(sync::drop_sql(&self.table, &self.to, dialect)),
            Unit::DropColumn {
                table: self.table.to_string(),
                column: self.to.to_string(),
                drop: drop_column_sql(&self.table, &self.to, dialect),
            },
        ])
    }

    /// The backfill in the next `migrate` phase; the swap in the next `contract` phase.
    fn later_parts(&self) -> Vec<LaterPart> {
        let (from, to) = (self.from.quoted(), self.to.quoted());
        let mut parts = Vec::new();
        let backfill = serde_json::json!({
            "table": self.table.as_str(),
            "set": { self.to.as_str(): from },
            "where": format!("{to} IS NULL AND {from} IS NOT NULL"),
        });
        match serde_json::from_value::<Backfill>(backfill) {
            Ok(backfill) => parts.push(LaterPart {
                phase: PhaseKind::Migrate,
                tag: "backfill",
                step: Step::Backfill(backfill),
            }),
            Err(e) => tracing::error!("the backfill of {}: {e}", self.label()),
        }
        parts.push(LaterPart {
            phase: PhaseKind::Contract,
            tag: "contract",
            step: Step::RenameColumnContract(RenameColumnContract {
                table: self.table.clone(),
                from: self.from.clone(),
                to: self.to.clone(),
                lock_timeout: self.lock_timeout,
            }),
        });
        parts
    }
}

/// `rename_column`'s contract part: drops the trigger and `to` (with its index copies) and
/// renames `from` to `to`, in one transaction.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct RenameColumnContract {
    pub table: TableName,
    pub from: Name,
    pub to: Name,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
}

impl Operation for RenameColumnContract {
    fn kind(&self) -> &'static str {
        "rename_column"
    }

    fn subject(&self) -> String {
        format!(
            "{}.{} → {}: drop the sync and the copy, rename {}",
            self.table, self.from, self.to, self.from
        )
    }

    fn allowed_in(&self) -> &'static [PhaseKind] {
        &[PhaseKind::Contract]
    }

    fn is_destructive(&self) -> bool {
        true
    }

    fn table(&self) -> Option<&TableName> {
        Some(&self.table)
    }

    /// DROP TRIGGER, DROP COLUMN and RENAME COLUMN take ACCESS EXCLUSIVE, for a moment: all
    /// three are catalog-only.
    fn locks(&self) -> Vec<TableLock> {
        vec![TableLock {
            table: self.table.clone(),
            mode: LockMode::AccessExclusive,
        }]
    }

    fn lock_timeout(&self) -> Option<PlanDuration> {
        self.lock_timeout
    }

    /// SQLite drops the index copies by name before it drops `to`.
    fn facts_of(&self) -> Option<&TableName> {
        Some(&self.table)
    }

    fn units(&self, dialect: Dialect) -> Result<Vec<Unit>, RenderError> {
        self.units_with(dialect, &TableFacts::default())
    }

    fn units_with(&self, dialect: Dialect, facts: &TableFacts) -> Result<Vec<Unit>, RenderError> {
        let table = self.table.quoted();
        let (from, to) = (self.from.quoted(), self.to.quoted());
        let mut sql = sync::drop_sql(&self.table, &self.to, dialect);
        if dialect == Dialect::Sqlite {
            // SQLite refuses to drop a column an index uses; PostgreSQL drops them with it.
            for index in facts.indexes_on(self.to.as_str()) {
                sql.push(format!("DROP INDEX IF EXISTS {}", ident(&index.name)));
            }
        }
        sql.push(drop_column_sql(&self.table, &self.to, dialect));
        sql.push(format!("ALTER TABLE {table} RENAME COLUMN {from} TO {to}"));
        Ok(vec![Unit::Transaction(sql)])
    }

    /// `from` is gone by its old name: what the old application wrote after contract began is
    /// not recoverable by a rename back alone.
    fn inverse(&self, _ctx: &InverseContext<'_>, done: bool, _dialect: Dialect) -> Inverse {
        if !done {
            return Inverse::Nothing("its transaction never committed".to_string());
        }
        super::lost(
            "rename_column",
            &format!(
                "renamed `{}` to `{}` and dropped the copy at contract",
                self.from, self.to
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::facts::ColumnFacts;
    use crate::ops::parse_step;

    fn facts() -> TableFacts {
        TableFacts {
            exists: true,
            columns: vec![
                ColumnFacts {
                    name: "id".into(),
                    ty: "bigint".into(),
                    not_null: true,
                    primary_key: true,
                    ..ColumnFacts::default()
                },
                ColumnFacts {
                    name: "email".into(),
                    ty: "character varying(200)".into(),
                    not_null: true,
                    default: Some("''::character varying".into()),
                    ..ColumnFacts::default()
                },
            ],
            indexes: vec![
                IndexFacts {
                    name: "users_email_key".into(),
                    definition:
                        "CREATE UNIQUE INDEX users_email_key ON app.users USING btree (email)"
                            .into(),
                    unique: true,
                    columns: vec!["email".into()],
                    constraint: Some("users_email_key".into()),
                    valid: true,
                    ..IndexFacts::default()
                },
                IndexFacts {
                    name: "by_lower".into(),
                    definition: "CREATE INDEX by_lower ON app.users USING btree (lower((email)::text)) WHERE (email <> 'email'::text)".into(),
                    columns: vec!["email".into()],
                    valid: true,
                    ..IndexFacts::default()
                },
            ],
            ..TableFacts::default()
        }
    }

    #[test]
    fn expand_adds_the_copy_with_its_sync_then_copies_each_index_concurrently() {
        let step =
            parse_step("rename_column: { table: app.users, from: email, to: email_address }");
        let units = step
            .op()
            .units_with(Dialect::Postgres, &facts())
            .unwrap_or_else(|e| panic!("{e}"));
        let Unit::Transaction(sql) = &units[0] else {
            panic!("{units:?}")
        };
        assert_eq!(
            sql[0],
            "ALTER TABLE \"app\".\"users\" ADD COLUMN \"email_address\" character varying(200)"
        );
        assert!(sql
            .iter()
            .any(|s| s.contains("NEW.\"email\" := NEW.\"email_address\"")));
        assert_eq!(
            units[1..],
            [
                Unit::ConcurrentIndex {
                    name: "\"app\".\"users_email_address_key\"".into(),
                    create: "CREATE UNIQUE INDEX CONCURRENTLY \"users_email_address_key\" ON app.users USING btree (\"email_address\")".into(),
                },
                Unit::ConcurrentIndex {
                    name: "\"app\".\"by_lower_email_address\"".into(),
                    create: "CREATE INDEX CONCURRENTLY \"by_lower_email_address\" ON app.users USING btree (lower((\"email_address\")::text)) WHERE (\"email_address\" <> 'email'::text)".into(),
                },
            ]
        );
    }

    #[test]
    fn a_retry_finds_its_own_column_and_does_not_add_it_again() {
        let step = parse_step("rename_column: { table: users, from: email, to: email_address }");
        let mut facts = facts();
        facts.columns.push(ColumnFacts {
            name: "email_address".into(),
            ty: "character varying(200)".into(),
            ..ColumnFacts::default()
        });
        let units = step
            .op()
            .units_with(Dialect::Postgres, &facts)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!units[0].sql_text().contains("ADD COLUMN"), "{units:?}");
        // Another column of that name is not the step's own.
        facts.columns[2].ty = "text".into();
        let err = step.op().units_with(Dialect::Postgres, &facts).err();
        assert!(
            err.is_some_and(|e| e.0.contains("already has a column `email_address`")),
            "refused"
        );
    }

    #[test]
    fn sqlite_refuses_not_null_without_default_and_says_why() {
        let step = parse_step("rename_column: { table: users, from: email, to: email_address }");
        let mut facts = facts();
        facts.columns[1].default = None;
        let err = step.op().units_with(Dialect::Sqlite, &facts).err();
        assert!(
            err.is_some_and(|e| e.0.contains("checks NOT NULL before triggers run")),
            "refused"
        );
        assert!(step.op().units_with(Dialect::Postgres, &facts).is_ok());
        assert!(
            step.op().units(Dialect::Postgres).is_err(),
            "no facts: the table is not known"
        );
    }

    #[test]
    fn later_parts_backfill_then_swap_at_contract() {
        let step = parse_step("rename_column: { table: users, from: email, to: email_address }");
        let parts = step.op().later_parts();
        let placed: Vec<(PhaseKind, &str)> = parts.iter().map(|p| (p.phase, p.tag)).collect();
        assert_eq!(
            placed,
            vec![
                (PhaseKind::Migrate, "backfill"),
                (PhaseKind::Contract, "contract"),
            ]
        );
        let Step::Backfill(backfill) = &parts[0].step else {
            panic!("{parts:?}")
        };
        assert_eq!(
            backfill.predicate.as_deref(),
            Some("\"email_address\" IS NULL AND \"email\" IS NOT NULL")
        );
        assert_eq!(
            parts[1].step.op().units(Dialect::Postgres).ok(),
            Some(vec![Unit::Transaction(vec![
                "DROP TRIGGER IF EXISTS \"phased_sync_users_email_address\" ON \"users\"".into(),
                "DROP FUNCTION IF EXISTS \"phased\".\"phased_sync_users_email_address\"()".into(),
                "ALTER TABLE \"users\" DROP COLUMN IF EXISTS \"email_address\"".into(),
                "ALTER TABLE \"users\" RENAME COLUMN \"email\" TO \"email_address\"".into(),
            ])])
        );
        assert!(parts[1].step.op().is_destructive());
    }

    #[test]
    fn sqlite_copies_its_own_indexes_from_their_columns() {
        let step = parse_step("rename_column: { table: users, from: email, to: email_address }");
        let mut facts = facts();
        facts.columns[1].default = None;
        facts.columns[1].not_null = false;
        facts.indexes = vec![IndexFacts {
            name: "sqlite_autoindex_users_1".into(),
            unique: true,
            columns: vec!["email".into()],
            constraint: Some("sqlite_autoindex_users_1".into()),
            ..IndexFacts::default()
        }];
        let units = step
            .op()
            .units_with(Dialect::Sqlite, &facts)
            .unwrap_or_else(|e| panic!("{e}"));
        let text = units.iter().map(Unit::sql_text).collect::<String>();
        assert!(
            text.contains("CREATE UNIQUE INDEX IF NOT EXISTS \"autoindex_users_1_email_address\" ON \"users\" (\"email_address\")"),
            "{text}"
        );
    }
}
