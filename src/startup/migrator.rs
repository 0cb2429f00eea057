//! [`Migrator`]: an application applies its versioned migrations when it starts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Error;
use crate::db::open::{open, Open};
use crate::db::{DatabaseUrl, Timeouts};
use crate::engine::lease_wait::Wait;
use crate::engine::migrations::{self as engine, MigrateOptions, Progress, Request};
use crate::migrations::{file, History, Spec};
use crate::plan::RetryPolicy;

/// The name PostgreSQL sessions of the library carry (`application_name`), so a waiting
/// replica's report names who holds the lease.
const APPLICATION: &str = "phased/startup";

/// Applies a folder of versioned migrations (the files `phased db` manages, see
/// docs/migrations.md) when an application starts, safely when many replicas start at once.
///
/// - **One migrator at a time.** Only one process applies the folder; the others wait for its
///   lease (a PostgreSQL advisory lock, an SQLite lease row), reporting the holder's progress
///   as `tracing` events, then find the work done and return. A holder that dies frees the
///   lease. The wait is bounded: [`Migrator::wait_timeout`], 10 minutes by default. The lease is
///   the one `phased db upgrade --dir <folder>` takes (`db:<folder name>`), so an application
///   and an operator's command never interleave either.
/// - **Safe by default.** A revision with a destructive statement (a drop, a rename, a type
///   change, `SET NOT NULL` without a validated check…) is refused before anything runs,
///   unless its header opts into that rule: `-- destructive: drop-column`. A boot must never
///   drop a column because a file was merged too early.
/// - Drift (an applied file edited since) is refused before anything runs; each migration is
///   applied and recorded in one transaction (unless `-- transactional: false`) under a
///   lock timeout, and lock timeouts are retried with backoff.
///
/// It installs no `tracing` subscriber and prints nothing: progress goes out as `tracing`
/// events (target `phased`), results and failures as return values ([`Error`]).
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let migrations = dir.path().join("migrations");
/// std::fs::create_dir(&migrations)?;
/// std::fs::write(
///     migrations.join("0001_orders.sql"),
///     "-- revision: a1\n-- revises: none\n-- message: orders\n\n\
///      -- migrate:up\nCREATE TABLE orders (id bigint PRIMARY KEY, total bigint NOT NULL);\n\n\
///      -- migrate:down\nDROP TABLE orders;\n",
/// )?;
/// let url = format!("sqlite://{}", dir.path().join("app.db").display());
///
/// let migrator = phased::Migrator::from_dir(&migrations)?;
/// let upgraded = migrator.upgrade(&url, "head").await?;
/// assert_eq!(upgraded.applied, ["a1"]);
///
/// // The next start finds nothing to do.
/// assert!(migrator.upgrade(&url, "head").await?.applied.is_empty());
/// let current = migrator.current(&url).await?;
/// assert_eq!(current.heads, ["a1"]);
/// assert!(current.is_up_to_date());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Migrator {
    history: History,
    /// The folder's name: the lease is `db:<name>`.
    name: String,
    wait_timeout: Duration,
    lock_timeout: Duration,
    index_wait_timeout: Duration,
}

/// What [`Migrator::upgrade`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Upgraded {
    /// The revisions this call applied, in order; empty when another process had applied
    /// them already (or nothing was missing).
    pub applied: Vec<String>,
    /// The revision(s) the database is at now.
    pub heads: Vec<String>,
    /// How long it waited for another process's lease.
    pub waited: Duration,
}

/// Where a database stands against a [`Migrator`]'s revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Current {
    /// The revision(s) the database is at; empty at base.
    pub heads: Vec<String>,
    /// Every applied revision, oldest first.
    pub applied: Vec<String>,
    /// The migrator's revisions that are not applied, in the order `upgrade` would apply them.
    pub pending: Vec<String>,
    /// Applied revisions whose file changed or disappeared since (`upgrade` refuses them).
    pub drift: Vec<String>,
}

impl Current {
    /// Nothing pending and no drift.
    pub fn is_up_to_date(&self) -> bool {
        self.pending.is_empty() && self.drift.is_empty()
    }
}

impl Migrator {
    /// The migrations in a folder (every `*.sql` file directly in it), read now. The lease is
    /// named after the folder: `db:migrations` for `./migrations` or `/srv/app/migrations`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, Error> {
        let dir = dir.as_ref();
        let history = crate::migrations::load(dir)?;
        let name = engine::lease_key(dir).trim_start_matches("db:").to_string();
        Ok(Self::new(history, name))
    }

    /// Migrations given as `(file name, text)` pairs, for applications that carry them some
    /// other way than [`embed_migrations!`](crate::embed_migrations). `folder` names the lease
    /// (`db:<folder>`, as for a folder of that name); files whose name does not end in `.sql`
    /// are ignored.
    pub fn from_files<I, N, T>(folder: &str, files: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = (N, T)>,
        N: AsRef<str>,
        T: AsRef<str>,
    {
        let mut migrations = Vec::new();
        let mut files: Vec<(String, String)> = files
            .into_iter()
            .map(|(n, t)| (n.as_ref().to_string(), t.as_ref().to_string()))
            .filter(|(n, _)| n.ends_with(".sql"))
            .collect();
        files.sort();
        for (name, text) in files {
            let path = PathBuf::from(folder).join(&name);
            migrations.push(file::parse(&path, &text)?);
        }
        Ok(Self::new(History::new(migrations)?, folder.to_string()))
    }

    /// What [`embed_migrations!`](crate::embed_migrations) expands to. Not API.
    #[doc(hidden)]
    pub fn __from_include_dir(path: &str, dir: &include_dir::Dir<'static>) -> Result<Self, Error> {
        let folder = engine::lease_key(Path::new(path))
            .trim_start_matches("db:")
            .to_string();
        let mut files = Vec::new();
        for file in dir.files() {
            let name = file.path().display().to_string();
            let text = file.contents_utf8().ok_or_else(|| {
                Error::Migrations(format!("{folder}/{name}: the file is not UTF-8"))
            })?;
            files.push((name, text));
        }
        Self::from_files(&folder, files)
    }

    fn new(history: History, name: String) -> Self {
        Self {
            history,
            name,
            wait_timeout: Wait::DEFAULT_TIMEOUT,
            lock_timeout: Duration::from_secs(2),
            index_wait_timeout: Duration::from_secs(3600),
        }
    }

    /// How long `upgrade` waits for another process that holds the lease (10 minutes by
    /// default). `Duration::ZERO` does not wait: a held lease is [`Error::LeaseHeld`] at once.
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.wait_timeout = timeout;
        self
    }

    /// The `lock_timeout` each migration runs under on PostgreSQL, and the busy timeout on
    /// SQLite (2 seconds by default). A migration that times out on a lock is retried with
    /// backoff, up to 10 attempts.
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// How long a `CREATE/DROP INDEX CONCURRENTLY` of a `transactional: false` migration may
    /// wait, in total, for older transactions to finish (PostgreSQL; 1 hour by default,
    /// `Duration::ZERO` for no limit). Its wait for the table's lock stays under `lock_timeout`.
    pub fn index_wait_timeout(mut self, timeout: Duration) -> Self {
        self.index_wait_timeout = timeout;
        self
    }

    /// The heads of the migrator's revisions: what `upgrade(url, "head")` brings a database to.
    pub fn heads(&self) -> Vec<String> {
        self.history
            .heads()
            .into_iter()
            .map(str::to_string)
            .collect()
    }

    /// Applies the missing revisions up to `target` — `head`, `heads`, a revision id (or a
    /// unique prefix), or `+N` — on the database at `url` (`postgres://…` or `sqlite://path`;
    /// a missing SQLite file is created).
    ///
    /// When another process holds the lease, waits for it (see [`Migrator::wait_timeout`]) and
    /// then reads the state again, usually to find nothing left to do. Refuses, before running
    /// anything: drift, and revisions with destructive statements they do not opt into.
    pub async fn upgrade(&self, url: &str, target: &str) -> Result<Upgraded, Error> {
        let url = DatabaseUrl::parse(url).map_err(Error::Url)?;
        let spec = Spec::parse(target)?;
        let mut db = open(&url, APPLICATION, Open::Create).await?;
        let options = MigrateOptions {
            timeouts: Timeouts {
                lock_timeout: self.lock_timeout,
                statement_timeout: Duration::ZERO,
                index_wait: self.index_wait_timeout,
            },
            retry: RetryPolicy::default(),
            wait: (!self.wait_timeout.is_zero()).then_some(Wait {
                timeout: self.wait_timeout,
            }),
            refuse_destructive: true,
        };
        let key = format!("db:{}", self.name);
        let database = url.redacted();
        tracing::debug!(%database, lease = %key, "upgrading to {target}");
        let migrated = crate::with_target!(&mut db, t => engine::migrate(
            t,
            &self.history,
            &key,
            Request::Upgrade(&spec),
            options,
            &mut trace_progress,
        )
        .await)
        .map_err(Error::from)?;
        tracing::info!(
            %database,
            applied = migrated.revisions.len(),
            heads = %migrated.heads.join(", "),
            "migrations up to date"
        );
        Ok(Upgraded {
            applied: migrated.revisions,
            heads: migrated.heads,
            waited: migrated.waited,
        })
    }

    /// Where the database at `url` stands: its heads, what is applied, what `upgrade` would
    /// apply, and drift. A missing SQLite file is an error, not an empty database.
    pub async fn current(&self, url: &str) -> Result<Current, Error> {
        let url = DatabaseUrl::parse(url).map_err(Error::Url)?;
        let mut db = open(&url, APPLICATION, Open::Existing).await?;
        let state = crate::with_target!(&mut db, t => t.version_state().await)?;
        let applied = engine::applied(&state);
        Ok(Current {
            heads: self.history.heads_of(&applied),
            applied: state.applied.iter().map(|a| a.revision.clone()).collect(),
            pending: self
                .history
                .in_order()
                .filter(|m| !applied.contains(&m.revision))
                .map(|m| m.revision.clone())
                .collect(),
            drift: engine::find_drift(&self.history, &state)
                .iter()
                .map(ToString::to_string)
                .collect(),
        })
    }
}

/// The migrator's progress as `tracing` events.
fn trace_progress(event: Progress<'_>) {
    match event {
        Progress::Waiting(w) => tracing::info!(
            lease = %w.key,
            holder = %w.holder,
            progress = %w.progress,
            waited_ms = w.waited_ms,
            timeout_ms = w.timeout_ms,
            "another process is applying the migrations; waiting for it"
        ),
        Progress::Acquired { key, waited_ms } => {
            tracing::info!(lease = %key, waited_ms, "took the migrations lease after waiting")
        }
        Progress::Start(p) => tracing::info!(
            revision = %p.migration.revision,
            "running {}",
            p.describe()
        ),
        Progress::Retry {
            prepared,
            attempt,
            error,
            wait_ms,
        } => tracing::warn!(
            revision = %prepared.migration.revision,
            attempt,
            wait_ms,
            "migration attempt failed ({error}); retrying"
        ),
        Progress::Index { prepared, progress } => tracing::debug!(
            revision = %prepared.migration.revision,
            "{}: {}",
            progress.command,
            progress.summary()
        ),
    }
}
