//! Resolving flags, environment and defaults into what a command runs against.

use std::io::IsTerminal;
use std::path::Path;

use super::exit;
use super::Cli;

use crate::db::{DatabaseUrl, DbError};
use crate::plan::{self, LoadedPlan, PlanReport};

/// The default database: an SQLite file in the current folder.
pub const DEFAULT_DATABASE: &str = "sqlite://phased.db";

/// The database URL from `--database`, `DATABASE_URL` (clap reads both), or the default.
pub fn database_url(flag: Option<&str>) -> Result<DatabaseUrl, String> {
    DatabaseUrl::parse(flag.unwrap_or(DEFAULT_DATABASE))
}

/// Loads a plan, or the rendered report of what is wrong with it.
pub fn load_plan(path: &Path) -> Result<LoadedPlan, PlanReport> {
    plan::load(path)
}

pub use crate::db::open::{is_missing_file, recording, AnyTarget, Open};

/// Opens the target; every PostgreSQL connection is named `phased/<plan>`.
pub async fn open(url: &DatabaseUrl, plan_id: &str, mode: Open) -> Result<AnyTarget, DbError> {
    crate::db::open::open(url, &format!("phased/{plan_id}"), mode).await
}

/// Colour on stderr: only on a terminal, and not under `NO_COLOR`.
pub fn color() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Loads the plan and opens the database, or prints why not and returns the exit code.
pub async fn prepare(
    cli: &Cli,
    path: &Path,
    mode: Open,
) -> Result<(LoadedPlan, DatabaseUrl, AnyTarget), u8> {
    let loaded = load_plan(path).map_err(|report| {
        eprint!("{}", report.render_for(color()));
        exit::INVALID
    })?;
    let url = database_url(cli.database.as_deref()).map_err(|e| {
        eprintln!("error: {e}");
        exit::INVALID
    })?;
    let target = open(&url, loaded.plan.id(), mode).await.map_err(|e| {
        eprintln!("error: {e}");
        exit::FAILED
    })?;
    Ok((loaded, url, target))
}
