//! The plan as written: phases of steps, with the source location of everything later checks point at.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::duration::PlanDuration;
use crate::ops::{Operation, TableName};

// The step kinds' fields live with their operations; the plan's readers find them here too.
pub use crate::ops::add_check::AddCheck;
pub use crate::ops::add_column::AddColumn;
pub use crate::ops::add_foreign_key::{AddForeignKey, References, ReferentialAction};
pub use crate::ops::backfill::{Backfill, BatchSize};
pub use crate::ops::command::Command;
pub use crate::ops::create_index::{CreateIndex, IndexMethod};
pub use crate::ops::create_table::{Column, CreateTable};
pub use crate::ops::drop_column::DropColumn;
pub use crate::ops::drop_dual_write::DropDualWrite;
pub use crate::ops::drop_index::DropIndex;
pub use crate::ops::drop_table::DropTable;
pub use crate::ops::dual_write::DualWrite;
pub use crate::ops::flag::{Flag, FlagValue};
pub use crate::ops::migrations::Migrations;
pub use crate::ops::sql::SqlStep;

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
    /// The phases, in order. A plan writes either `phases:` or `changes:`, which `load`
    /// compiles into phases.
    #[serde(default = "Plan::no_phases")]
    pub phases: Spanned<Vec<Spanned<Phase>>>,
    /// The `changes:` form: a list of steps, each placed by `load` in a phase of the kind it
    /// belongs to (`expand`, `migrate`, `switch`, `contract`: see `plan::compile`).
    #[serde(default)]
    pub changes: Option<Spanned<Vec<Spanned<Step>>>>,
    /// The `changes:` form's flags, set in its `switch` phase.
    #[serde(default)]
    pub flags: Vec<Spanned<Flag>>,
    /// The `changes:` form's gates, by compiled phase name (`contract: [ … ]`).
    #[serde(default)]
    pub gates: std::collections::BTreeMap<String, Spanned<Vec<Spanned<Gate>>>>,
    /// Each step as the file writes it, filled by `load`: what step checksums hash.
    #[serde(skip)]
    pub written: super::WrittenSteps,
    /// The steps scheduling placed: the later parts of operations written once.
    #[serde(skip)]
    pub scheduled: Vec<Scheduled>,
}

/// A step that scheduling placed in a later phase: a part of the operation written at
/// `origin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scheduled {
    /// Where the part stands: (phase index, step index).
    pub at: (usize, usize),
    /// Where the operation is written: (phase index, step index).
    pub origin: (usize, usize),
    /// The part's name: `backfill`, `contract`.
    pub tag: &'static str,
}

impl Plan {
    fn no_phases() -> Spanned<Vec<Spanned<Phase>>> {
        Spanned::new(
            Vec::new(),
            serde_saphyr::Location::UNKNOWN,
            serde_saphyr::Location::UNKNOWN,
        )
    }

    /// The part scheduled at (phase index, step index), if scheduling placed a step there.
    pub fn scheduled_at(&self, phase_index: usize, index: usize) -> Option<&Scheduled> {
        self.scheduled.iter().find(|s| s.at == (phase_index, index))
    }

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
    /// How long a `CONCURRENTLY` build or drop may wait, in total, for older transactions to
    /// finish (PostgreSQL); 0 = no limit. Its wait for the table lock stays under lock_timeout.
    #[serde(default = "Defaults::default_index_wait_timeout")]
    pub index_wait_timeout: PlanDuration,
    #[serde(default)]
    pub retry: RetryPolicy,
}

impl Defaults {
    fn default_lock_timeout() -> PlanDuration {
        PlanDuration::from_millis(2000)
    }

    /// Generous: waiting blocks no application query, and giving up costs a whole new build.
    fn default_index_wait_timeout() -> PlanDuration {
        PlanDuration::from_millis(3_600_000)
    }
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            lock_timeout: Self::default_lock_timeout(),
            statement_timeout: PlanDuration::default(),
            index_wait_timeout: Self::default_index_wait_timeout(),
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

impl Gate {
    /// The condition in words, as `gate` reports it and `plan` shows it: `flag f is true`.
    pub fn describe(&self) -> String {
        match self {
            Gate::Sql(sql) => format!("sql: {sql}"),
            Gate::Flag(flag) => flag.describe(),
            Gate::PhaseDone(name) => format!("phase {name} is done"),
            Gate::Wait(wait) => {
                let what = match (&wait.sql, &wait.flag, &wait.phase_done) {
                    (Some(sql), _, _) => format!("sql: {sql}"),
                    (None, Some(flag), _) => flag.describe(),
                    (None, None, Some(name)) => format!("phase {name} is done"),
                    (None, None, None) => "nothing".to_string(),
                };
                format!("wait {} for {what}", wait.timeout)
            }
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FlagGate {
    pub name: String,
    pub is: FlagValue,
}

impl FlagGate {
    pub fn describe(&self) -> String {
        format!("flag {} is {}", self.name, self.is)
    }
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

macro_rules! step_enum {
    (kinds { $($variant:ident($name:literal, $op:ty)),* $(,)? } parts { $($part:ident($part_name:literal, $part_op:ty)),* $(,)? }) => {
        /// One step of a phase: exactly one kind, written as `kind: { fields }` (externally
        /// tagged). Its serialization is what step checksums hash: it must not change. The
        /// part kinds are never read from a plan: scheduling makes them.
        #[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
        #[serde(rename_all = "snake_case", deny_unknown_fields)]
        pub enum Step {
            $($variant($op),)*
            $(
                #[serde(skip_deserializing, rename = $part_name)]
                $part($part_op),
            )*
        }

        impl Step {
            /// Every kind's name as plans write it, in the documented order.
            pub const KINDS: &'static [&'static str] = &[$($name),*];

            /// The operation the step performs: everything about its kind.
            pub fn op(&self) -> &dyn Operation {
                match self {
                    $(Step::$variant(op) => op,)*
                    $(Step::$part(op) => op,)*
                }
            }
        }
    };
}

crate::ops::step_kinds!(step_enum);

/// Forwards to [`Operation`], for call sites that hold a `Step`.
impl Step {
    /// The kind's name as written in plans.
    pub fn kind_name(&self) -> &'static str {
        self.op().kind()
    }

    /// Destructive steps may only stand in a `contract` phase.
    pub fn is_destructive(&self) -> bool {
        self.op().is_destructive()
    }

    /// A short human label: `add_column accounts.email_lower`.
    pub fn label(&self) -> String {
        self.op().label()
    }

    /// The step's own lock_timeout override, if it has one.
    pub fn lock_timeout(&self) -> Option<PlanDuration> {
        self.op().lock_timeout()
    }

    /// The existing table the step changes, when there is one.
    pub fn table(&self) -> Option<&TableName> {
        self.op().table()
    }

    /// The step's own statement_timeout override, if it has one.
    pub fn statement_timeout(&self) -> Option<PlanDuration> {
        self.op().statement_timeout()
    }

    /// The step's own index_wait_timeout override, if it has one.
    pub fn index_wait_timeout(&self) -> Option<PlanDuration> {
        self.op().index_wait_timeout()
    }
}
