//! phased: zero-downtime database deployments in phases (expand, migrate, switch-flag,
//! contract), on PostgreSQL and SQLite.
//!
//! Most users run the `phased` command-line tool (see the README). This crate's library API is
//! the small part an **application** needs to migrate its own database **when it starts**, the
//! way `sqlx::migrate!` or Flyway's `migrate()` are used — safely when many replicas start at
//! once:
//!
//! - [`Migrator`]: applies a folder of versioned migrations (`phased db` files), read at run
//!   time ([`Migrator::from_dir`]) or embedded in the binary at compile time
//!   ([`embed_migrations!`]); [`Migrator::upgrade`] and [`Migrator::current`].
//! - [`PlanFile`]: runs a phased plan, as `phased run PLAN --wait` does.
//! - [`Error`]: every way these stop, typed.
//!
//! Both work in **startup mode**: one process applies, the others wait for its lease (bounded,
//! 10 minutes by default) and then find the work done; and a revision with a destructive
//! statement (drop, rename, type change, `SET NOT NULL` without a validated check) is refused
//! unless its header opts in (`-- destructive: drop-column`). Progress is reported through
//! [`tracing`](https://docs.rs/tracing) events; the library installs no subscriber and never
//! prints. See `docs/startup.md` in the repository.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), phased::Error> {
//! # let dir = tempfile::tempdir().map_err(|e| phased::Error::Migrations(e.to_string()))?;
//! # let database_url = format!("sqlite://{}", dir.path().join("app.db").display());
//! let migrator = phased::embed_migrations!("$CARGO_MANIFEST_DIR/migrations")?;
//! migrator.upgrade(&database_url, "head").await?;
//! // … then serve.
//! # assert!(migrator.current(&database_url).await?.is_up_to_date());
//! # Ok(())
//! # }
//! ```
//!
//! Everything else public in this crate (the modules below, hidden from these docs) is the
//! command-line tool's internals, public only so that the `phased` binary and the integration
//! tests can reach them. It is **not API**: it changes without notice between releases.

mod startup;

pub use startup::{Current, DestructiveStatement, Error, Migrator, PlanFile, PlanRun, Upgraded};

#[doc(hidden)]
pub use startup::__private;

#[doc(hidden)]
pub mod cli;
#[doc(hidden)]
pub mod db;
#[doc(hidden)]
pub mod engine;
#[doc(hidden)]
pub mod migrations;
#[doc(hidden)]
pub mod ops;
#[doc(hidden)]
pub mod plan;
