//! The plan as written: phases of steps, with the source location of everything later checks point at.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_saphyr::Spanned;

use super::duration::PlanDuration;

/// A whole plan file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The plan id: all state is keyed by it.
    pub plan: Spanned<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub defaults: Defaults,
    #[serde(default)]
    pub backup: BackupConfig,
    pub phases: Spanned<Vec<Spanned<Phase>>>,
    /// Each step as the file writes it, filled by `load`: what step checksums hash.
    #[serde(skip)]
    pub written: super::WrittenSteps,
}

impl Plan {
    pub fn id(&self) -> &str {
        &self.plan.value
    }

    pub fn phases(&self) -> impl Iterator<Item = &Phase> {
        self.phases.value.iter().map(|p| &p.value)
    }

    pub fn phase(&self, name: &str) -> Option<&Phase> {
        self.phases().find(|p| p.name.value == name)
    }

    pub fn phase_index(&self, name: &str) -> Option<usize> {
        self.phases().position(|p| p.name.value == name)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    #[serde(default = "Defaults::default_lock_timeout")]
    pub lock_timeout: PlanDuration,
    #[serde(default)]
    pub statement_timeout: PlanDuration,
    #[serde(default)]
    pub retry: RetryPolicy,
}

impl Defaults {
    fn default_lock_timeout() -> PlanDuration {
        PlanDuration::from_millis(2000)
    }
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            lock_timeout: Self::default_lock_timeout(),
            statement_timeout: PlanDuration::default(),
            retry: RetryPolicy::default(),
        }
    }
}

/// Bounded retries on lock timeouts, deadlocks and serialization failures.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    #[serde(default = "RetryPolicy::default_attempts")]
    pub attempts: u32,
    #[serde(default = "RetryPolicy::default_backoff")]
    pub backoff: PlanDuration,
    #[serde(default = "RetryPolicy::default_max_backoff")]
    pub max_backoff: PlanDuration,
}

impl RetryPolicy {
    fn default_attempts() -> u32 {
        10
    }
    fn default_backoff() -> PlanDuration {
        PlanDuration::from_millis(250)
    }
    fn default_max_backoff() -> PlanDuration {
        PlanDuration::from_millis(30_000)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: Self::default_attempts(),
            backoff: Self::default_backoff(),
            max_backoff: Self::default_max_backoff(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// Phases preceded by a verified backup.
    #[serde(default = "BackupConfig::default_before")]
    pub before: Vec<Spanned<String>>,
    #[serde(default = "BackupConfig::default_dir")]
    pub dir: PathBuf,
    /// Only these tables (PostgreSQL); all when empty.
    #[serde(default)]
    pub tables: Vec<String>,
    /// Keep this many backups of the plan; older ones are pruned.
    #[serde(default)]
    pub keep: Option<u32>,
}

impl BackupConfig {
    fn default_before() -> Vec<Spanned<String>> {
        vec![Spanned::new(
            "contract".to_string(),
            serde_saphyr::Location::UNKNOWN,
            serde_saphyr::Location::UNKNOWN,
        )]
    }
    fn default_dir() -> PathBuf {
        PathBuf::from("backups")
    }
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self {
            before: Self::default_before(),
            dir: Self::default_dir(),
            tables: Vec::new(),
            keep: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PhaseKind {
    Expand,
    Migrate,
    SwitchFlag,
    Contract,
}

impl PhaseKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PhaseKind::Expand => "expand",
            PhaseKind::Migrate => "migrate",
            PhaseKind::SwitchFlag => "switch-flag",
            PhaseKind::Contract => "contract",
        }
    }
}

impl fmt::Display for PhaseKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    pub name: Spanned<String>,
    pub kind: Spanned<PhaseKind>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub gate: Vec<Spanned<Gate>>,
    pub steps: Spanned<Vec<Spanned<Step>>>,
}

impl Phase {
    pub fn name(&self) -> &str {
        &self.name.value
    }

    pub fn kind(&self) -> PhaseKind {
        self.kind.value
    }

    pub fn steps(&self) -> impl Iterator<Item = &Step> {
        self.steps.value.iter().map(|s| &s.value)
    }
}

/// A condition that must hold before a phase starts.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Gate {
    /// A query returning one boolean, which must be true.
    Sql(String),
    /// A flag must have a value.
    Flag(FlagGate),
    /// Another (earlier) phase must be done.
    PhaseDone(String),
    /// Poll a condition until it holds or the timeout passes.
    Wait(WaitGate),
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FlagGate {
    pub name: String,
    pub is: FlagValue,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WaitGate {
    #[serde(default)]
    pub sql: Option<String>,
    #[serde(default)]
    pub flag: Option<FlagGate>,
    #[serde(default)]
    pub phase_done: Option<String>,
    #[serde(default = "WaitGate::default_timeout")]
    pub timeout: PlanDuration,
    #[serde(default = "WaitGate::default_interval")]
    pub interval: PlanDuration,
}

impl WaitGate {
    fn default_timeout() -> PlanDuration {
        PlanDuration::from_millis(300_000)
    }
    fn default_interval() -> PlanDuration {
        PlanDuration::from_millis(5_000)
    }
}

/// One step of a phase: exactly one kind.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    CreateTable(CreateTable),
    DropTable(DropTable),
    AddColumn(AddColumn),
    DropColumn(DropColumn),
    CreateIndex(CreateIndex),
    DropIndex(DropIndex),
    AddCheck(AddCheck),
    AddForeignKey(AddForeignKey),
    SetNotNull(SetNotNull),
    DualWrite(DualWrite),
    DropDualWrite(DropDualWrite),
    Backfill(Backfill),
    Flag(Flag),
    Sql(SqlStep),
    Migrations(Migrations),
    Command(Command),
}

impl Step {
    /// The kind's name as written in plans.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Step::CreateTable(_) => "create_table",
            Step::DropTable(_) => "drop_table",
            Step::AddColumn(_) => "add_column",
            Step::DropColumn(_) => "drop_column",
            Step::CreateIndex(_) => "create_index",
            Step::DropIndex(_) => "drop_index",
            Step::AddCheck(_) => "add_check",
            Step::AddForeignKey(_) => "add_foreign_key",
            Step::SetNotNull(_) => "set_not_null",
            Step::DualWrite(_) => "dual_write",
            Step::DropDualWrite(_) => "drop_dual_write",
            Step::Backfill(_) => "backfill",
            Step::Flag(_) => "flag",
            Step::Sql(_) => "sql",
            Step::Migrations(_) => "migrations",
            Step::Command(_) => "command",
        }
    }

    /// Destructive steps may only stand in a `contract` phase.
    pub fn is_destructive(&self) -> bool {
        matches!(
            self,
            Step::DropTable(_)
                | Step::DropColumn(_)
                | Step::DropIndex(_)
                | Step::SetNotNull(_)
                | Step::DropDualWrite(_)
        )
    }

    /// A short human label: `add_column accounts.email_lower`.
    pub fn label(&self) -> String {
        let target = match self {
            Step::CreateTable(s) => s.name.clone(),
            Step::DropTable(s) => s.name.clone(),
            Step::AddColumn(s) => format!("{}.{}", s.table, s.name),
            Step::DropColumn(s) => format!("{}.{}", s.table, s.name),
            Step::CreateIndex(s) => s.name.clone(),
            Step::DropIndex(s) => s.name.clone(),
            Step::AddCheck(s) => s.name.clone(),
            Step::AddForeignKey(s) => s.name.clone(),
            Step::SetNotNull(s) => format!("{}.{}", s.table, s.column),
            Step::DualWrite(s) => s.table.clone(),
            Step::DropDualWrite(s) => s.table.clone(),
            Step::Backfill(s) => format!(
                "{} ({})",
                s.table,
                s.set.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
            Step::Flag(s) => format!("{} = {}", s.name, s.value),
            Step::Sql(s) => match (&s.up, &s.file) {
                (_, Some(file)) => file.display().to_string(),
                (Some(up), None) => first_line(up, 48),
                (None, None) => String::new(),
            },
            Step::Migrations(s) => format!("{} to {}", s.dir.display(), s.to),
            Step::Command(s) => s.run.join(" "),
        };
        format!("{} {}", self.kind_name(), target)
    }

    /// The step's own lock_timeout override, if it has one.
    pub fn lock_timeout(&self) -> Option<PlanDuration> {
        match self {
            Step::CreateTable(s) => s.lock_timeout,
            Step::DropTable(s) => s.lock_timeout,
            Step::AddColumn(s) => s.lock_timeout,
            Step::DropColumn(s) => s.lock_timeout,
            Step::CreateIndex(s) => s.lock_timeout,
            Step::DropIndex(s) => s.lock_timeout,
            Step::AddCheck(s) => s.lock_timeout,
            Step::AddForeignKey(s) => s.lock_timeout,
            Step::SetNotNull(s) => s.lock_timeout,
            Step::DualWrite(s) => s.lock_timeout,
            Step::DropDualWrite(s) => s.lock_timeout,
            Step::Backfill(s) => s.lock_timeout,
            Step::Sql(s) => s.lock_timeout,
            Step::Flag(_) | Step::Migrations(_) | Step::Command(_) => None,
        }
    }

    /// The existing table the step changes, when there is one (look-before-you-queue and lock
    /// reports use it). `create_table` makes a new table that nobody can hold a lock on yet;
    /// `sql`, `migrations`, `flag` and `command` steps do not say which tables they touch.
    pub fn table(&self) -> Option<&str> {
        match self {
            Step::DropTable(s) => Some(&s.name),
            Step::AddColumn(s) => Some(&s.table),
            Step::DropColumn(s) => Some(&s.table),
            Step::CreateIndex(s) => Some(&s.table),
            Step::DropIndex(s) => s.table.as_deref(),
            Step::AddCheck(s) => Some(&s.table),
            Step::AddForeignKey(s) => Some(&s.table),
            Step::SetNotNull(s) => Some(&s.table),
            Step::DualWrite(s) => Some(&s.table),
            Step::DropDualWrite(s) => Some(&s.table),
            Step::Backfill(s) => Some(&s.table),
            Step::CreateTable(_)
            | Step::Flag(_)
            | Step::Sql(_)
            | Step::Migrations(_)
            | Step::Command(_) => None,
        }
    }

    /// The step's own statement_timeout override, if it has one.
    pub fn statement_timeout(&self) -> Option<PlanDuration> {
        match self {
            Step::Sql(s) => s.statement_timeout,
            Step::Backfill(s) => s.statement_timeout,
            Step::CreateIndex(s) => s.statement_timeout,
            _ => None,
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

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    #[serde(default = "yes")]
    pub nullable: bool,
    #[serde(default)]
    pub primary_key: bool,
    #[serde(default)]
    pub unique: bool,
    #[serde(default)]
    pub default: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CreateTable {
    pub name: String,
    pub columns: Vec<Column>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DropTable {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AddColumn {
    pub table: String,
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    #[serde(default = "yes")]
    pub nullable: bool,
    /// A constant SQL expression.
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DropColumn {
    pub table: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CreateIndex {
    pub table: String,
    pub name: String,
    pub columns: Vec<String>,
    #[serde(default)]
    pub unique: bool,
    #[serde(default, rename = "where")]
    pub predicate: Option<String>,
    #[serde(default)]
    pub using: Option<IndexMethod>,
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement_timeout: Option<PlanDuration>,
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

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DropIndex {
    pub name: String,
    /// SQLite needs nothing more; on PostgreSQL a schema-qualified name also works.
    #[serde(default)]
    pub table: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AddCheck {
    pub table: String,
    pub name: String,
    pub expression: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AddForeignKey {
    pub table: String,
    pub name: String,
    pub columns: Vec<String>,
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
    pub table: String,
    pub columns: Vec<String>,
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

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SetNotNull {
    pub table: String,
    pub column: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DualWrite {
    pub table: String,
    /// column → SQL expression over `NEW`.
    pub set: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DropDualWrite {
    pub table: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Backfill {
    pub table: String,
    /// column → SQL expression over the row.
    pub set: BTreeMap<String, String>,
    #[serde(default, rename = "where")]
    pub predicate: Option<String>,
    /// The key to walk; the primary key when left out.
    #[serde(default)]
    pub key: Vec<String>,
    #[serde(default)]
    pub batch_size: BatchSize,
    #[serde(default = "Backfill::default_target_batch_time")]
    pub target_batch_time: PlanDuration,
    /// Sleep between batches (default 28ms: with the default 2ms batches, the backfill works
    /// about a fifteenth of the time and leaves the rest to the application).
    #[serde(default = "Backfill::default_pause")]
    pub pause: PlanDuration,
    #[serde(default)]
    pub max_rows_per_second: u64,
    #[serde(default)]
    pub max_replica_lag: Option<PlanDuration>,
    /// SQL run for rollback of a backfill into pre-existing columns.
    #[serde(default)]
    pub down: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement_timeout: Option<PlanDuration>,
}

impl Backfill {
    /// Short, frequent batches are what keep the application's latency flat: on a busy
    /// server a batch is a burst of CPU and WAL that every application write queues behind, and
    /// the shorter the burst, the shorter the queue (docs/benchmarks.md: 10ms batches cost
    /// the application's p99 2.6×, 2ms batches at the same share of time about 1.5×). The
    /// defaults are gentle on purpose; `pause: 0s` with a longer batch time is the fast
    /// setting for quiet hours.
    fn default_target_batch_time() -> PlanDuration {
        PlanDuration::from_millis(2)
    }

    fn default_pause() -> PlanDuration {
        PlanDuration::from_millis(28)
    }
}

/// `auto` (tuned toward `target_batch_time`) or a fixed number of rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BatchSize {
    #[default]
    Auto,
    Fixed(u64),
}

impl Serialize for BatchSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            BatchSize::Auto => s.serialize_str("auto"),
            BatchSize::Fixed(n) => s.serialize_u64(*n),
        }
    }
}

impl<'de> Deserialize<'de> for BatchSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BatchVisitor;
        impl Visitor<'_> for BatchVisitor {
            type Value = BatchSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`auto` or a positive number of rows")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<BatchSize, E> {
                if v == "auto" {
                    Ok(BatchSize::Auto)
                } else {
                    Err(E::custom(format!(
                        "batch_size `{v}` is not `auto` or a positive number of rows"
                    )))
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<BatchSize, E> {
                if v == 0 {
                    Err(E::custom("batch_size must be at least 1"))
                } else {
                    Ok(BatchSize::Fixed(v))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<BatchSize, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom("batch_size must be at least 1"))
                    .and_then(|v| self.visit_u64(v))
            }
        }
        deserializer.deserialize_any(BatchVisitor)
    }
}

/// A flag value: stored as text, written in plans as a scalar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagValue(pub String);

impl fmt::Display for FlagValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for FlagValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for FlagValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FlagVisitor;
        impl Visitor<'_> for FlagVisitor {
            type Value = FlagValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a flag value: true, false, a number or a string")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<FlagValue, E> {
                Ok(FlagValue(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<FlagValue, E> {
                Ok(FlagValue(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<FlagValue, E> {
                Ok(FlagValue(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<FlagValue, E> {
                Ok(FlagValue(v.to_string()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FlagValue, E> {
                Ok(FlagValue(v.to_string()))
            }
        }
        deserializer.deserialize_any(FlagVisitor)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Flag {
    pub name: String,
    pub value: FlagValue,
}

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
    #[serde(default = "yes")]
    transactional: bool,
    #[serde(default)]
    lock_timeout: Option<PlanDuration>,
    #[serde(default)]
    statement_timeout: Option<PlanDuration>,
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
                    file_text: None,
                    down_file_text: None,
                })
            }
        }
        deserializer.deserialize_any(SqlVisitor)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Migrations {
    #[serde(default = "Migrations::default_dir")]
    pub dir: PathBuf,
    #[serde(default = "Migrations::default_to")]
    pub to: String,
}

impl Migrations {
    fn default_dir() -> PathBuf {
        PathBuf::from("migrations")
    }
    fn default_to() -> String {
        "head".to_string()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// Program and arguments; no shell.
    pub run: Vec<String>,
    #[serde(default)]
    pub down: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default = "Command::default_timeout")]
    pub timeout: PlanDuration,
}

impl Command {
    fn default_timeout() -> PlanDuration {
        PlanDuration::from_millis(60_000)
    }
}
