//! `add_unique`: a UNIQUE constraint without locking writes out for the length of an index
//! build. PostgreSQL: duplicates are looked for first (a read, ACCESS SHARE) and refused naming
//! a few keys before anything is built; the unique index is built `CONCURRENTLY` (SHARE UPDATE
//! EXCLUSIVE: reads and writes go on); then `ADD CONSTRAINT … UNIQUE USING INDEX` attaches it
//! (ACCESS EXCLUSIVE for a moment: catalog only, no scan). Plain `ADD CONSTRAINT … UNIQUE`
//! would build the index under ACCESS EXCLUSIVE, blocking every read and write meanwhile.
//! SQLite: the table is rebuilt with the constraint, after the same duplicate check.
//!
//! Resumes: the duplicate check is a read; an INVALID index left by a build that died is
//! dropped and built again, a valid one is kept (`Unit::ConcurrentIndex`); the constraint is
//! added unless a retry finds it there.

use serde::{Deserialize, Serialize};

use super::constraint::unless_constraint_exists;
use super::create_index::qualified_index;
use super::name::{ident_list, literal, Name, TableName};
use super::{
    Dialect, Inverse, InverseContext, LockMode, Operation, RenderError, TableChange, TableLock,
    Unit,
};
use crate::plan::{PhaseKind, PlanDuration};

/// How many repeated keys a refusal names.
const SHOWN: usize = 10;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AddUnique {
    pub table: TableName,
    /// The constraint, and the index behind it (in the table's schema).
    pub name: Name,
    pub columns: Vec<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement_timeout: Option<PlanDuration>,
    /// How long the index build may wait, in total, for older transactions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_wait_timeout: Option<PlanDuration>,
}

impl AddUnique {
    /// The index behind the constraint, qualified by its table's schema.
    fn index(&self) -> TableName {
        qualified_index(&TableName::in_schema(None, &self.name), Some(&self.table))
    }

    /// A read that fails (SQLSTATE 23505) naming up to [`SHOWN`] keys that rows repeat. Rows
    /// with a NULL in the key are left out: UNIQUE lets them repeat.
    fn duplicate_check(&self) -> String {
        let columns = ident_list(&self.columns);
        let shown: Vec<String> = self
            .columns
            .iter()
            .map(|c| {
                format!(
                    "{} || quote_nullable({})",
                    literal(&format!("{c}=")),
                    c.quoted()
                )
            })
            .collect();
        let not_null: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("{} IS NOT NULL", c.quoted()))
            .collect();
        let message = format!(
            "rows of {} repeat keys of the new UNIQUE constraint {} ({}): %s; nothing was built. \
             Remove or fix the duplicates (a backfill or sql step) and run again",
            percent(&self.table),
            percent(&self.name),
            percent(
                &self
                    .columns
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        );
        format!(
            "DO $phased$\nDECLARE\n  repeated text;\nBEGIN\n  SELECT string_agg(k, ', ') INTO repeated FROM (\n    SELECT format('(%s) %s times', concat_ws(', ', {}), count(*)) AS k\n    FROM {} WHERE {} GROUP BY {} HAVING count(*) > 1 LIMIT {SHOWN}) d;\n  IF repeated IS NOT NULL THEN\n    RAISE EXCEPTION USING ERRCODE = 'unique_violation', MESSAGE = format({}, repeated);\n  END IF;\nEND\n$phased$",
            shown.join(", "),
            self.table.quoted(),
            not_null.join(" AND "),
            columns,
            literal(&message)
        )
    }
}

/// Text for a `format()` string: `%` doubled.
fn percent(text: &str) -> String {
    text.replace('%', "%%")
}

impl Operation for AddUnique {
    fn kind(&self) -> &'static str {
        "add_unique"
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

    /// ADD CONSTRAINT … USING INDEX takes ACCESS EXCLUSIVE (briefly: catalog only). The build
    /// before it takes SHARE UPDATE EXCLUSIVE, which application traffic never queues behind.
    fn locks(&self) -> Vec<TableLock> {
        vec![TableLock {
            table: self.table.clone(),
            mode: LockMode::AccessExclusive,
        }]
    }

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
        Ok(match dialect {
            Dialect::Postgres => vec![
                Unit::Transaction(vec![self.duplicate_check()]),
                Unit::ConcurrentIndex {
                    name: self.index().quoted(),
                    create: format!(
                        "CREATE UNIQUE INDEX CONCURRENTLY {} ON {} ({})",
                        self.name.quoted(),
                        self.table.quoted(),
                        ident_list(&self.columns)
                    ),
                },
                Unit::Transaction(vec![unless_constraint_exists(
                    &self.table,
                    &self.name,
                    &format!(
                        "ALTER TABLE {} ADD CONSTRAINT {} UNIQUE USING INDEX {}",
                        self.table.quoted(),
                        self.name.quoted(),
                        self.name.quoted()
                    ),
                )]),
            ],
            Dialect::Sqlite => vec![Unit::RebuildTable {
                table: self.table.to_string(),
                change: TableChange::AddUnique {
                    name: self.name.to_string(),
                    columns: self.columns.iter().map(|c| c.to_string()).collect(),
                },
            }],
        })
    }

    /// PostgreSQL: drop the constraint (its index goes with it), then an index a build left
    /// without its constraint, concurrently. SQLite: a rebuild without the constraint.
    fn inverse(&self, _ctx: &InverseContext<'_>, _done: bool, dialect: Dialect) -> Inverse {
        Inverse::Units(match dialect {
            Dialect::Postgres => vec![
                Unit::Transaction(vec![format!(
                    "ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}",
                    self.table.quoted(),
                    self.name.quoted()
                )]),
                Unit::Standalone(format!(
                    "DROP INDEX CONCURRENTLY IF EXISTS {}",
                    self.index().quoted()
                )),
            ],
            Dialect::Sqlite => super::add_check::drop_constraint(&self.table, &self.name, dialect),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::parse_step;

    #[test]
    fn checks_builds_concurrently_then_attaches() {
        let step =
            parse_step("add_unique: { table: app.users, name: users_email_key, columns: [email] }");
        let units = step.op().units(Dialect::Postgres).unwrap_or_default();
        assert_eq!(units.len(), 3);
        let check = units[0].sql_text();
        assert!(
            check.contains("GROUP BY \"email\" HAVING count(*) > 1"),
            "{check}"
        );
        assert!(check.contains("WHERE \"email\" IS NOT NULL"), "{check}");
        assert_eq!(
            units[1],
            Unit::ConcurrentIndex {
                name: "\"app\".\"users_email_key\"".into(),
                create: "CREATE UNIQUE INDEX CONCURRENTLY \"users_email_key\" ON \"app\".\"users\" (\"email\")".into()
            }
        );
        assert!(units[2]
            .sql_text()
            .contains("ADD CONSTRAINT \"users_email_key\" UNIQUE USING INDEX \"users_email_key\""));
        assert_eq!(step.op().locks().len(), 1);
    }
}
