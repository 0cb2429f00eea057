//! The library API: what an application needs to migrate its database when it starts
//! ([`Migrator`], [`embed_migrations!`](crate::embed_migrations), [`PlanFile`], [`Error`]).
//! It sits on the engine like the CLI does, installs no `tracing` subscriber, and never prints.

mod embed;
mod error;
mod migrator;
mod plan_file;

pub use error::{DestructiveStatement, Error};
pub use migrator::{Current, Migrator, Upgraded};
pub use plan_file::{PlanFile, PlanRun};

/// What the exported macros expand to. Not API.
#[doc(hidden)]
pub mod __private {
    pub use include_dir;
}
