//! `change_type`: changes a column's type, written once in `expand`, with both application
//! versions reading and writing the column by its one name (`total_cents`) until `contract`.
//! pgroll calls it `alter_column` with `type`; Reshape `alter_column` with `changes: { type }`.
//!
//! - expand: a shadow column of the new type (`phased_new_<column>`, nullable, no default) and
//!   a trigger that sets it to `up` of the row on every INSERT and UPDATE; nobody writes it.
//! - migrate (after the plan's own migrate steps): the backfill of the rows written before,
//!   through the backfill engine (batched, checkpointed, throttled, resumable); then the
//!   rebuild: the column's indexes built on the shadow `CONCURRENTLY`, its CHECK and FOREIGN KEY
//!   constraints added `NOT VALID` then validated, and NOT NULL as a validated check (SQLite:
//!   the shadow made NOT NULL by the copy-table recipe).
//! - contract: the swap, in one short catalog-only transaction: drop the trigger, drop the
//!   foreign keys of other tables that reference the column, drop the column (its indexes and
//!   constraints go with it), rename the shadow to the column's name and the rebuilt indexes
//!   and constraints to the original names, set the default and NOT NULL (no scan: the
//!   validated check proves it), turn the rebuilt unique indexes into the column's UNIQUE /
//!   PRIMARY KEY constraints, and add the foreign keys back `NOT VALID`; then validate them.
//!
//! A value `up` cannot convert fails the write that stored it (the old application's INSERT or
//! UPDATE gets the database's error) and the backfill batch that meets it.
//!
//! Resumes: each unit is a transaction or a concurrent index build that a rerun finds done;
//! every part renders from the catalog as it is when it runs, so a rerun after a crash does only
//! what is left.

use serde::{Deserialize, Serialize};

use super::add_column::drop_column_sql;
use super::backfill::{Backfill, BatchSize};
use super::facts::{replace_identifier, ColumnFacts, TableFacts};
use super::name::{derived_name, quote, Name, TableName};
use super::sync;
use super::{
    Dialect, Inverse, InverseContext, LaterPart, LockMode, Operation, RenderError, TableLock, Unit,
};
use crate::plan::{PhaseKind, PlanDuration, Step};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChangeType {
    pub table: TableName,
    pub column: Name,
    /// The new type, as SQL spells it (`bigint`, `numeric(12,2)`).
    #[serde(rename = "type")]
    pub ty: String,
    /// The new value from the row, over bare column names; `CAST(column AS type)` when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up: Option<String>,
    /// The pace of the backfill part, when the backfill's defaults (gentle: 2ms batches, 28ms
    /// apart) are not wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<BackfillPace>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
}

/// The knobs of a `backfill` step that an operation's backfill part takes from the plan.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackfillPace {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<BatchSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_batch_time: Option<PlanDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<PlanDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rows_per_second: Option<u64>,
}

impl BackfillPace {
    fn apply(&self, backfill: &mut Backfill) {
        if let Some(v) = self.batch_size {
            backfill.batch_size = v;
        }
        // Any of these fixes the pace (`throttle: auto` is the default without them).
        if self.target_batch_time.is_some() {
            backfill.target_batch_time = self.target_batch_time;
        }
        if self.pause.is_some() {
            backfill.pause = self.pause;
        }
        if self.max_rows_per_second.is_some() {
            backfill.max_rows_per_second = self.max_rows_per_second;
        }
    }
}

/// What the three parts share: the table, the column, the new type and the names derived from
/// them.
#[derive(Debug, Clone, PartialEq)]
struct Shape {
    table: TableName,
    column: Name,
    ty: String,
    up: String,
}

/// The shadow column of `column`: `phased_new_<column>`.
pub fn shadow_of(column: &str) -> Name {
    derived_name(None, &["phased_new", column])
}

impl Shape {
    /// The shadow column: `phased_new_<column>`.
    fn shadow(&self) -> Name {
        shadow_of(self.column.as_str())
    }

    /// The name of the copy of an index or constraint on the shadow.
    fn copy_name(&self, original: &str) -> Name {
        derived_name(None, &["phased_new", original])
    }

    /// The validated check that proves the shadow NOT NULL before the swap.
    fn not_null_check(&self) -> Name {
        derived_name(None, &["phased_new", self.column.as_str(), "not_null"])
    }

    /// An index's name in the table's schema, quoted.
    fn index_in_schema(&self, index: &str) -> String {
        match self.table.schema() {
            Some(schema) => format!("{}.{}", schema.quoted(), quote(index)),
            None => quote(index),
        }
    }

    fn rule(&self) -> sync::Rule {
        sync::Rule::Shadow {
            column: self.column.clone(),
            shadow: self.shadow(),
            up: self.up.clone(),
        }
    }

    /// The column as it is now; an error when the table or the column is missing.
    fn column_facts<'f>(&self, facts: &'f TableFacts) -> Result<&'f ColumnFacts, RenderError> {
        if !facts.exists {
            return Err(RenderError(format!(
                "table `{}` does not exist",
                self.table
            )));
        }
        facts.column(self.column.as_str()).ok_or_else(|| {
            RenderError(format!(
                "table `{}` has no column `{}`",
                self.table, self.column
            ))
        })
    }

    /// The indexes on the column that get a copy on the shadow: plain ones and those of UNIQUE
    /// and PRIMARY KEY constraints.
    fn indexes_to_copy<'f>(
        &self,
        facts: &'f TableFacts,
    ) -> Result<Vec<&'f super::facts::IndexFacts>, RenderError> {
        let column = self.column.as_str();
        let mut out = Vec::new();
        for index in facts
            .indexes
            .iter()
            .filter(|i| i.columns.iter().any(|c| c == column))
        {
            let kind = index.constraint.as_deref().and_then(|c| {
                facts
                    .constraints
                    .iter()
                    .find(|k| k.name == c)
                    .map(|k| k.kind)
            });
            match kind {
                None | Some('u') | Some('p') => out.push(index),
                Some(_) => {
                    return Err(RenderError(format!(
                        "`{}` backs constraint `{}`, which `change_type` cannot carry to the new type (only UNIQUE and PRIMARY KEY)",
                        index.name,
                        index.constraint.as_deref().unwrap_or_default()
                    )))
                }
            }
        }
        Ok(out)
    }

    /// The CHECK and FOREIGN KEY constraints on the column that get a copy on the shadow.
    fn constraints_to_copy<'f>(
        &self,
        facts: &'f TableFacts,
    ) -> Vec<&'f super::facts::ConstraintFacts> {
        let column = self.column.as_str();
        facts
            .constraints
            .iter()
            .filter(|k| k.columns.iter().any(|c| c == column))
            .filter(|k| k.kind == 'c' || k.kind == 'f')
            .collect()
    }

    /// Whether the swap has committed: the shadow is gone and the column is of the new type.
    fn is_swapped(&self, facts: &TableFacts) -> bool {
        facts.column(self.shadow().as_str()).is_none()
            && self
                .column_facts(facts)
                .is_ok_and(|c| same_type(&c.ty, &self.ty))
    }

    /// The foreign keys of other tables that reference the column.
    fn references<'f>(&self, facts: &'f TableFacts) -> Vec<&'f super::facts::ReferenceFacts> {
        let column = self.column.as_str();
        facts
            .referenced_by
            .iter()
            .filter(|r| r.columns.iter().any(|c| c == column))
            .collect()
    }
}

/// `CREATE [UNIQUE] INDEX CONCURRENTLY <name> ON …`: the catalog's definition of an index on
/// `column`, made for `shadow` under a new name.
fn index_copy(definition: &str, column: &str, shadow: &str, name: &str) -> Option<String> {
    let at = definition.find(" INDEX ")? + " INDEX ".len();
    let on = definition[at..].find(" ON ")? + at;
    let head = &definition[..at];
    let rest = replace_identifier(&definition[on..], column, shadow);
    Some(format!("{head}CONCURRENTLY {}{rest}", quote(name)))
}

/// Whether the catalog's spelling of a type (`format_type`: `bigint`, `character varying(20)`;
/// SQLite: as declared) is the plan's (`int8`, `varchar(20)`).
fn same_type(catalog: &str, plan: &str) -> bool {
    let canonical = |t: &str| {
        let t = t.trim().to_lowercase();
        let (base, rest) = match t.find('(') {
            Some(i) => (t[..i].trim().to_string(), t[i..].replace(' ', "")),
            None => (t.clone(), String::new()),
        };
        let base = match base.as_str() {
            "int8" => "bigint",
            "int" | "int4" => "integer",
            "int2" => "smallint",
            "float8" | "double precision" => "double precision",
            "float4" | "real" => "real",
            "varchar" => "character varying",
            "char" | "bpchar" => "character",
            "bool" => "boolean",
            "decimal" => "numeric",
            "timestamptz" => "timestamp with time zone",
            "timestamp" => "timestamp without time zone",
            "timetz" => "time with time zone",
            "time" => "time without time zone",
            other => other,
        }
        .to_string();
        format!("{base}{rest}")
    };
    canonical(catalog) == canonical(plan)
}

/// A constraint definition without the ` NOT VALID` the catalog prints for unvalidated ones.
fn without_not_valid(definition: &str) -> &str {
    definition.strip_suffix(" NOT VALID").unwrap_or(definition)
}

/// The sequence a `nextval('…'::regclass)` default draws from, when it is a plain name: a
/// serial column's sequence is owned by the column and would be dropped with it.
fn owned_sequence(default: &str) -> Option<&str> {
    let start = default.find("nextval('")? + "nextval('".len();
    let end = default[start..].find("'::regclass")? + start;
    let name = &default[start..end];
    name.chars()
        .all(|c| c.is_alphanumeric() || c == '_' || c == '.' || c == '"')
        .then_some(name)
}

/// What the swap records in its own transaction (`Unit::Checkpoint`, `{"swapped": …}`): the
/// foreign keys of other tables it dropped and added back `NOT VALID`, as they were before. A
/// rerun after a crash between the swap's commit and their validation adds back any that is
/// missing and validates them; rollback knows from it that the swap committed.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
struct Swapped {
    references: Vec<SwappedReference>,
}

/// One foreign key the swap dropped and added back.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
struct SwappedReference {
    /// The referencing table as the database prints it (`regclass`).
    table: String,
    name: String,
    /// `pg_get_constraintdef` before the swap, without ` NOT VALID`.
    definition: String,
    /// Whether it was validated before the swap (then it is validated again after).
    validated: bool,
}

impl Swapped {
    fn of(references: &[&super::facts::ReferenceFacts]) -> Self {
        Swapped {
            references: references
                .iter()
                .map(|r| SwappedReference {
                    table: r.table.clone(),
                    name: r.name.clone(),
                    definition: without_not_valid(&r.definition).to_string(),
                    validated: !r.definition.ends_with(" NOT VALID"),
                })
                .collect(),
        }
    }

    fn to_checkpoint(&self) -> String {
        serde_json::json!({ "swapped": self }).to_string()
    }

    fn from_checkpoint(checkpoint: Option<&str>) -> Option<Self> {
        let value: serde_json::Value = serde_json::from_str(checkpoint?).ok()?;
        serde_json::from_value(value.get("swapped")?.clone()).ok()
    }

    /// What is left after the swap committed, the catalog as it is now: the recorded keys that
    /// are missing, added back `NOT VALID` in one transaction; then each key that was
    /// validated before and is not now, validated in a transaction of its own.
    fn rest(&self, facts: &TableFacts) -> Vec<Unit> {
        let now = |r: &SwappedReference| {
            facts
                .referenced_by
                .iter()
                .find(|k| k.name == r.name && k.table == r.table)
        };
        let add: Vec<String> = self
            .references
            .iter()
            .filter(|r| now(r).is_none())
            .map(|r| {
                format!(
                    "ALTER TABLE {} ADD CONSTRAINT {} {} NOT VALID",
                    r.table,
                    quote(&r.name),
                    r.definition
                )
            })
            .collect();
        let mut units = Vec::new();
        if !add.is_empty() {
            units.push(Unit::Transaction(add));
        }
        units.extend(
            self.references
                .iter()
                .filter(|r| r.validated)
                .filter(|r| now(r).is_none_or(|k| k.definition.ends_with(" NOT VALID")))
                .map(|r| {
                    Unit::Transaction(vec![format!(
                        "ALTER TABLE {} VALIDATE CONSTRAINT {}",
                        r.table,
                        quote(&r.name)
                    )])
                }),
        );
        units
    }

    /// Each recorded key and its state in the catalog now, for rollback's message.
    fn state(&self, facts: Option<&TableFacts>) -> String {
        self.references
            .iter()
            .map(|r| {
                let now = facts.map(|f| {
                    f.referenced_by
                        .iter()
                        .find(|k| k.name == r.name && k.table == r.table)
                });
                let state = match now {
                    None => "",
                    Some(None) => ": missing now",
                    Some(Some(k)) if k.definition.ends_with(" NOT VALID") => ": NOT VALID now",
                    Some(Some(_)) => ": valid now",
                };
                format!("{} on {}{state}", quote(&r.name), r.table)
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A table as `regclass::text` prints it (`invoices`, `app.invoices`, `"Odd"."Name"`), as a
/// [`TableName`]: the look before queueing finds it with `to_regclass` of its quoted form.
fn regclass_table(text: &str) -> Option<TableName> {
    let mut parts = Vec::new();
    let mut part = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                part.push('"');
            }
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(std::mem::take(&mut part)),
            other => part.push(other),
        }
    }
    parts.push(part);
    match parts.as_slice() {
        [name] => Some(TableName::in_schema(None, &Name::new(name.as_str()).ok()?)),
        [schema, name] => Some(TableName::in_schema(
            Some(&Name::new(schema.as_str()).ok()?),
            &Name::new(name.as_str()).ok()?,
        )),
        _ => None,
    }
}

impl ChangeType {
    fn shape(&self) -> Shape {
        let up = self
            .up
            .clone()
            .unwrap_or_else(|| format!("CAST({} AS {})", self.column.quoted(), self.ty));
        Shape {
            table: self.table.clone(),
            column: self.column.clone(),
            ty: self.ty.clone(),
            up,
        }
    }

    /// Why SQLite cannot change this column: its `DROP COLUMN` refuses a column that a
    /// primary key, a UNIQUE or FOREIGN KEY constraint or a CHECK uses.
    fn sqlite_refusal(&self, facts: &TableFacts, column: &ColumnFacts) -> Option<String> {
        let c = self.column.as_str();
        let why = if column.primary_key {
            Some("is (part of) the primary key")
        } else if facts
            .indexes
            .iter()
            .any(|i| i.definition.is_empty() && i.columns.iter().any(|x| x == c))
        {
            Some("has a UNIQUE constraint")
        } else if facts.constraints_on(c).next().is_some() {
            Some("is in a FOREIGN KEY")
        } else if checks_of(&facts.sql)
            .iter()
            .any(|check| replace_identifier(check, c, "\u{1}") != *check)
        {
            Some("is in a CHECK constraint")
        } else {
            None
        };
        why.map(|why| {
            format!(
                "on SQLite, `change_type` cannot change `{}.{c}`: it {why}, and SQLite cannot drop such a column at contract (change the table with `sql` steps and the copy-table recipe instead)",
                self.table
            )
        })
    }
}

/// The `CHECK (…)` groups of a `CREATE TABLE` statement, parentheses balanced.
fn checks_of(sql: &str) -> Vec<String> {
    let upper = sql.to_uppercase();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(found) = upper[from..].find("CHECK") {
        let start = from + found;
        let Some(open) = sql[start..].find('(').map(|o| start + o) else {
            break;
        };
        let mut depth = 0;
        let mut end = sql.len();
        for (i, ch) in sql[open..].char_indices() {
            match ch {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.push(sql[open..end].to_string());
        from = end.max(start + 5);
    }
    out
}

impl Operation for ChangeType {
    fn kind(&self) -> &'static str {
        "change_type"
    }

    fn subject(&self) -> String {
        format!("{}.{} → {}", self.table, self.column, self.ty)
    }

    fn allowed_in(&self) -> &'static [PhaseKind] {
        &[PhaseKind::Expand]
    }

    fn table(&self) -> Option<&TableName> {
        Some(&self.table)
    }

    /// ALTER TABLE … ADD COLUMN and CREATE TRIGGER take ACCESS EXCLUSIVE, for a moment.
    fn locks(&self) -> Vec<TableLock> {
        vec![TableLock {
            table: self.table.clone(),
            mode: LockMode::AccessExclusive,
        }]
    }

    fn lock_timeout(&self) -> Option<PlanDuration> {
        self.lock_timeout
    }

    fn facts_of(&self) -> Option<&TableName> {
        Some(&self.table)
    }

    fn units(&self, dialect: Dialect) -> Result<Vec<Unit>, RenderError> {
        self.units_with(dialect, &TableFacts::default())
    }

    /// The shadow column and its trigger, in one transaction. Without facts (a plan read with
    /// no database) the generic form.
    fn units_with(&self, dialect: Dialect, facts: &TableFacts) -> Result<Vec<Unit>, RenderError> {
        let shape = self.shape();
        let shadow = shape.shadow();
        let mut default = None;
        if facts.exists {
            let column = shape.column_facts(facts)?;
            if dialect == Dialect::Sqlite {
                if let Some(why) = self.sqlite_refusal(facts, column) {
                    return Err(RenderError(why));
                }
                // SQLite sets a default only with the column: the shadow takes the column's
                // now (the trigger writes every row, so it shows only after the swap).
                default = column.default.clone();
            }
        }
        let mut sql = Vec::new();
        let add = format!(
            "ALTER TABLE {} ADD COLUMN {}{} {}{}",
            self.table.quoted(),
            if dialect == Dialect::Postgres {
                "IF NOT EXISTS "
            } else {
                ""
            },
            shadow.quoted(),
            self.ty,
            default.map(|d| format!(" DEFAULT {d}")).unwrap_or_default()
        );
        if dialect == Dialect::Postgres || facts.column(shadow.as_str()).is_none() {
            sql.push(add);
        }
        sql.extend(sync::create_sql(&self.table, &shape.rule(), dialect));
        Ok(vec![Unit::Transaction(sql)])
    }

    /// Drop the trigger and the shadow column (the copies of indexes and constraints go with
    /// it): the column itself was never touched, and holds every row both applications wrote.
    fn inverse(&self, _ctx: &InverseContext<'_>, _done: bool, dialect: Dialect) -> Inverse {
        let shape = self.shape();
        let mut sql = sync::drop_sql(&self.table, &shape.shadow(), dialect);
        sql.push(drop_column_sql(&self.table, &shape.shadow(), dialect));
        Inverse::Units(vec![Unit::Transaction(sql)])
    }

    fn adds_columns(&self) -> Vec<(TableName, Name)> {
        vec![(self.table.clone(), self.shape().shadow())]
    }

    /// The backfill and the rebuild in the next `migrate` phase; the swap in the next
    /// `contract` phase.
    fn later_parts(&self) -> Vec<LaterPart> {
        let shape = self.shape();
        let shadow = shape.shadow().quoted();
        let backfill = serde_json::json!({
            "table": self.table.as_str(),
            "set": { shape.shadow().as_str(): shape.up },
            "where": format!("{shadow} IS DISTINCT FROM ({})", shape.up),
        });
        let mut parts = Vec::new();
        match serde_json::from_value::<Backfill>(backfill) {
            Ok(mut backfill) => {
                if let Some(pace) = &self.backfill {
                    pace.apply(&mut backfill);
                }
                parts.push(LaterPart {
                    phase: PhaseKind::Migrate,
                    tag: "backfill",
                    step: Step::Backfill(backfill),
                })
            }
            Err(e) => tracing::error!("the backfill of {}: {e}", self.label()),
        }
        let part = ChangeTypePart {
            table: self.table.clone(),
            column: self.column.clone(),
            ty: self.ty.clone(),
            up: shape.up.clone(),
            lock_timeout: self.lock_timeout,
        };
        parts.push(LaterPart {
            phase: PhaseKind::Migrate,
            tag: "rebuild",
            step: Step::ChangeTypeRebuild(ChangeTypeRebuild(part.clone())),
        });
        parts.push(LaterPart {
            phase: PhaseKind::Contract,
            tag: "swap",
            step: Step::ChangeTypeSwap(ChangeTypeSwap(part)),
        });
        parts
    }
}

/// What the later parts carry: the operation with its `up` resolved.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct ChangeTypePart {
    pub table: TableName,
    pub column: Name,
    #[serde(rename = "type")]
    pub ty: String,
    pub up: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
}

impl ChangeTypePart {
    fn shape(&self) -> Shape {
        Shape {
            table: self.table.clone(),
            column: self.column.clone(),
            ty: self.ty.clone(),
            up: self.up.clone(),
        }
    }

    fn label(&self, what: &str) -> String {
        format!(
            "change_type {}.{} → {}: {what}",
            self.table, self.column, self.ty
        )
    }
}

/// `change_type`'s migrate part after the backfill: the column's indexes and constraints copied
/// onto the shadow, and its NOT NULL proven there.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(transparent)]
pub struct ChangeTypeRebuild(pub ChangeTypePart);

impl Operation for ChangeTypeRebuild {
    fn kind(&self) -> &'static str {
        "change_type"
    }

    fn subject(&self) -> String {
        self.0
            .label("indexes, constraints and NOT NULL on the new column")
    }

    fn label(&self) -> String {
        self.subject()
    }

    fn allowed_in(&self) -> &'static [PhaseKind] {
        &[PhaseKind::Migrate]
    }

    fn table(&self) -> Option<&TableName> {
        Some(&self.0.table)
    }

    /// ADD CONSTRAINT … NOT VALID takes ACCESS EXCLUSIVE (a CHECK) or SHARE ROW EXCLUSIVE (a
    /// FOREIGN KEY) for a moment; VALIDATE and CREATE INDEX CONCURRENTLY take SHARE UPDATE
    /// EXCLUSIVE, which nobody queues behind. SQLite's copy-table recipe is one transaction.
    fn locks(&self) -> Vec<TableLock> {
        vec![TableLock {
            table: self.0.table.clone(),
            mode: LockMode::AccessExclusive,
        }]
    }

    fn lock_timeout(&self) -> Option<PlanDuration> {
        self.0.lock_timeout
    }

    fn facts_of(&self) -> Option<&TableName> {
        Some(&self.0.table)
    }

    fn units(&self, dialect: Dialect) -> Result<Vec<Unit>, RenderError> {
        self.units_with(dialect, &TableFacts::default())
    }

    fn units_with(&self, dialect: Dialect, facts: &TableFacts) -> Result<Vec<Unit>, RenderError> {
        let shape = self.0.shape();
        let shadow = shape.shadow();
        let t = shape.table.quoted();
        if !facts.exists {
            // No catalog to copy from: what it would do, in general.
            return Ok(vec![Unit::Transaction(vec![format!(
                "-- for each index, CHECK, FOREIGN KEY and the NOT NULL of {}: a copy on {} (indexes CONCURRENTLY, constraints NOT VALID then VALIDATE)",
                shape.column.quoted(),
                shadow.quoted()
            )])]);
        }
        // Without the shadow (a dry run of the whole plan, before expand ran) the copies are
        // shown as they will be made.
        let column = shape.column_facts(facts)?;
        if dialect == Dialect::Sqlite {
            // SQLite adds a column nullable; the copy-table recipe makes the shadow NOT NULL
            // (a no-op when it is already). Its indexes are made at the swap.
            return Ok(if column.not_null {
                vec![Unit::RebuildTable {
                    table: shape.table.as_str().to_string(),
                    change: super::TableChange::SetNotNull {
                        column: shadow.as_str().to_string(),
                    },
                }]
            } else {
                Vec::new()
            });
        }
        let mut units = Vec::new();
        for index in shape.indexes_to_copy(facts)? {
            let name = shape.copy_name(&index.name);
            let create = index_copy(
                &index.definition,
                shape.column.as_str(),
                shadow.as_str(),
                name.as_str(),
            )
            .ok_or_else(|| {
                RenderError(format!(
                    "cannot read the definition of index `{}`: {}",
                    index.name, index.definition
                ))
            })?;
            units.push(Unit::ConcurrentIndex {
                name: shape.index_in_schema(name.as_str()),
                create,
            });
        }
        let mut checks = Vec::new();
        for k in shape.constraints_to_copy(facts) {
            let definition = replace_identifier(
                without_not_valid(&k.definition),
                shape.column.as_str(),
                shadow.as_str(),
            );
            checks.push((shape.copy_name(&k.name), definition, k.validated));
        }
        if column.not_null {
            checks.push((
                shape.not_null_check(),
                format!("CHECK ({} IS NOT NULL)", shadow.quoted()),
                true,
            ));
        }
        for (name, definition, validated) in checks {
            if !facts.constraints.iter().any(|k| k.name == name.as_str()) {
                units.push(Unit::Transaction(vec![format!(
                    "ALTER TABLE {t} ADD CONSTRAINT {} {definition} NOT VALID",
                    name.quoted()
                )]));
            }
            if validated {
                units.push(Unit::Transaction(vec![format!(
                    "ALTER TABLE {t} VALIDATE CONSTRAINT {}",
                    name.quoted()
                )]));
            }
        }
        Ok(units)
    }

    /// Nothing: the copies are on the shadow column, which goes with the expand part's undo.
    fn inverse(&self, _ctx: &InverseContext<'_>, _done: bool, _dialect: Dialect) -> Inverse {
        Inverse::Nothing(
            "the copies are on the new column, which goes when change_type's expand part is undone"
                .to_string(),
        )
    }
}

/// `change_type`'s contract part: the swap.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(transparent)]
pub struct ChangeTypeSwap(pub ChangeTypePart);

impl Operation for ChangeTypeSwap {
    fn kind(&self) -> &'static str {
        "change_type"
    }

    fn subject(&self) -> String {
        self.0.label("swap in the new column")
    }

    fn label(&self) -> String {
        self.subject()
    }

    fn allowed_in(&self) -> &'static [PhaseKind] {
        &[PhaseKind::Contract]
    }

    fn is_destructive(&self) -> bool {
        true
    }

    fn table(&self) -> Option<&TableName> {
        Some(&self.0.table)
    }

    /// DROP COLUMN, RENAME, SET NOT NULL (proven by the check: no scan) take ACCESS EXCLUSIVE
    /// for a moment. The tables whose foreign keys reference the column are locked too, but
    /// only the catalog names them: see [`Operation::locks_with`].
    fn locks(&self) -> Vec<TableLock> {
        vec![TableLock {
            table: self.0.table.clone(),
            mode: LockMode::AccessExclusive,
        }]
    }

    /// Each table whose foreign key references the column, as well: the swap's `ALTER TABLE …
    /// DROP CONSTRAINT` takes ACCESS EXCLUSIVE on it (and `ADD … NOT VALID` SHARE ROW
    /// EXCLUSIVE), in the swap's transaction. After the swap committed (a rerun) only what is
    /// left: adding back a missing key takes SHARE ROW EXCLUSIVE on both tables; VALIDATE's
    /// SHARE UPDATE EXCLUSIVE (referencing) and ROW SHARE (referenced) nobody queues behind.
    fn locks_need_facts(&self) -> bool {
        true
    }

    fn locks_with(&self, facts: &TableFacts) -> Vec<TableLock> {
        let shape = self.0.shape();
        let swapped = facts.exists && shape.is_swapped(facts);
        let mode = if swapped {
            LockMode::ShareRowExclusive
        } else {
            LockMode::AccessExclusive
        };
        let mut locks = vec![TableLock {
            table: self.0.table.clone(),
            mode,
        }];
        for r in shape.references(facts) {
            match regclass_table(&r.table) {
                Some(table) if !locks.iter().any(|l| l.table == table) => {
                    locks.push(TableLock { table, mode })
                }
                Some(_) => {}
                None => {
                    tracing::warn!(table = %r.table, "cannot read the referencing table's name; it is not looked at before queueing")
                }
            }
        }
        locks
    }

    fn lock_timeout(&self) -> Option<PlanDuration> {
        self.0.lock_timeout
    }

    fn facts_of(&self) -> Option<&TableName> {
        Some(&self.0.table)
    }

    fn units(&self, dialect: Dialect) -> Result<Vec<Unit>, RenderError> {
        self.units_with(dialect, &TableFacts::default())
    }

    fn units_with(&self, dialect: Dialect, facts: &TableFacts) -> Result<Vec<Unit>, RenderError> {
        let shape = self.0.shape();
        let shadow = shape.shadow();
        let (t, c) = (shape.table.quoted(), shape.column.quoted());
        let mut sql = sync::drop_sql(&shape.table, &shadow, dialect);
        if !facts.exists {
            sql.push(drop_column_sql(&shape.table, &shape.column, dialect));
            sql.push(format!(
                "ALTER TABLE {t} RENAME COLUMN {} TO {c}",
                shadow.quoted()
            ));
            sql.push(format!(
                "-- then: the copies of indexes and constraints renamed to the original names, the default and NOT NULL set, foreign keys that reference the column added back NOT VALID and validated; \
                 this also locks the tables with foreign keys referencing {}.{} (ACCESS EXCLUSIVE while each key is dropped and added back NOT VALID, in this transaction; SHARE UPDATE EXCLUSIVE while it is validated after)",
                shape.table, shape.column
            ));
            return Ok(vec![Unit::Transaction(sql)]);
        }
        let references = shape.references(facts);
        let validate_references = |references: &[&super::facts::ReferenceFacts]| {
            references
                .iter()
                .map(|r| {
                    Unit::Transaction(vec![format!(
                        "ALTER TABLE {} VALIDATE CONSTRAINT {}",
                        r.table,
                        quote(&r.name)
                    )])
                })
                .collect::<Vec<_>>()
        };
        if shape.is_swapped(facts) {
            // Swapped already (a rerun after the swap committed, which recorded nothing: see
            // `units_resumed`): validate the keys that are not.
            let not_valid: Vec<_> = references
                .iter()
                .copied()
                .filter(|r| r.definition.ends_with(" NOT VALID"))
                .collect();
            return Ok(validate_references(&not_valid));
        }
        // (Without the shadow and still of the old type: a dry run before expand ran; the swap
        // is shown as it will run.)
        let column = shape.column_facts(facts)?.clone();
        if dialect == Dialect::Sqlite {
            let indexes: Vec<_> = facts
                .indexes
                .iter()
                .filter(|i| {
                    !i.definition.is_empty() && i.columns.iter().any(|x| x == shape.column.as_str())
                })
                .collect();
            for index in &indexes {
                sql.push(format!("DROP INDEX IF EXISTS {}", quote(&index.name)));
            }
            sql.push(drop_column_sql(&shape.table, &shape.column, dialect));
            sql.push(format!(
                "ALTER TABLE {t} RENAME COLUMN {} TO {c}",
                shadow.quoted()
            ));
            // The stored definitions name the column, which is now the new one.
            sql.extend(indexes.iter().map(|i| i.definition.clone()));
            return Ok(vec![Unit::Transaction(sql)]);
        }
        let indexes = shape.indexes_to_copy(facts)?;
        let before_expand = facts.column(shadow.as_str()).is_none();
        for index in indexes.iter().filter(|_| !before_expand) {
            let copy = shape.copy_name(&index.name);
            if !facts
                .indexes
                .iter()
                .any(|i| i.name == copy.as_str() && i.valid)
            {
                return Err(RenderError(format!(
                    "index `{}` has no valid copy `{copy}` on the new column: run (or rerun) the migrate part of `change_type {}.{}` first",
                    index.name, shape.table, shape.column
                )));
            }
        }
        let constraints = shape.constraints_to_copy(facts);
        let sequence = column.default.as_deref().and_then(owned_sequence);
        for r in &references {
            sql.push(format!(
                "ALTER TABLE {} DROP CONSTRAINT {}",
                r.table,
                quote(&r.name)
            ));
        }
        if let Some(sequence) = sequence {
            sql.push(format!("ALTER SEQUENCE {sequence} OWNED BY NONE"));
        }
        sql.push(format!("ALTER TABLE {t} DROP COLUMN {c}"));
        sql.push(format!(
            "ALTER TABLE {t} RENAME COLUMN {} TO {c}",
            shadow.quoted()
        ));
        if let Some(default) = &column.default {
            sql.push(format!(
                "ALTER TABLE {t} ALTER COLUMN {c} SET DEFAULT {default}"
            ));
        }
        if let Some(sequence) = sequence {
            sql.push(format!("ALTER SEQUENCE {sequence} OWNED BY {t}.{c}"));
        }
        if column.not_null {
            // The validated check proves it: no scan under the lock.
            sql.push(format!("ALTER TABLE {t} ALTER COLUMN {c} SET NOT NULL"));
            sql.push(format!(
                "ALTER TABLE {t} DROP CONSTRAINT {}",
                shape.not_null_check().quoted()
            ));
        }
        for k in &constraints {
            sql.push(format!(
                "ALTER TABLE {t} RENAME CONSTRAINT {} TO {}",
                shape.copy_name(&k.name).quoted(),
                quote(&k.name)
            ));
        }
        for index in &indexes {
            let copy = shape.copy_name(&index.name);
            let kind = index.constraint.as_ref().and_then(|name| {
                facts
                    .constraints
                    .iter()
                    .find(|k| &k.name == name)
                    .map(|k| (name, k.kind))
            });
            match kind {
                Some((name, kind)) => sql.push(format!(
                    "ALTER TABLE {t} ADD CONSTRAINT {} {} USING INDEX {}",
                    quote(name),
                    if kind == 'p' { "PRIMARY KEY" } else { "UNIQUE" },
                    copy.quoted()
                )),
                None => sql.push(format!(
                    "ALTER INDEX {} RENAME TO {}",
                    shape.index_in_schema(copy.as_str()),
                    quote(&index.name)
                )),
            }
        }
        for r in &references {
            sql.push(format!(
                "ALTER TABLE {} ADD CONSTRAINT {} {} NOT VALID",
                r.table,
                quote(&r.name),
                without_not_valid(&r.definition)
            ));
        }
        let swap = Unit::Transaction(sql);
        if references.is_empty() {
            // The swap is the step's one unit: its transaction marks the step done.
            return Ok(vec![swap]);
        }
        // A crash after the swap commits and before the keys are validated must leave a step
        // that a rerun finishes and that rollback knows committed: the swap records the keys
        // in its own transaction.
        let mut units = vec![Unit::Checkpoint {
            checkpoint: Swapped::of(&references).to_checkpoint(),
            then: Box::new(swap),
        }];
        let validated: Vec<_> = references
            .iter()
            .copied()
            .filter(|r| !r.definition.ends_with(" NOT VALID"))
            .collect();
        units.extend(validate_references(&validated));
        Ok(units)
    }

    /// After the swap committed (its checkpoint says so, and the catalog agrees): the recorded
    /// foreign keys that are missing added back `NOT VALID`, and those that were validated
    /// before validated again.
    fn units_resumed(
        &self,
        dialect: Dialect,
        facts: &TableFacts,
        checkpoint: Option<&str>,
    ) -> Result<Vec<Unit>, RenderError> {
        match Swapped::from_checkpoint(checkpoint) {
            Some(swapped) if facts.exists && self.0.shape().is_swapped(facts) => {
                Ok(swapped.rest(facts))
            }
            _ => self.units_with(dialect, facts),
        }
    }

    /// A swap that committed and whose foreign keys were not all validated yet: it cannot be
    /// undone from the plan (the old column and its values are gone).
    fn committed_part(
        &self,
        checkpoint: Option<&str>,
        facts: Option<&TableFacts>,
    ) -> Option<String> {
        let swapped = Swapped::from_checkpoint(checkpoint)?;
        let shape = self.0.shape();
        Some(format!(
            "the swap of `{}.{}` committed before the run stopped: the column is of type `{}` now and the column of the old type is dropped with its values, so the plan cannot undo it. \
             The foreign keys that reference the column were added back NOT VALID in the swap, and not all were validated yet ({}). \
             `phased run` finishes the step: it adds back any of those keys that is missing and validates them. \
             To go back to the old type, restore the backup taken before this contract phase: `phased backups PLAN` lists them, `phased restore BACKUP` restores one",
            shape.table,
            shape.column,
            shape.ty,
            swapped.state(facts)
        ))
    }

    /// Once the old column is dropped only a backup brings it back; a swap that did not commit
    /// left nothing behind.
    fn inverse(&self, _ctx: &InverseContext<'_>, done: bool, _dialect: Dialect) -> Inverse {
        if done {
            super::lost(
                "change_type",
                "dropped the column of the old type at the swap",
            )
        } else {
            Inverse::Nothing("the swap's transaction never committed".to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::facts::{ConstraintFacts, IndexFacts, ReferenceFacts};
    use crate::ops::parse_step;

    fn orders() -> TableFacts {
        TableFacts {
            exists: true,
            columns: vec![
                ColumnFacts {
                    name: "id".into(),
                    ty: "integer".into(),
                    not_null: true,
                    default: Some("nextval('orders_id_seq'::regclass)".into()),
                    primary_key: true,
                },
                ColumnFacts {
                    name: "total_cents".into(),
                    ty: "integer".into(),
                    not_null: true,
                    default: Some("0".into()),
                    primary_key: false,
                },
            ],
            indexes: vec![IndexFacts {
                name: "orders_total_idx".into(),
                definition: "CREATE INDEX orders_total_idx ON public.orders USING btree (total_cents) WHERE (total_cents > 0)".into(),
                columns: vec!["total_cents".into()],
                valid: true,
                ..IndexFacts::default()
            }],
            constraints: vec![ConstraintFacts {
                name: "orders_total_check".into(),
                kind: 'c',
                definition: "CHECK ((total_cents >= 0))".into(),
                columns: vec!["total_cents".into()],
                validated: true,
            }],
            referenced_by: Vec::new(),
            sql: String::new(),
        }
    }

    fn op() -> Step {
        parse_step("change_type: { table: orders, column: total_cents, type: bigint }")
    }

    fn sql_of(units: &[Unit]) -> String {
        units
            .iter()
            .map(Unit::sql_text)
            .collect::<Vec<_>>()
            .join(";\n")
    }

    #[test]
    fn expand_adds_the_shadow_and_its_trigger() {
        let units = op()
            .op()
            .units_with(Dialect::Postgres, &orders())
            .unwrap_or_default();
        let sql = sql_of(&units);
        assert!(
            sql.starts_with("ALTER TABLE \"orders\" ADD COLUMN IF NOT EXISTS \"phased_new_total_cents\" bigint;"),
            "{sql}"
        );
        assert!(
            sql.contains("NEW.\"phased_new_total_cents\" := (SELECT (CAST(\"total_cents\" AS bigint)) FROM (SELECT NEW.*) AS phased_row)"),
            "{sql}"
        );
        let missing = parse_step("change_type: { table: orders, column: nope, type: bigint }");
        let err = missing.op().units_with(Dialect::Postgres, &orders());
        assert!(
            matches!(&err, Err(e) if e.0.contains("has no column `nope`")),
            "{err:?}"
        );
    }

    #[test]
    fn parts_are_a_backfill_a_rebuild_and_a_swap() {
        let parts = op().op().later_parts();
        let placed: Vec<(PhaseKind, &str)> = parts.iter().map(|p| (p.phase, p.tag)).collect();
        assert_eq!(
            placed,
            vec![
                (PhaseKind::Migrate, "backfill"),
                (PhaseKind::Migrate, "rebuild"),
                (PhaseKind::Contract, "swap")
            ]
        );
        let Step::Backfill(b) = &parts[0].step else {
            panic!("{:?}", parts[0].step)
        };
        assert_eq!(
            b.predicate.as_deref(),
            Some("\"phased_new_total_cents\" IS DISTINCT FROM (CAST(\"total_cents\" AS bigint))")
        );
        let paced = parse_step(
            "change_type: { table: orders, column: total_cents, type: bigint, backfill: { batch_size: 500, pause: 0s } }",
        );
        let parts = paced.op().later_parts();
        let Step::Backfill(b) = &parts[0].step else {
            panic!("{:?}", parts[0].step)
        };
        assert_eq!(b.batch_size, BatchSize::Fixed(500));
        assert_eq!(b.pause, Some(PlanDuration::from_millis(0)));
    }

    #[test]
    fn rebuild_copies_indexes_concurrently_and_constraints_not_valid() {
        let mut facts = orders();
        facts.columns.push(ColumnFacts {
            name: "phased_new_total_cents".into(),
            ty: "bigint".into(),
            ..ColumnFacts::default()
        });
        let parts = op().op().later_parts();
        let units = parts[1]
            .step
            .op()
            .units_with(Dialect::Postgres, &facts)
            .unwrap_or_default();
        assert_eq!(
            units[0],
            Unit::ConcurrentIndex {
                name: "\"phased_new_orders_total_idx\"".into(),
                create: "CREATE INDEX CONCURRENTLY \"phased_new_orders_total_idx\" ON public.orders USING btree (\"phased_new_total_cents\") WHERE (\"phased_new_total_cents\" > 0)".into(),
            }
        );
        let sql = sql_of(&units[1..]);
        assert_eq!(
            sql,
            "ALTER TABLE \"orders\" ADD CONSTRAINT \"phased_new_orders_total_check\" CHECK ((\"phased_new_total_cents\" >= 0)) NOT VALID;\n\
             ALTER TABLE \"orders\" VALIDATE CONSTRAINT \"phased_new_orders_total_check\";\n\
             ALTER TABLE \"orders\" ADD CONSTRAINT \"phased_new_total_cents_not_null\" CHECK (\"phased_new_total_cents\" IS NOT NULL) NOT VALID;\n\
             ALTER TABLE \"orders\" VALIDATE CONSTRAINT \"phased_new_total_cents_not_null\""
        );
    }

    #[test]
    fn swap_is_one_catalog_only_transaction_then_validations() {
        let mut facts = orders();
        facts.columns.push(ColumnFacts {
            name: "phased_new_total_cents".into(),
            ty: "bigint".into(),
            ..ColumnFacts::default()
        });
        facts.indexes.push(IndexFacts {
            name: "phased_new_orders_total_idx".into(),
            columns: vec!["phased_new_total_cents".into()],
            valid: true,
            ..IndexFacts::default()
        });
        facts.referenced_by.push(ReferenceFacts {
            name: "lines_total_fk".into(),
            table: "lines".into(),
            definition: "FOREIGN KEY (total) REFERENCES orders(total_cents)".into(),
            columns: vec!["total_cents".into()],
        });
        let parts = op().op().later_parts();
        let units = parts[2]
            .step
            .op()
            .units_with(Dialect::Postgres, &facts)
            .unwrap_or_default();
        assert_eq!(units.len(), 2);
        let swap = units[0].sql_text();
        for expected in [
            "DROP TRIGGER IF EXISTS \"phased_sync_orders_phased_new_total_cents\" ON \"orders\"",
            "ALTER TABLE lines DROP CONSTRAINT \"lines_total_fk\"",
            "ALTER TABLE \"orders\" DROP COLUMN \"total_cents\"",
            "ALTER TABLE \"orders\" RENAME COLUMN \"phased_new_total_cents\" TO \"total_cents\"",
            "ALTER TABLE \"orders\" ALTER COLUMN \"total_cents\" SET DEFAULT 0",
            "ALTER TABLE \"orders\" ALTER COLUMN \"total_cents\" SET NOT NULL",
            "ALTER TABLE \"orders\" DROP CONSTRAINT \"phased_new_total_cents_not_null\"",
            "ALTER TABLE \"orders\" RENAME CONSTRAINT \"phased_new_orders_total_check\" TO \"orders_total_check\"",
            "ALTER INDEX \"phased_new_orders_total_idx\" RENAME TO \"orders_total_idx\"",
            "ALTER TABLE lines ADD CONSTRAINT \"lines_total_fk\" FOREIGN KEY (total) REFERENCES orders(total_cents) NOT VALID",
        ] {
            assert!(swap.contains(expected), "{expected}\nnot in\n{swap}");
        }
        assert_eq!(
            units[1],
            Unit::Transaction(vec![
                "ALTER TABLE lines VALIDATE CONSTRAINT \"lines_total_fk\"".into()
            ])
        );
        // The swap records the key it drops, in its own transaction.
        let Unit::Checkpoint { checkpoint, .. } = &units[0] else {
            panic!("{:?}", units[0])
        };
        assert_eq!(
            Swapped::from_checkpoint(Some(checkpoint)),
            Some(Swapped {
                references: vec![SwappedReference {
                    table: "lines".into(),
                    name: "lines_total_fk".into(),
                    definition: "FOREIGN KEY (total) REFERENCES orders(total_cents)".into(),
                    validated: true,
                }]
            })
        );
        // The rebuilt index missing: refused, naming the part to run.
        facts
            .indexes
            .retain(|i| i.name != "phased_new_orders_total_idx");
        let err = parts[2].step.op().units_with(Dialect::Postgres, &facts);
        assert!(
            matches!(&err, Err(e) if e.0.contains("has no valid copy")),
            "{err:?}"
        );
    }

    /// The catalog after the swap committed: the column of the new type, no shadow.
    fn swapped_orders() -> TableFacts {
        let mut facts = orders();
        facts.columns[1].ty = "bigint".into();
        facts
    }

    fn lines_fk(definition: &str) -> ReferenceFacts {
        ReferenceFacts {
            name: "lines_total_fk".into(),
            table: "app.\"Lines\"".into(),
            definition: definition.into(),
            columns: vec!["total_cents".into()],
        }
    }

    #[test]
    fn a_rerun_after_the_swap_committed_does_what_its_checkpoint_says_is_left() {
        let part = &op().op().later_parts()[2].step;
        let recorded = Swapped::of(&[&lines_fk(
            "FOREIGN KEY (total) REFERENCES orders(total_cents) ON DELETE CASCADE",
        )])
        .to_checkpoint();
        let validate = Unit::Transaction(vec![
            "ALTER TABLE app.\"Lines\" VALIDATE CONSTRAINT \"lines_total_fk\"".into(),
        ]);
        // The key missing (dropped by hand meanwhile): added back NOT VALID, then validated.
        let mut facts = swapped_orders();
        let units = part
            .op()
            .units_resumed(Dialect::Postgres, &facts, Some(&recorded))
            .unwrap_or_default();
        assert_eq!(
            units,
            vec![
                Unit::Transaction(vec!["ALTER TABLE app.\"Lines\" ADD CONSTRAINT \"lines_total_fk\" FOREIGN KEY (total) REFERENCES orders(total_cents) ON DELETE CASCADE NOT VALID".into()]),
                validate.clone()
            ]
        );
        // Added back NOT VALID by the swap: validated.
        facts.referenced_by.push(lines_fk(
            "FOREIGN KEY (total) REFERENCES orders(total_cents) ON DELETE CASCADE NOT VALID",
        ));
        let units = part
            .op()
            .units_resumed(Dialect::Postgres, &facts, Some(&recorded))
            .unwrap_or_default();
        assert_eq!(units, vec![validate]);
        // Valid already: nothing left.
        facts.referenced_by[0] =
            lines_fk("FOREIGN KEY (total) REFERENCES orders(total_cents) ON DELETE CASCADE");
        let units = part
            .op()
            .units_resumed(Dialect::Postgres, &facts, Some(&recorded))
            .unwrap_or_default();
        assert!(units.is_empty(), "{units:?}");
        // Rollback is told the swap committed, and each key's state now.
        let why = part
            .op()
            .committed_part(Some(&recorded), Some(&swapped_orders()))
            .unwrap_or_default();
        assert!(
            why.contains("the swap of `orders.total_cents` committed"),
            "{why}"
        );
        assert!(
            why.contains("\"lines_total_fk\" on app.\"Lines\": missing now"),
            "{why}"
        );
        assert!(why.contains("`phased run` finishes the step"), "{why}");
        assert_eq!(part.op().committed_part(None, None), None);
    }

    #[test]
    fn the_swap_locks_the_tables_whose_keys_reference_the_column() {
        let part = &op().op().later_parts()[2].step;
        let mut facts = orders();
        facts.columns.push(ColumnFacts {
            name: "phased_new_total_cents".into(),
            ty: "bigint".into(),
            ..ColumnFacts::default()
        });
        facts.referenced_by.push(lines_fk(
            "FOREIGN KEY (total) REFERENCES orders(total_cents)",
        ));
        let locks = |facts: &TableFacts| {
            part.op()
                .locks_with(facts)
                .into_iter()
                .map(|l| (l.table.quoted(), l.mode))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            locks(&facts),
            vec![
                ("\"orders\"".to_string(), LockMode::AccessExclusive),
                ("\"app\".\"Lines\"".to_string(), LockMode::AccessExclusive),
            ]
        );
        // After the swap: what adding back a key takes.
        let mut swapped = swapped_orders();
        swapped.referenced_by = facts.referenced_by.clone();
        assert_eq!(
            locks(&swapped),
            vec![
                ("\"orders\"".to_string(), LockMode::ShareRowExclusive),
                ("\"app\".\"Lines\"".to_string(), LockMode::ShareRowExclusive),
            ]
        );
    }

    #[test]
    fn regclass_names_are_read_back() {
        let read = |t: &str| regclass_table(t).map(|t| t.quoted());
        assert_eq!(read("invoices").as_deref(), Some("\"invoices\""));
        assert_eq!(
            read("app.invoices").as_deref(),
            Some("\"app\".\"invoices\"")
        );
        assert_eq!(
            read("\"A.b\".\"x\"\"y\"").as_deref(),
            Some("\"A.b\".\"x\"\"y\"")
        );
        assert_eq!(read("a.b.c"), None);
    }

    #[test]
    fn types_are_compared_as_the_catalog_spells_them() {
        assert!(same_type("bigint", "int8"));
        assert!(same_type("character varying(20)", "VARCHAR (20)"));
        assert!(!same_type("integer", "bigint"));
    }

    #[test]
    fn a_serial_columns_sequence_stays_with_it() {
        assert_eq!(
            owned_sequence("nextval('app.orders_id_seq'::regclass)"),
            Some("app.orders_id_seq")
        );
        assert_eq!(owned_sequence("0"), None);
        assert_eq!(owned_sequence("nextval('x; DROP'::regclass)"), None);
    }

    #[test]
    fn sqlite_refuses_what_its_drop_column_refuses() {
        let mut facts = orders();
        facts.sql = "CREATE TABLE orders (id INTEGER PRIMARY KEY, total_cents INTEGER NOT NULL CHECK (total_cents >= 0))".into();
        facts.constraints.clear();
        let err = op().op().units_with(Dialect::Sqlite, &facts);
        assert!(
            matches!(&err, Err(e) if e.0.contains("is in a CHECK constraint")),
            "{err:?}"
        );
        facts.sql = "CREATE TABLE orders (id INTEGER PRIMARY KEY, total_cents INTEGER NOT NULL DEFAULT 0, note TEXT CHECK (note <> ''))".into();
        let units = op()
            .op()
            .units_with(Dialect::Sqlite, &facts)
            .unwrap_or_default();
        assert!(
            sql_of(&units).starts_with(
                "ALTER TABLE \"orders\" ADD COLUMN \"phased_new_total_cents\" bigint DEFAULT 0;"
            ),
            "{}",
            sql_of(&units)
        );
    }
}
