//! Versioned migrations, the way Alembic users know them: one SQL file per revision in a folder,
//! a revision graph (branches and merges), targets such as `head`, `base`, `+2` or a unique
//! prefix, and the upgrade / downgrade paths between what is applied and what is wanted.
//!
//! Pure: the only I/O is reading the folder ([`folder::load`]). Running the SQL and recording
//! versions is the target's job; driving it is the engine's (`engine::migrations`).

pub mod destructive;
pub mod error;
pub mod file;
pub mod folder;
pub mod history;
pub mod path;
pub mod spec;
pub mod statements;

pub use error::MigrationError;
pub use file::{checksum, Migration, Script};
pub use folder::load;
pub use history::History;
pub use path::{Direction, Move};
pub use spec::Spec;
