//! Driving versioned migrations against a target: the drift check before anything runs, then
//! one migration at a time, each recorded with its checksum in its own transaction, retried on
//! lock timeouts like plan steps. Used by `phased db …` and by the plan's `migrations` step.

use std::collections::BTreeSet;

use std::time::Duration;

use super::lease_wait::{self, LeaseError, Wait, Waiting, Watch};
use super::lock_policy::Attempts;
use crate::db::versions_sql::script_text;
use crate::db::{Database, DbError, IndexProgress, MigrationRun, Timeouts, VersionState};
use crate::migrations::destructive::{self, Rule};
use crate::migrations::path::{self, applied_set};
use crate::migrations::{Direction, History, Migration, MigrationError, Move, Spec};
use crate::plan::RetryPolicy;

/// Why migrations did not run (or stopped).
#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    /// The files, or the revision asked for, are not usable.
    #[error(transparent)]
    Migrations(#[from] MigrationError),
    /// Applied migrations whose file changed or disappeared since.
    #[error("drift: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Drift(Vec<Drift>),
    /// Another runner holds the migrations' lease.
    #[error("another runner is applying the migrations in {key}: {holder}")]
    LeaseHeld { key: String, holder: String },
    /// Another runner still held the lease when the wait (startup mode) ran out.
    #[error(
        "gave up after waiting {} for the lease {key}: another runner still holds it ({holder}); {progress}",
        crate::plan::PlanDuration(*waited)
    )]
    WaitTimedOut {
        key: String,
        holder: String,
        progress: String,
        waited: Duration,
    },
    /// Startup mode refuses revisions with destructive statements they do not opt into.
    #[error("{}", Refusal::describe_all(.0))]
    Destructive(Vec<Refusal>),
    /// A migration failed; the ones before it stay applied and recorded.
    #[error("{direction} of {revision} failed: {error}")]
    Failed {
        revision: String,
        direction: &'static str,
        error: DbError,
        /// Moves completed before the failure, as `upgrade a1`.
        completed: Vec<String>,
    },
    /// The database failed outside a migration (state tables, lease).
    #[error(transparent)]
    Target(#[from] DbError),
}

impl From<LeaseError> for VersionError {
    fn from(e: LeaseError) -> Self {
        match e {
            LeaseError::Held { key, holder } => VersionError::LeaseHeld { key, holder },
            LeaseError::TimedOut {
                key,
                holder,
                progress,
                waited,
            } => VersionError::WaitTimedOut {
                key,
                holder,
                progress,
                waited,
            },
            LeaseError::Db(e) => VersionError::Target(e),
            interrupted @ LeaseError::Interrupted { .. } => {
                VersionError::Target(DbError::Unexpected(interrupted.to_string()))
            }
        }
    }
}

/// A destructive statement in a revision that does not opt into its rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub revision: String,
    pub file: String,
    pub rule: Rule,
    pub statement: String,
}

impl Refusal {
    fn describe_all(all: &[Refusal]) -> String {
        all.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "revision {} ({}) is refused at startup by rule {}: `{}` — {}. If it is meant, add `-- destructive: {}` to its header",
            self.revision,
            self.file,
            self.rule,
            self.statement,
            self.rule.why(),
            self.rule
        )
    }
}

/// The startup safety rule: every destructive statement (see `migrations::destructive`) of the
/// upgrades about to run whose revision does not name its rule in `-- destructive:`.
pub fn refusals(prepared: &[Prepared<'_>]) -> Vec<Refusal> {
    prepared
        .iter()
        .filter(|p| p.step.direction == Direction::Up)
        .flat_map(|p| {
            destructive::check(p.script)
                .into_iter()
                .filter(|f| !p.migration.destructive.contains(&f.rule))
                .map(|f| Refusal {
                    revision: p.migration.revision.clone(),
                    file: p.migration.path.display().to_string(),
                    rule: f.rule,
                    statement: f.statement,
                })
        })
        .collect()
}

/// An applied migration that no longer matches the folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    /// The file was edited after the migration was applied.
    Edited { revision: String, file: String },
    /// No file declares the applied revision any more.
    Missing { revision: String },
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Drift::Edited { revision, file } => write!(
                f,
                "revision {revision} was applied, but {file} has been edited since (its checksum changed)"
            ),
            Drift::Missing { revision } => write!(
                f,
                "revision {revision} is applied, but no file in the folder declares it any more"
            ),
        }
    }
}

/// Applied migrations whose file changed or disappeared, in history order.
pub fn find_drift(history: &History, state: &VersionState) -> Vec<Drift> {
    let mut out = Vec::new();
    for applied in &state.applied {
        match history.get(&applied.revision) {
            None => out.push(Drift::Missing {
                revision: applied.revision.clone(),
            }),
            Some(m) if m.checksum != applied.checksum => out.push(Drift::Edited {
                revision: applied.revision.clone(),
                file: m.path.display().to_string(),
            }),
            Some(_) => {}
        }
    }
    out
}

impl Drift {
    /// What to do about it.
    pub fn advice(&self) -> String {
        match self {
            Drift::Edited { revision, file } => format!(
                "restore {file} as it was when {revision} was applied and put the change in a new revision (`phased db new`); \
                 if the edit changes nothing (a comment), `phased db stamp` records its new checksum"
            ),
            Drift::Missing { revision } => format!(
                "put the file of {revision} back (from version control), or check that --dir names the right folder; \
                 if the database should not be at {revision}, `phased db stamp REV` records the revision it is really at"
            ),
        }
    }
}

/// The applied revisions as a set.
pub fn applied(state: &VersionState) -> BTreeSet<String> {
    applied_set(state.applied.iter().map(|a| a.revision.as_str()))
}

/// Reads the version state and refuses on drift.
pub async fn checked_state<T: Database>(
    target: &mut T,
    history: &History,
) -> Result<VersionState, VersionError> {
    let state = target.version_state().await?;
    let drift = find_drift(history, &state);
    if !drift.is_empty() {
        return Err(VersionError::Drift(drift));
    }
    Ok(state)
}

/// What a command asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    Upgrade(&'a Spec),
    Downgrade(&'a Spec),
}

/// The moves a request needs from the given state.
pub fn moves_for(
    history: &History,
    state: &VersionState,
    request: Request<'_>,
) -> Result<Vec<Move>, MigrationError> {
    let applied = applied(state);
    match request {
        Request::Upgrade(spec) => path::upgrade(history, &applied, spec),
        Request::Downgrade(spec) => path::downgrade(history, &applied, spec),
    }
}

/// One move with everything needed to run it.
pub struct Prepared<'h> {
    pub migration: &'h Migration,
    pub step: Move,
    pub script: &'h str,
}

impl Prepared<'_> {
    pub fn run(&self, timeouts: Timeouts) -> MigrationRun<'_> {
        MigrationRun {
            revision: &self.migration.revision,
            checksum: &self.migration.checksum,
            up: self.step.direction == Direction::Up,
            script: self.script,
            transactional: self.migration.transactional,
            heads_after: &self.step.heads_after,
            timeouts,
            step: None,
        }
    }

    /// `Running upgrade bb02 -> cc03, add index` (Alembic's wording).
    pub fn describe(&self) -> String {
        let m = self.migration;
        let parents = if m.revises.is_empty() {
            "<base>".to_string()
        } else {
            m.revises.join(", ")
        };
        let arrow = match self.step.direction {
            Direction::Up => format!("{parents} -> {}", m.revision),
            Direction::Down => format!("{} -> {parents}", m.revision),
        };
        let mut text = format!("{} {arrow}, {}", self.step.direction.as_str(), m.message);
        if !m.transactional {
            text.push_str(" (not in a transaction)");
        }
        text
    }
}

/// Looks up every move's SQL for the dialect before anything runs, so a missing down section
/// is found before the first migration is undone.
pub fn prepare<'h>(
    history: &'h History,
    moves: Vec<Move>,
    dialect: crate::db::Dialect,
) -> Result<Vec<Prepared<'h>>, MigrationError> {
    moves
        .into_iter()
        .map(|step| {
            let migration = history
                .get(&step.revision)
                .ok_or_else(|| MigrationError::UnknownRevision(step.revision.clone()))?;
            let script = match step.direction {
                Direction::Up => migration.up.for_dialect(dialect).ok_or_else(|| {
                    MigrationError::MissingSql(format!(
                        "revision {} has no `-- migrate:up` SQL for {} ({})",
                        migration.revision,
                        dialect.as_str(),
                        migration.path.display()
                    ))
                })?,
                Direction::Down => migration
                    .down
                    .as_ref()
                    .ok_or_else(|| {
                        MigrationError::MissingSql(format!(
                            "revision {} has no `-- migrate:down` section, so it cannot be undone ({})",
                            migration.revision,
                            migration.path.display()
                        ))
                    })?
                    .for_dialect(dialect)
                    .ok_or_else(|| {
                        MigrationError::MissingSql(format!(
                            "revision {} has no `-- migrate:down` SQL for {} ({})",
                            migration.revision,
                            dialect.as_str(),
                            migration.path.display()
                        ))
                    })?,
            };
            Ok(Prepared {
                migration,
                step,
                script,
            })
        })
        .collect()
}

/// The SQL the moves would run, for `--sql`.
pub fn sql_text(
    prepared: &[Prepared<'_>],
    dialect: crate::db::Dialect,
    timeouts: Timeouts,
) -> String {
    let mut out = String::new();
    for p in prepared {
        out.push_str(&format!("-- Running {}\n", p.describe()));
        out.push_str(&script_text(dialect, &p.run(timeouts)));
        out.push('\n');
    }
    out
}

/// Runs prepared moves in order. With a retry policy each migration is retried on lock
/// timeouts; without one the first error is returned as is (the plan step retries itself).
/// `step` is the plan step running them, whose state records a concurrent build's progress.
pub async fn apply<T: Database>(
    target: &mut T,
    prepared: &[Prepared<'_>],
    timeouts: Timeouts,
    retry: Option<&RetryPolicy>,
    step: Option<&crate::db::StepKey>,
    on_event: &mut dyn FnMut(Progress<'_>),
) -> Result<(), VersionError> {
    let mut completed = Vec::new();
    for p in prepared {
        on_event(Progress::Start(p));
        // Without a policy the first error is returned as is: the plan step that runs these
        // retries itself, under the same policy.
        let mut attempts = Attempts::new(retry.copied().unwrap_or(RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        }));
        loop {
            let attempt = attempts.begin();
            // Look before queueing (`phased db`, the library, a rollback): not while a session
            // holds a lock on one of the migration's tables that it would queue behind. A plan
            // step (no policy here) was looked at by the runner, for all its migrations at once.
            if retry.is_some() && target.recorder().is_none() {
                let needed = script_locks(p.script, target.dialect());
                if let Some(blocked) = super::lock_policy::look(target, &needed).await? {
                    let error = DbError::Unexpected(blocked.message());
                    if let Some(wait) = attempts.wait() {
                        on_event(Progress::Retry {
                            prepared: p,
                            attempt,
                            error: &error,
                            wait_ms: super::records::millis(wait),
                        });
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    return Err(VersionError::Failed {
                        revision: p.migration.revision.clone(),
                        direction: p.step.direction.as_str(),
                        error: DbError::Unexpected(format!(
                            "{}{}",
                            blocked.message(),
                            attempts.gave_up()
                        )),
                        completed,
                    });
                }
            }
            let run = MigrationRun {
                step,
                ..p.run(timeouts)
            };
            let mut progress = |index: &IndexProgress| {
                on_event(Progress::Index {
                    prepared: p,
                    progress: index,
                })
            };
            match target.run_migration(&run, &mut progress).await {
                Ok(()) => break,
                Err(error) => {
                    if let Some(wait) = attempts.retry_after(&error) {
                        on_event(Progress::Retry {
                            prepared: p,
                            attempt,
                            error: &error,
                            wait_ms: super::records::millis(wait),
                        });
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    return Err(VersionError::Failed {
                        revision: p.migration.revision.clone(),
                        direction: p.step.direction.as_str(),
                        error,
                        completed,
                    });
                }
            }
        }
        completed.push(format!(
            "{} {}",
            p.step.direction.as_str(),
            p.migration.revision
        ));
    }
    Ok(())
}

/// What [`apply`] and [`migrate`] report as they go.
pub enum Progress<'a> {
    /// Another runner holds the lease; this one waits (startup mode).
    Waiting(&'a Waiting),
    /// The lease was taken after waiting this long.
    Acquired {
        key: &'a str,
        waited_ms: u64,
    },
    Start(&'a Prepared<'a>),
    Retry {
        prepared: &'a Prepared<'a>,
        attempt: u32,
        error: &'a DbError,
        wait_ms: u64,
    },
    /// Where a concurrent index build of a `transactional: false` migration stands.
    Index {
        prepared: &'a Prepared<'a>,
        progress: &'a IndexProgress,
    },
}

/// How [`migrate`] runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct MigrateOptions {
    pub timeouts: Timeouts,
    /// Each migration retried on lock timeouts under this policy.
    pub retry: RetryPolicy,
    /// Wait for a lease another runner holds instead of failing at once.
    pub wait: Option<Wait>,
    /// Startup mode's safety rule: refuse revisions with destructive statements they do not
    /// opt into, before anything runs.
    pub refuse_destructive: bool,
}

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// The revisions applied (or undone), in order.
    pub revisions: Vec<String>,
    /// The heads of the folder the database is at afterwards.
    pub heads: Vec<String>,
    /// How long it waited for the lease.
    pub waited: Duration,
}

/// `phased db upgrade|downgrade` and the library's `Migrator::upgrade`: takes the folder's
/// lease (waiting for it in startup mode), reads the version state once it has it (so a runner
/// that waited finds the work done), refuses on drift — and in startup mode on destructive
/// revisions — before anything runs, then applies the moves one by one.
pub async fn migrate<T: Database>(
    target: &mut T,
    history: &History,
    key: &str,
    request: Request<'_>,
    options: MigrateOptions,
    on_event: &mut dyn FnMut(Progress<'_>),
) -> Result<Migrated, VersionError> {
    lease_wait::ensure_state(target, options.wait).await?;
    let mut reported = false;
    let waited = lease_wait::acquire(
        target,
        key,
        options.wait,
        Watch::Migrations(history),
        None,
        &mut |w| {
            reported = true;
            on_event(Progress::Waiting(w));
        },
    )
    .await?;
    if reported {
        on_event(Progress::Acquired {
            key,
            waited_ms: super::records::millis(waited),
        });
    }
    let result = migrate_locked(target, history, request, options, on_event).await;
    let released = target.release_lease(key).await;
    let revisions = result?;
    released?;
    let state = target.version_state().await?;
    Ok(Migrated {
        revisions,
        heads: history.heads_of(&applied(&state)),
        waited,
    })
}

async fn migrate_locked<T: Database>(
    target: &mut T,
    history: &History,
    request: Request<'_>,
    options: MigrateOptions,
    on_event: &mut dyn FnMut(Progress<'_>),
) -> Result<Vec<String>, VersionError> {
    let state = checked_state(target, history).await?;
    let moves = moves_for(history, &state, request)?;
    let prepared = prepare(history, moves, target.dialect())?;
    if options.refuse_destructive {
        let refused = refusals(&prepared);
        if !refused.is_empty() {
            return Err(VersionError::Destructive(refused));
        }
    }
    apply(
        target,
        &prepared,
        options.timeouts,
        Some(&options.retry),
        None,
        on_event,
    )
    .await?;
    Ok(prepared
        .iter()
        .map(|p| p.migration.revision.clone())
        .collect())
}

/// The single-runner lease of a migrations folder: `db:` and the folder's name, so that
/// `phased db upgrade --dir migrations` and a plan's `migrations: { dir: ../migrations }` (or an
/// absolute path) exclude each other.
pub fn lease_key(dir: &std::path::Path) -> String {
    let name = dir
        .components()
        .rev()
        .find_map(|c| match c {
            std::path::Component::Normal(name) => Some(name.to_string_lossy().into_owned()),
            _ => None,
        })
        .unwrap_or_else(|| dir.display().to_string());
    format!("db:{name}")
}

fn step_error(e: impl std::fmt::Display) -> DbError {
    DbError::Unexpected(e.to_string())
}

/// The plan's `migrations` step: records the heads it starts from in the step's checkpoint (on
/// its first attempt only, so retries and resumes keep the original), then upgrades to `to`.
/// A failed migration's error is returned as is, so the runner retries lock timeouts. In
/// startup mode (`phased run --wait`) it waits for the folder's lease, and refuses revisions
/// with destructive statements they do not opt into.
#[allow(clippy::too_many_arguments)]
pub async fn run_step<T: Database>(
    target: &mut T,
    base_dir: &std::path::Path,
    step: &crate::plan::Migrations,
    key: &crate::db::StepKey,
    checkpoint: &mut Option<String>,
    timeouts: Timeouts,
    wait: Option<Wait>,
    refuse_destructive: bool,
    interrupt: Option<&super::interrupt::Interrupt>,
    on_wait: &mut dyn FnMut(&Waiting),
    progress: &mut dyn FnMut(&IndexProgress),
) -> Result<(), DbError> {
    let key_name = lease_key(&step.dir);
    let history = crate::migrations::load(&base_dir.join(&step.dir)).map_err(step_error)?;
    match lease_wait::acquire(
        target,
        &key_name,
        wait,
        Watch::Migrations(&history),
        interrupt,
        on_wait,
    )
    .await
    {
        Ok(_) => {}
        Err(LeaseError::Db(e)) => return Err(e),
        Err(other) => return Err(step_error(VersionError::from(other))),
    }
    let result = run_step_locked(
        target,
        &history,
        step,
        key,
        checkpoint,
        timeouts,
        refuse_destructive,
        progress,
    )
    .await;
    let released = target.release_lease(&key_name).await;
    result?;
    released
}

#[allow(clippy::too_many_arguments)]
async fn run_step_locked<T: Database>(
    target: &mut T,
    history: &History,
    step: &crate::plan::Migrations,
    key: &crate::db::StepKey,
    checkpoint: &mut Option<String>,
    timeouts: Timeouts,
    refuse_destructive: bool,
    progress: &mut dyn FnMut(&IndexProgress),
) -> Result<(), DbError> {
    let spec = Spec::parse(&step.to).map_err(step_error)?;
    let state = checked_state(target, history).await.map_err(step_error)?;
    let moves = moves_for(history, &state, Request::Upgrade(&spec)).map_err(step_error)?;
    let prepared = prepare(history, moves, target.dialect()).map_err(step_error)?;
    if refuse_destructive {
        let refused = refusals(&prepared);
        if !refused.is_empty() {
            return Err(step_error(VersionError::Destructive(refused)));
        }
    }
    if checkpoint.is_none() {
        let before = history.heads_of(&applied(&state));
        let text = serde_json::to_string(&before).map_err(step_error)?;
        target.set_checkpoint(key, Some(&text)).await?;
        *checkpoint = Some(text);
    }
    for p in &prepared {
        match target.recorder() {
            Some(recorder) => recorder.note(format!("Running {}", p.describe())),
            None => tracing::info!("running {}", p.describe()),
        }
    }
    let mut on_event = |event: Progress<'_>| {
        if let Progress::Index { progress: p, .. } = event {
            progress(p)
        }
    };
    match apply(target, &prepared, timeouts, None, Some(key), &mut on_event).await {
        Ok(()) => target.finish_step(key).await,
        Err(VersionError::Failed { error, .. }) | Err(VersionError::Target(error)) => Err(error),
        Err(other) => Err(step_error(other)),
    }
}

/// The table locks the migrations a `migrations` step would apply now take on PostgreSQL (the
/// strongest per table), read from the parse of their SQL (`plan::lint::locks`): what the
/// runner looks for before queueing, as for every other step. Empty on SQLite, and when the
/// folder, `to` or the version state cannot be read (the step itself then fails saying why).
pub async fn pending_locks<T: Database>(
    target: &mut T,
    base_dir: &std::path::Path,
    step: &crate::plan::Migrations,
) -> Vec<crate::db::TableLock> {
    if target.dialect() != crate::db::Dialect::Postgres {
        return Vec::new();
    }
    let Ok(history) = crate::migrations::load(&base_dir.join(&step.dir)) else {
        return Vec::new();
    };
    let Ok(spec) = Spec::parse(&step.to) else {
        return Vec::new();
    };
    let Ok(state) = checked_state(target, &history).await else {
        return Vec::new();
    };
    let Ok(moves) = moves_for(&history, &state, Request::Upgrade(&spec)) else {
        return Vec::new();
    };
    let Ok(prepared) = prepare(&history, moves, target.dialect()) else {
        return Vec::new();
    };
    let all: String = prepared
        .iter()
        .map(|p| p.script)
        .collect::<Vec<_>>()
        .join(";\n");
    script_locks(&all, target.dialect())
}

/// The strongest lock per table a migration script takes on PostgreSQL, from its parse (none
/// on SQLite, whose locks are the database's).
fn script_locks(script: &str, dialect: crate::db::Dialect) -> Vec<crate::db::TableLock> {
    use crate::plan::lint::locks;
    if dialect != crate::db::Dialect::Postgres {
        return Vec::new();
    }
    locks::strongest(&locks::locks(script))
        .into_iter()
        .filter_map(|(table, mode)| {
            Some(crate::db::TableLock {
                table: crate::ops::TableName::new(table).ok()?,
                mode,
            })
        })
        .collect()
}

/// The heads a `migrations` step started from, as recorded in its checkpoint.
pub fn heads_before(checkpoint: Option<&str>) -> Result<Vec<String>, DbError> {
    let text = checkpoint.ok_or_else(|| {
        step_error("the migrations step has no recorded starting revision, so it cannot be rolled back automatically; use `phased db downgrade`")
    })?;
    serde_json::from_str(text).map_err(|e| {
        step_error(format!(
            "the migrations step's checkpoint `{text}` is unreadable: {e}"
        ))
    })
}

/// Rolls a `migrations` step back: downgrades to the heads recorded before it ran.
pub async fn rollback_step<T: Database>(
    target: &mut T,
    base_dir: &std::path::Path,
    step: &crate::plan::Migrations,
    checkpoint: Option<&str>,
    timeouts: Timeouts,
    retry: Option<&RetryPolicy>,
) -> Result<(), VersionError> {
    let before = heads_before(checkpoint)?;
    let history = crate::migrations::load(&base_dir.join(&step.dir))?;
    let key = lease_key(&step.dir);
    if let Some(holder) = target.acquire_lease(&key).await? {
        return Err(VersionError::LeaseHeld {
            key,
            holder: holder.description,
        });
    }
    let result = async {
        let state = checked_state(target, &history).await?;
        let keep = path::closure(&history, &before);
        let moves = path::down_to(&history, &applied(&state), &keep);
        let prepared = prepare(&history, moves, target.dialect())?;
        for p in &prepared {
            tracing::info!("running {}", p.describe());
        }
        apply(target, &prepared, timeouts, retry, None, &mut |_| {}).await
    }
    .await;
    let released = target.release_lease(&key).await;
    result?;
    Ok(released?)
}

#[cfg(test)]
mod tests {
    use super::lease_key;
    use std::path::Path;

    #[test]
    fn the_lease_is_keyed_by_the_folder_name() {
        assert_eq!(lease_key(Path::new("migrations")), "db:migrations");
        assert_eq!(lease_key(Path::new("../migrations/")), "db:migrations");
        assert_eq!(lease_key(Path::new("/srv/app/migrations")), "db:migrations");
        assert_eq!(lease_key(Path::new("db/versions")), "db:versions");
    }
}
