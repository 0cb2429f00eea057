//! The command line as typed: clap derive structs holding raw flags, nothing resolved yet.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Zero-downtime database deployments in phases: expand, migrate, switch-flag, contract.
#[derive(Debug, Parser)]
#[command(name = "phased", version, about, long_about = None)]
pub struct Cli {
    /// Database URL: postgres://user@host/db[?sslmode=verify-full&sslrootcert=FILE] or sqlite://path [default: sqlite://phased.db]
    #[arg(long, global = true, env = "DATABASE_URL", hide_env_values = true)]
    pub database: Option<String>,

    /// Output: human (bars on a terminal, plain lines otherwise), json (NDJSON events), or
    /// github (workflow annotations; `lint` and `validate` only).
    #[arg(long = "format", value_name = "FORMAT", global = true, value_enum, default_value_t = OutputFormat::Human)]
    pub output: OutputFormat,

    /// `--format` as the commands other than `lint` and `validate` take it (set from `output`).
    #[arg(skip)]
    pub format: Format,

    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    #[default]
    Human,
    Json,
}

/// `--format` as typed: `github` (workflow annotations) only means something to `lint` and
/// `validate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Human,
    Json,
    Github,
}

/// A phase kind, as `phased lint --phase` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PhaseKindArg {
    Expand,
    Migrate,
    SwitchFlag,
    Contract,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parse, check and lint plans; no database needed.
    Validate {
        /// Plan files.
        #[arg(required = true)]
        plans: Vec<PathBuf>,
        /// Also check that every operation can run on this database (some are PostgreSQL-only).
        #[arg(long, value_enum)]
        dialect: Option<DialectArg>,
    },
    /// Lint plain SQL files (or folders of .sql files, phased migrations included); no database needed.
    Lint(LintArgs),
    /// Execute a plan, or resume it where it stopped.
    Run(RunArgs),
    /// Show every phase and step: state, timings, progress, last error.
    Status(StatusArgs),
    /// Pause the plan's backfills, from any machine: a running backfill stops before its next
    /// batch (within a second) and waits; the pause holds for later runs until `phased resume`.
    Pause {
        /// The plan file (YAML; its id keys the state in the database).
        plan: PathBuf,
    },
    /// Resume the plan's paused backfills (`phased pause`), from any machine.
    Resume {
        /// The plan file (YAML; its id keys the state in the database).
        plan: PathBuf,
    },
    /// Set the pace of the plan's backfills, from any machine, while they run.
    Pace(PaceArgs),
    /// Check a phase's gate without running anything (exit 3 when it is not met).
    Gate {
        /// The plan file (YAML; its id keys the state in the database).
        plan: PathBuf,
        /// The phase whose gate to check
        #[arg(long)]
        phase: String,
    },
    /// Print the SQL each pending step would run (dry run); writes nothing.
    Plan(PlanArgs),
    /// On a scratch copy of the schema: run the phases before the first contract, roll back, compare.
    Verify {
        /// The plan file (YAML; its id keys the state in the database).
        plan: PathBuf,
    },
    /// Undo the done steps of the phases after --to (all phases without it), newest first.
    Rollback(RollbackArgs),
    /// Read the flag store, or set a flag by hand.
    Flags {
        #[command(subcommand)]
        action: Option<FlagsAction>,
    },
    /// Alembic-style versioned migrations: one SQL file per revision in a folder.
    Db(DbArgs),
    /// List the recorded backups of a plan, newest first.
    Backups {
        /// The plan file (YAML; its id keys the state in the database).
        plan: PathBuf,
    },
    /// Restore a backup into the database it was taken from, or the one given with --database.
    Restore(RestoreArgs),
}

#[derive(Debug, Args)]
pub struct LintArgs {
    /// .sql files, or folders whose .sql files are linted (recursively, in name order).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// The kind of phase the SQL runs in: turns on the phase rules (destructive-outside-contract).
    #[arg(long, value_enum)]
    pub phase: Option<PhaseKindArg>,
    /// The SQL runs inside one transaction (a phased migration file says so in its header).
    #[arg(long)]
    pub transactional: bool,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup file (as listed by `phased backups PLAN`).
    pub backup: PathBuf,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct PaceArgs {
    /// The plan file (YAML; its id keys the state in the database).
    pub plan: PathBuf,
    /// At most this many rows a second, over the steps' own pace (auto or fixed).
    #[arg(long, conflicts_with = "auto", required_unless_present = "auto")]
    pub max_rows_per_second: Option<u64>,
    /// Back to the steps' own pace: `throttle: auto` (set by the workload's health), or a
    /// step's fixed knobs where it sets them (drops a --max-rows-per-second set earlier).
    #[arg(long)]
    pub auto: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The plan file (YAML; its id keys the state in the database).
    pub plan: PathBuf,
    /// Keep watching: redraw from the state in the database every --interval (on a terminal),
    /// or print a line each time something changed (elsewhere), until Ctrl-C or --count.
    #[arg(long)]
    pub watch: bool,
    /// How often --watch reads the state (e.g. 1s, 250ms).
    #[arg(long, default_value = "1s", requires = "watch")]
    pub interval: String,
    /// Stop --watch after this many reads.
    #[arg(long, requires = "watch")]
    pub count: Option<u64>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The plan file (YAML; its id keys the state in the database).
    pub plan: PathBuf,
    /// Run exactly this phase (the earlier ones must be done).
    #[arg(long, conflicts_with = "until")]
    pub phase: Option<String>,
    /// Run the phases up to and including this one.
    #[arg(long)]
    pub until: Option<String>,
    /// While this file exists, backfills pause (an operator's brake).
    #[arg(long)]
    pub throttle_file: Option<PathBuf>,
    /// Also write a JUnit XML report here (phase = testsuite, step = testcase).
    #[arg(long)]
    pub junit: Option<PathBuf>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// Startup mode, for an init container or an entrypoint that many replicas run at once.
#[derive(Debug, Clone, Copy, Args)]
pub struct WaitArgs {
    /// Startup mode: when another runner holds the lease, wait for it (showing its progress)
    /// instead of exiting 4, then find its work done; refuse migrations with destructive
    /// statements whose revision does not allow them (`-- destructive: RULE`).
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits for the lease before giving up (exit 4).
    #[arg(long, requires = "wait", default_value = "10m", value_parser = crate::plan::PlanDuration::parse)]
    pub wait_timeout: crate::plan::PlanDuration,
}

impl WaitArgs {
    /// The engine's wait, when `--wait` is given.
    pub fn wait(&self) -> Option<crate::engine::lease_wait::Wait> {
        self.wait.then_some(crate::engine::lease_wait::Wait {
            timeout: self.wait_timeout.0,
        })
    }
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The plan file (YAML; its id keys the state in the database).
    pub plan: PathBuf,
    /// Only this phase.
    #[arg(long)]
    pub phase: Option<String>,
    /// Render without a database: every step shown as pending.
    #[arg(long)]
    pub offline: bool,
    /// The dialect to render offline [default: the --database URL's, else sqlite].
    #[arg(long, value_enum, requires = "offline")]
    pub dialect: Option<DialectArg>,
    /// Print the plan's phases as YAML you could copy into a `phases:` plan and edit (a
    /// `changes:` plan compiled, each operation's later parts as comments where they run); no
    /// database needed.
    #[arg(long, conflicts_with_all = ["offline", "dialect", "phase"])]
    pub explain: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DialectArg {
    Postgres,
    Sqlite,
}

impl From<DialectArg> for crate::ops::Dialect {
    fn from(d: DialectArg) -> Self {
        match d {
            DialectArg::Postgres => crate::ops::Dialect::Postgres,
            DialectArg::Sqlite => crate::ops::Dialect::Sqlite,
        }
    }
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The plan file (YAML; its id keys the state in the database).
    pub plan: PathBuf,
    /// Keep this phase and the ones before it; undo the phases after it.
    #[arg(long)]
    pub to: Option<String>,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(short, long)]
    pub yes: bool,
}

#[derive(Debug, Subcommand)]
pub enum FlagsAction {
    /// Set a flag: phased flags set NAME VALUE
    Set {
        /// The flag's name.
        name: String,
        /// Its new value (stored as text: true, false, a number, a word).
        value: String,
    },
}

#[derive(Debug, Args)]
pub struct DbArgs {
    /// The migrations folder.
    #[arg(long, global = true, default_value = "migrations")]
    pub dir: PathBuf,
    /// lock_timeout each migration runs under (SQLite: busy_timeout); lock timeouts are retried.
    #[arg(long, global = true, default_value = "2s", value_parser = crate::plan::PlanDuration::parse)]
    pub lock_timeout: crate::plan::PlanDuration,
    /// How long a CONCURRENTLY statement may wait, in total, for older transactions to finish
    /// (PostgreSQL; 0 = no limit). Its wait for the table lock stays under --lock-timeout.
    #[arg(long, global = true, default_value = "1h", value_parser = crate::plan::PlanDuration::parse)]
    pub index_wait_timeout: crate::plan::PlanDuration,
    #[command(subcommand)]
    pub action: DbAction,
}

#[derive(Debug, Subcommand)]
pub enum DbAction {
    /// Write a new migration file revising the current head.
    New {
        /// What the migration does (also the file name's slug).
        #[arg(short, long)]
        message: String,
    },
    /// Apply migrations up to a revision: head (default), heads, REV (or a unique prefix), +N.
    Upgrade {
        /// Where to go: head, heads, REV (or a unique prefix), +N.
        #[arg(default_value = "head", allow_hyphen_values = true)]
        revision: String,
        /// Print the SQL instead of running it.
        #[arg(long, conflicts_with = "wait")]
        sql: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Undo migrations down to a revision: -N (default -1), REV (or a unique prefix), base.
    Downgrade {
        /// Where to go: -N, REV (or a unique prefix), base.
        #[arg(default_value = "-1", allow_hyphen_values = true)]
        revision: String,
        /// Print the SQL instead of running it.
        #[arg(long)]
        sql: bool,
    },
    /// Show the revision(s) the database is at.
    Current,
    /// List the revisions, newest first: `parent -> rev (head), message`.
    History,
    /// List the heads of the revision graph.
    Heads,
    /// Write a merge revision joining two (or more) branches.
    Merge {
        /// What the merge joins (also the file name's slug).
        #[arg(short, long)]
        message: String,
        /// The revisions to join (ids or unique prefixes).
        #[arg(required = true, num_args = 2..)]
        revisions: Vec<String>,
    },
    /// Record the database as being at a revision without running anything (for recovery).
    Stamp {
        /// A revision (or unique prefix), head, heads or base.
        revision: String,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every command and subcommand says what it does, and every argument and flag what it is.
    #[test]
    fn every_command_and_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let here = format!("{path} {}", cmd.get_name()).trim().to_string();
            if cmd.get_about().is_none() && cmd.get_name() != "help" && !path.is_empty() {
                missing.push(format!("`{here}` has no description"));
            }
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if arg.get_help().is_none() && !builtin {
                    missing.push(format!("`{here}`: `{}` has no help", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &here, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }
}
