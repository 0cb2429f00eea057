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

/// Colour on stderr (logs, rendered plan errors): `CLICOLOR_FORCE` (not `0`) forces it,
/// `NO_COLOR` (not empty) turns it off, and otherwise it is on only on a terminal — never in a
/// pipe or a CI log.
pub fn color() -> bool {
    color_from(
        std::env::var_os("CLICOLOR_FORCE").as_deref(),
        std::env::var_os("NO_COLOR").as_deref(),
        std::io::stderr().is_terminal(),
    )
}

fn color_from(
    force: Option<&std::ffi::OsStr>,
    no_color: Option<&std::ffi::OsStr>,
    terminal: bool,
) -> bool {
    if force.is_some_and(|v| !v.is_empty() && v != "0") {
        return true;
    }
    if no_color.is_some_and(|v| !v.is_empty()) {
        return false;
    }
    terminal
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

#[cfg(test)]
mod tests {
    use super::color_from;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_unless_forced_or_refused() {
        let yes = Some(OsStr::new("1"));
        assert!(color_from(None, None, true));
        assert!(!color_from(None, None, false));
        assert!(!color_from(None, yes, true));
        assert!(!color_from(Some(OsStr::new("0")), None, false));
        assert!(color_from(yes, yes, false));
        assert!(color_from(None, Some(OsStr::new("")), true));
    }
}
