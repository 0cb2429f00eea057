//! `phased db …`: Alembic-style versioned migrations. Resolve the folder, the database and the
//! revision asked for; refuse on drift before anything runs; then run under the `db:<dir>` lease.

use rand::Rng;

use super::args::{Cli, DbAction, DbArgs, Format};
use super::config::{self, AnyTarget, Open};
use super::exit;
use crate::db::{DatabaseUrl, DbError, Timeouts, VersionState};
use crate::engine::lease_wait::Wait;
use crate::engine::migrations::{
    self as engine, MigrateOptions, Migrated, Progress, Request, VersionError,
};
use crate::engine::Event;
use crate::migrations::{self, file, path, History, MigrationError, Spec};
use crate::plan::RetryPolicy;
use crate::with_target;

/// Runs a `db` subcommand and returns the exit code.
pub async fn execute(cli: &Cli, args: &DbArgs) -> u8 {
    let result = match &args.action {
        DbAction::New { message } => new(cli, args, message),
        DbAction::Merge { message, revisions } => merge(cli, args, message, revisions),
        DbAction::History => history(cli, args),
        DbAction::Heads => heads(cli, args),
        DbAction::Current => current(cli, args).await,
        DbAction::Upgrade {
            revision,
            sql,
            wait,
        } => migrate(cli, args, revision, *sql, Direction::Up, wait.wait()).await,
        DbAction::Downgrade { revision, sql } => {
            migrate(cli, args, revision, *sql, Direction::Down, None).await
        }
        DbAction::Stamp { revision } => stamp(cli, args, revision).await,
    };
    match result {
        Ok(()) => exit::OK,
        Err(err) => report(&err, cli.format),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Up,
    Down,
}

/// Why a `db` command stopped.
#[derive(Debug, thiserror::Error)]
enum DbCommandError {
    #[error(transparent)]
    Version(Box<VersionError>),
    /// The database URL is unusable.
    #[error("{0}")]
    Usage(String),
    /// Writing a new migration file failed.
    #[error("{0}")]
    Io(String),
    /// The database's versions do not fit the folder (a revision no file declares).
    #[error("{0}")]
    Unknown(String),
}

impl From<VersionError> for DbCommandError {
    fn from(e: VersionError) -> Self {
        DbCommandError::Version(Box::new(e))
    }
}

impl From<MigrationError> for DbCommandError {
    fn from(e: MigrationError) -> Self {
        VersionError::Migrations(e).into()
    }
}

impl From<DbError> for DbCommandError {
    fn from(e: DbError) -> Self {
        VersionError::Target(e).into()
    }
}

fn report(err: &DbCommandError, format: Format) -> u8 {
    let code = match err {
        DbCommandError::Usage(_) => exit::INVALID,
        DbCommandError::Version(v) => match **v {
            VersionError::Migrations(_) | VersionError::Destructive(_) => exit::INVALID,
            VersionError::LeaseHeld { .. } | VersionError::WaitTimedOut { .. } => exit::LOCKED,
            _ => exit::FAILED,
        },
        DbCommandError::Io(_) | DbCommandError::Unknown(_) => exit::FAILED,
    };
    if format == Format::Json {
        crate::outln!(
            "{}",
            serde_json::json!({"event": "error", "exit_code": code, "message": err.to_string()})
        );
    }
    let version = match err {
        DbCommandError::Version(v) => Some(&**v),
        _ => None,
    };
    match version {
        Some(VersionError::Drift(items)) => {
            eprintln!(
                "error: drift: applied migrations no longer match their files. Nothing was run."
            );
            for item in items {
                eprintln!("  - {item}\n    {}", item.advice());
            }
        }
        Some(VersionError::Failed {
            revision,
            direction,
            error,
            completed,
        }) => {
            eprintln!("error: {direction} of {revision} failed");
            eprintln!("  {}", error.to_string().replace('\n', "\n  "));
            if let Some(sql) = error.sql() {
                eprintln!("  while running:\n    {}", sql.replace('\n', "\n    "));
            }
            if !completed.is_empty() {
                eprintln!(
                    "  completed and recorded before it: {}",
                    completed.join(", ")
                );
            }
            eprintln!("  {revision} is not recorded. Fix the cause and run the command again; `phased db current` shows where the database stands.");
        }
        Some(VersionError::Destructive(refusals)) => {
            eprintln!(
                "error: startup mode (--wait) refuses destructive migrations. Nothing was run."
            );
            for r in refusals {
                eprintln!(
                    "  - revision {} ({}), rule {}:\n      {}\n    {}.",
                    r.revision,
                    r.file,
                    r.rule,
                    r.statement,
                    r.rule.why()
                );
            }
            eprintln!("  A boot must not run these by accident. When a revision is meant to do it (no running version of\n  the application uses what it changes any more), say so in its header:");
            let mut files: Vec<(&str, Vec<&str>)> = Vec::new();
            for r in refusals {
                match files.iter_mut().find(|(file, _)| *file == r.file) {
                    Some((_, rules)) if rules.contains(&r.rule.name()) => {}
                    Some((_, rules)) => rules.push(r.rule.name()),
                    None => files.push((&r.file, vec![r.rule.name()])),
                }
            }
            for (file, rules) in files {
                eprintln!("    {file}: -- destructive: {}", rules.join(", "));
            }
            eprintln!("  or apply it deliberately with `phased db upgrade` (without --wait).");
        }
        Some(VersionError::WaitTimedOut {
            key,
            holder,
            progress,
            waited,
        }) => {
            eprintln!(
                "error: gave up after waiting {} for the lease {key}",
                crate::plan::PlanDuration(*waited)
            );
            eprintln!("  still held by {holder}\n  its progress: {progress}");
            eprintln!("  Nothing was run. If the holder is working, wait longer (--wait-timeout); if it is stuck, stop it:\n  its lease goes with it.");
        }
        _ => eprintln!("error: {err}"),
    }
    code
}

fn load(args: &DbArgs) -> Result<History, DbCommandError> {
    Ok(migrations::load(&args.dir)?)
}

fn timeouts(args: &DbArgs) -> Timeouts {
    Timeouts {
        lock_timeout: args.lock_timeout.0,
        statement_timeout: std::time::Duration::ZERO,
        index_wait: args.index_wait_timeout.0,
    }
}

async fn open(cli: &Cli, mode: Open) -> Result<AnyTarget, DbCommandError> {
    let url = config::database_url(cli.database.as_deref()).map_err(DbCommandError::Usage)?;
    Ok(config::open(&url, "db", mode).await?)
}

/// `rev (head)` for a file head, `rev` otherwise; `<base>` when nothing is applied.
fn head_lines(history: &History, heads: &[String]) -> Vec<String> {
    if heads.is_empty() {
        return vec!["<base>".to_string()];
    }
    let file_heads = history.heads();
    heads
        .iter()
        .map(|h| {
            if file_heads.contains(&h.as_str()) {
                format!("{h} (head)")
            } else {
                h.clone()
            }
        })
        .collect()
}

fn now_utc() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn new_revision_id() -> String {
    let bytes: [u8; 6] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a new migration file and prints its path.
fn write_revision(
    cli: &Cli,
    args: &DbArgs,
    revises: &[String],
    message: &str,
) -> Result<(), DbCommandError> {
    let now = now_utc();
    let created = now
        .format(&time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
        ))
        .map_err(|e| DbCommandError::Io(e.to_string()))?;
    let stamp = now
        .format(&time::macros::format_description!(
            "[year][month][day]_[hour][minute]"
        ))
        .map_err(|e| DbCommandError::Io(e.to_string()))?;
    let revision = new_revision_id();
    let path = args.dir.join(file::file_name(&stamp, &revision, message));
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| DbCommandError::Io(format!("cannot create {}: {e}", args.dir.display())))?;
    let text = file::template(&revision, revises, message, &created);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
        .map_err(|e| DbCommandError::Io(format!("cannot write {}: {e}", path.display())))?;
    match cli.format {
        Format::Json => crate::outln!(
            "{}",
            serde_json::json!({"revision": revision, "revises": revises, "path": path.display().to_string()})
        ),
        Format::Human => crate::outln!(
            "created {} (revision {revision}, revises {})",
            path.display(),
            if revises.is_empty() {
                "<base>".to_string()
            } else {
                revises.join(", ")
            }
        ),
    }
    Ok(())
}

fn new(cli: &Cli, args: &DbArgs, message: &str) -> Result<(), DbCommandError> {
    let history = if args.dir.exists() {
        load(args)?
    } else {
        History::new(Vec::new())?
    };
    let revises: Vec<String> = match history.heads().as_slice() {
        [] => Vec::new(),
        [one] => vec![one.to_string()],
        many => {
            return Err(MigrationError::MultipleHeads {
                heads: many.iter().map(|s| s.to_string()).collect(),
            }
            .into())
        }
    };
    write_revision(cli, args, &revises, message)
}

fn merge(
    cli: &Cli,
    args: &DbArgs,
    message: &str,
    revisions: &[String],
) -> Result<(), DbCommandError> {
    let history = load(args)?;
    let mut revises: Vec<String> = Vec::new();
    for name in revisions {
        let id = history.resolve(name)?.revision.clone();
        if revises.contains(&id) {
            return Err(MigrationError::Usage(format!("{id} is named twice")).into());
        }
        revises.push(id);
    }
    for (i, a) in revises.iter().enumerate() {
        for b in &revises[i + 1..] {
            if history.ancestors_inclusive(b).contains(a)
                || history.ancestors_inclusive(a).contains(b)
            {
                return Err(MigrationError::Usage(format!(
                    "{a} and {b} are on the same branch (one revises the other): there is nothing to merge"
                ))
                .into());
            }
        }
    }
    write_revision(cli, args, &revises, message)
}

fn history(cli: &Cli, args: &DbArgs) -> Result<(), DbCommandError> {
    let history = load(args)?;
    let heads = history.heads();
    let mut rows = Vec::new();
    for m in history.in_order().rev() {
        let parents = if m.revises.is_empty() {
            "<base>".to_string()
        } else {
            m.revises.join(", ")
        };
        let mut marks = String::new();
        if heads.contains(&m.revision.as_str()) {
            marks.push_str(" (head)");
        }
        if history.children(&m.revision).len() > 1 {
            marks.push_str(" (branchpoint)");
        }
        if m.is_merge() {
            marks.push_str(" (mergepoint)");
        }
        match cli.format {
            Format::Json => rows.push(serde_json::json!({
                "revision": m.revision, "revises": m.revises, "message": m.message,
                "created": m.created, "transactional": m.transactional,
                "head": heads.contains(&m.revision.as_str()), "file": m.path.display().to_string(),
            })),
            Format::Human => crate::outln!("{parents} -> {}{marks}, {}", m.revision, m.message),
        }
    }
    if cli.format == Format::Json {
        crate::outln!("{}", serde_json::Value::Array(rows));
    }
    Ok(())
}

fn heads(cli: &Cli, args: &DbArgs) -> Result<(), DbCommandError> {
    let history = load(args)?;
    let heads = history.heads();
    match cli.format {
        Format::Json => crate::outln!("{}", serde_json::json!({ "heads": heads })),
        Format::Human => {
            for h in heads {
                let message = history.get(h).map(|m| m.message.as_str()).unwrap_or("");
                crate::outln!("{h} (head), {message}");
            }
        }
    }
    Ok(())
}

async fn current(cli: &Cli, args: &DbArgs) -> Result<(), DbCommandError> {
    let history = load(args)?;
    let mut target = open(cli, Open::Existing).await?;
    let state: VersionState = with_target!(&mut target, t => t.version_state().await)?;
    let heads = history.heads_of(&engine::applied(&state));
    let drift = engine::find_drift(&history, &state);
    // The database's own heads that no file declares: the folder cannot say where it is.
    let unknown: Vec<&String> = state
        .heads
        .iter()
        .filter(|h| !history.contains(h))
        .collect();
    match cli.format {
        Format::Json => crate::outln!(
            "{}",
            serde_json::json!({
                "heads": heads,
                "applied": state.applied,
                "drift": drift.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })
        ),
        Format::Human if unknown.is_empty() => {
            for line in head_lines(&history, &heads) {
                crate::outln!("{line}");
            }
            for item in &drift {
                eprintln!("warning: drift: {item}\n  {}", item.advice());
            }
        }
        Format::Human => {}
    }
    if !unknown.is_empty() {
        let revisions: Vec<&str> = unknown.iter().map(|r| r.as_str()).collect();
        return Err(DbCommandError::Unknown(format!(
            "the database is at revision {}, which no file in {} declares (deleted, renamed, or the wrong folder?); \
             put the file back, or record the revision the database really is at with `phased db stamp REV`",
            revisions.join(", "),
            args.dir.display()
        )));
    }
    Ok(())
}

async fn migrate(
    cli: &Cli,
    args: &DbArgs,
    revision: &str,
    sql_only: bool,
    direction: Direction,
    wait: Option<Wait>,
) -> Result<(), DbCommandError> {
    let history = load(args)?;
    let spec = Spec::parse(revision)?;
    let mut target = if sql_only
        && direction == Direction::Up
        && config::database_url(cli.database.as_deref())
            .is_ok_and(|url| config::is_missing_file(&url))
    {
        // `--sql` for a database that does not exist yet: the script from base, without
        // creating the file.
        config::open(&DatabaseUrl::Sqlite(":memory:".into()), "db", Open::Create).await?
    } else {
        // A new database starts with its first upgrade; going down needs one that is there.
        let mode = if direction == Direction::Up {
            Open::Create
        } else {
            Open::Existing
        };
        open(cli, mode).await?
    };
    let key = engine::lease_key(&args.dir);
    let timeouts = timeouts(args);
    let format = cli.format;
    let request = match direction {
        Direction::Up => Request::Upgrade(&spec),
        Direction::Down => Request::Downgrade(&spec),
    };
    with_target!(&mut target, t => {
        if sql_only {
            let state = engine::checked_state(t, &history).await?;
            let moves = engine::moves_for(&history, &state, request)?;
            let prepared = engine::prepare(&history, moves, t.dialect())?;
            crate::cli::out_text(&engine::sql_text(&prepared, t.dialect(), timeouts));
            Ok(())
        } else {
            let options = MigrateOptions {
                timeouts,
                retry: RetryPolicy::default(),
                wait,
                // `--wait` is startup mode: an init container or entrypoint must not drop a
                // column because a file was merged too early.
                refuse_destructive: wait.is_some(),
            };
            let mut shown = None;
            let migrated = engine::migrate(t, &history, &key, request, options, &mut |event| {
                print_progress(event, format, &mut shown)
            })
            .await?;
            print_migrated(&history, &migrated, format);
            Ok(())
        }
    })
}

/// What `upgrade`/`downgrade` report as they go: on stderr for people, NDJSON on stdout.
/// `shown` is the concurrent index build's phase (and whom it waits for) last printed, and when:
/// people get a line when it changes, and every 10s meanwhile.
fn print_progress(
    event: Progress<'_>,
    format: Format,
    shown: &mut Option<(String, std::time::Instant)>,
) {
    match (event, format) {
        (Progress::Index { prepared, progress }, Format::Human) => {
            let key = format!(
                "{}|{:?}",
                progress.phase,
                progress
                    .waiting_for
                    .iter()
                    .map(|w| w.pid)
                    .collect::<Vec<_>>()
            );
            let due = shown.as_ref().is_none_or(|(k, at)| {
                *k != key || at.elapsed() >= std::time::Duration::from_secs(10)
            });
            if due {
                eprintln!(
                    "  {} {}: {}",
                    prepared.migration.revision,
                    progress.command,
                    progress.summary()
                );
                for session in &progress.waiting_for {
                    eprintln!("      waiting for {session}");
                }
                *shown = Some((key, std::time::Instant::now()));
            }
        }
        (Progress::Index { prepared, progress }, Format::Json) => crate::outln!(
            "{}",
            serde_json::json!({"event": "index_progress", "revision": prepared.migration.revision,
                "progress": progress})
        ),
        (Progress::Waiting(w), Format::Human) => eprintln!(
            "waiting for {}: held by {}; {} (waited {} of {})",
            w.key,
            w.holder,
            w.progress,
            secs(w.waited_ms),
            crate::plan::PlanDuration::from_millis(w.timeout_ms)
        ),
        (Progress::Waiting(w), Format::Json) => json_event(&Event::LeaseWait {
            key: w.key.clone(),
            holder: w.holder.clone(),
            progress: w.progress.clone(),
            waited_ms: w.waited_ms,
            timeout_ms: w.timeout_ms,
        }),
        (Progress::Acquired { key, waited_ms }, Format::Human) => {
            eprintln!("took the lease {key} after waiting {}", secs(waited_ms))
        }
        (Progress::Acquired { key, waited_ms }, Format::Json) => {
            json_event(&Event::LeaseAcquired {
                key: key.to_string(),
                waited_ms,
            })
        }
        (Progress::Start(p), Format::Human) => eprintln!("Running {}", p.describe()),
        (Progress::Start(p), Format::Json) => crate::outln!(
            "{}",
            serde_json::json!({"event": "migration", "direction": p.step.direction.as_str(),
                "revision": p.migration.revision, "message": p.migration.message,
                "transactional": p.migration.transactional})
        ),
        (
            Progress::Retry {
                prepared,
                attempt,
                error,
                wait_ms,
            },
            Format::Human,
        ) => eprintln!(
            "  {} attempt {attempt} failed ({error}); retrying in {wait_ms}ms",
            prepared.migration.revision
        ),
        (
            Progress::Retry {
                prepared,
                attempt,
                error,
                wait_ms,
            },
            Format::Json,
        ) => crate::outln!(
            "{}",
            serde_json::json!({"event": "migration_retry", "revision": prepared.migration.revision,
                "attempt": attempt, "error": error.to_string(), "wait_ms": wait_ms})
        ),
    }
}

fn json_event(event: &Event) {
    if let Ok(line) = serde_json::to_string(event) {
        crate::outln!("{line}");
    }
}

fn secs(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

/// The end of `upgrade`/`downgrade`: the revision(s) reached, on stdout.
fn print_migrated(history: &History, migrated: &Migrated, format: Format) {
    match format {
        Format::Json => crate::outln!(
            "{}",
            serde_json::json!({"event": "done", "heads": migrated.heads})
        ),
        Format::Human => {
            if migrated.revisions.is_empty() {
                eprintln!("nothing to do");
            }
            for line in head_lines(history, &migrated.heads) {
                crate::outln!("{line}");
            }
        }
    }
}

async fn stamp(cli: &Cli, args: &DbArgs, revision: &str) -> Result<(), DbCommandError> {
    let history = load(args)?;
    let spec = Spec::parse(revision)?;
    let set = path::stamp(&history, &spec)?;
    let applied: Vec<(String, String)> = history
        .in_order()
        .filter(|m| set.contains(&m.revision))
        .map(|m| (m.revision.clone(), m.checksum.clone()))
        .collect();
    let heads = history.heads_of(&set);
    let mut target = open(cli, Open::Existing).await?;
    let key = engine::lease_key(&args.dir);
    with_target!(&mut target, t => {
        t.ensure_state().await?;
        if let Some(holder) = t.acquire_lease(&key).await? {
            return Err(VersionError::LeaseHeld { key, holder: holder.description }.into());
        }
        let result = t.stamp_versions(&applied, &heads).await;
        let released = t.release_lease(&key).await;
        result?;
        released?;
        Ok::<(), DbCommandError>(())
    })?;
    match cli.format {
        Format::Json => crate::outln!(
            "{}",
            serde_json::json!({"event": "stamped", "heads": heads})
        ),
        Format::Human => {
            for line in head_lines(&history, &heads) {
                crate::outln!("stamped {line}");
            }
        }
    }
    Ok(())
}
