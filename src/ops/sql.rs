//! `sql`: the plan's own SQL, in a transaction unless it says `transactional: false`. The tables
//! it locks are read from the parse (`plan::lint::locks`), so it looks before it queues; what
//! the parse cannot see (function bodies, `EXECUTE`) it cannot: keep it short and give it a
//! `lock_timeout`. `phased validate` lints it in its phase (`plan::lint`).
//!
//! Resumes: a transactional step is all or nothing, and runs again after a crash; a
//! `transactional: false` script runs again from its start, so it should be written to be re-run.

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::lock::TableLock;
use super::name::TableName;
use super::{Dialect, Inverse, InverseContext, Operation, RenderError, Unit};
use crate::plan::{PhaseKind, PlanDuration};

/// `sql: "SQL"` or `sql: { up | file, down | down_file, transactional }`.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct SqlStep {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub up: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub down: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub down_file: Option<PathBuf>,
    pub transactional: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statement_timeout: Option<PlanDuration>,
    /// How long a `CONCURRENTLY` statement of a `transactional: false` step may wait, in
    /// total, for older transactions (not serialized when absent: existing checksums stay).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index_wait_timeout: Option<PlanDuration>,
    /// Lint rules this step is allowed to break (`allow: [rule]`); not serialized when empty,
    /// so existing checksums stay.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// The text of `file`, read when the plan is loaded (part of the checksum).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_text: Option<String>,
    /// The text of `down_file`, read when the plan is loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub down_file_text: Option<String>,
}

impl SqlStep {
    /// The SQL to run going up (inline or from the file).
    pub fn up_sql(&self) -> Option<&str> {
        self.up.as_deref().or(self.file_text.as_deref())
    }

    /// The SQL that undoes it, if any.
    pub fn down_sql(&self) -> Option<&str> {
        self.down.as_deref().or(self.down_file_text.as_deref())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlStepFields {
    #[serde(default)]
    up: Option<String>,
    #[serde(default)]
    file: Option<PathBuf>,
    #[serde(default)]
    down: Option<String>,
    #[serde(default)]
    down_file: Option<PathBuf>,
    #[serde(default = "super::yes")]
    transactional: bool,
    #[serde(default)]
    lock_timeout: Option<PlanDuration>,
    #[serde(default)]
    statement_timeout: Option<PlanDuration>,
    #[serde(default)]
    index_wait_timeout: Option<PlanDuration>,
    #[serde(default)]
    allow: Vec<String>,
}

impl<'de> Deserialize<'de> for SqlStep {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SqlVisitor;
        impl<'de> Visitor<'de> for SqlVisitor {
            type Value = SqlStep;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a SQL string, or a map with `up` or `file`, and optional `down`, `down_file`, `transactional`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SqlStep, E> {
                Ok(SqlStep {
                    up: Some(v.to_string()),
                    transactional: true,
                    ..SqlStep::default()
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<SqlStep, A::Error> {
                let f = SqlStepFields::deserialize(de::value::MapAccessDeserializer::new(map))?;
                match (&f.up, &f.file) {
                    (Some(_), Some(_)) => {
                        return Err(de::Error::custom(
                            "a sql step takes `up` or `file`, not both",
                        ))
                    }
                    (None, None) => {
                        return Err(de::Error::custom(
                            "a sql step needs `up: \"SQL\"` or `file: PATH`",
                        ))
                    }
                    _ => {}
                }
                if f.down.is_some() && f.down_file.is_some() {
                    return Err(de::Error::custom(
                        "a sql step takes `down` or `down_file`, not both",
                    ));
                }
                Ok(SqlStep {
                    up: f.up,
                    file: f.file,
                    down: f.down,
                    down_file: f.down_file,
                    transactional: f.transactional,
                    lock_timeout: f.lock_timeout,
                    statement_timeout: f.statement_timeout,
                    index_wait_timeout: f.index_wait_timeout,
                    allow: f.allow,
                    file_text: None,
                    down_file_text: None,
                })
            }
        }
        deserializer.deserialize_any(SqlVisitor)
    }
}

impl SqlStep {
    /// One unit with `sql`, run as the step says (in a transaction or as a script).
    fn unit(&self, sql: &str) -> Unit {
        if self.transactional {
            Unit::Transaction(vec![sql.to_string()])
        } else {
            Unit::Script(sql.to_string())
        }
    }
}

impl Operation for SqlStep {
    fn kind(&self) -> &'static str {
        "sql"
    }

    fn subject(&self) -> String {
        match (&self.up, &self.file) {
            (_, Some(file)) => file.display().to_string(),
            (Some(up), None) => first_line(up, 48),
            (None, None) => String::new(),
        }
    }

    /// Read from the parse of `up` (plan::lint::locks): each table a statement names and the
    /// strongest lock PostgreSQL takes on it, so the runner looks before it queues, as for
    /// every built-in step. What the SQL does not name (a `DROP INDEX`'s table, a function's
    /// body) is not looked for.
    fn locks(&self) -> Vec<TableLock> {
        let Some(sql) = self.up_sql() else {
            return Vec::new();
        };
        let found = crate::plan::lint::locks::locks(sql);
        crate::plan::lint::locks::strongest(&found)
            .into_iter()
            .filter_map(|(table, mode)| {
                Some(TableLock {
                    table: TableName::new(table).ok()?,
                    mode,
                })
            })
            .collect()
    }

    fn allowed_in(&self) -> &'static [PhaseKind] {
        &[
            PhaseKind::Expand,
            PhaseKind::Migrate,
            PhaseKind::SwitchFlag,
            PhaseKind::Contract,
        ]
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

    fn units(&self, _dialect: Dialect) -> Result<Vec<Unit>, RenderError> {
        let sql = self
            .up_sql()
            .ok_or_else(|| RenderError("the sql step has no SQL to run".to_string()))?;
        Ok(vec![self.unit(sql)])
    }

    /// The step's own `down`, run the same way as its `up`.
    fn inverse(&self, _ctx: &InverseContext<'_>, _done: bool, _dialect: Dialect) -> Inverse {
        match self.down_sql() {
            Some(sql) => Inverse::Units(vec![self.unit(sql)]),
            None => Inverse::Irreversible(
                "the sql step has no `down` (or `down_file`) to undo it".to_string(),
            ),
        }
    }
}

fn first_line(text: &str, max: usize) -> String {
    let line = text.trim().lines().next().unwrap_or("").trim();
    if line.chars().count() > max {
        let cut: String = line.chars().take(max).collect();
        format!("{cut}…")
    } else {
        line.to_string()
    }
}

#[cfg(test)]
mod tests {
    use crate::ops::lock::LockMode;

    #[test]
    fn locks_come_from_the_parse_of_up() {
        let step = SqlStep {
            up: Some(
                "UPDATE accounts SET a = 1;\nALTER TABLE accounts ADD COLUMN c text;\nCREATE INDEX i ON orders (x);".into(),
            ),
            transactional: true,
            ..SqlStep::default()
        };
        let locks: Vec<(String, LockMode)> = step
            .locks()
            .into_iter()
            .map(|l| (l.table.to_string(), l.mode))
            .collect();
        assert_eq!(
            locks,
            vec![
                ("accounts".to_string(), LockMode::AccessExclusive),
                ("orders".to_string(), LockMode::Share)
            ]
        );
    }

    use super::*;
    use crate::ops::parse_step;

    #[test]
    fn sql_needs_down() {
        let ctx = InverseContext::default();
        let with_down =
            parse_step("sql: { up: \"CREATE VIEW v AS SELECT 1\", down: \"DROP VIEW v\" }");
        assert_eq!(
            with_down.op().inverse(&ctx, true, Dialect::Sqlite),
            Inverse::Units(vec![Unit::Transaction(vec!["DROP VIEW v".into()])])
        );
        let without = parse_step("sql: \"UPDATE t SET c = 1\"");
        assert!(matches!(
            without.op().inverse(&ctx, true, Dialect::Postgres),
            Inverse::Irreversible(why) if why.contains("no `down`")
        ));
        let script = parse_step("sql: { up: \"SELECT 1\", transactional: false }");
        assert_eq!(
            script.op().units(Dialect::Postgres).ok(),
            Some(vec![Unit::Script("SELECT 1".into())])
        );
    }
}
