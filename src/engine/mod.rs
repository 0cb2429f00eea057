//! The engine: runs a plan's phases against a target, one step at a time, with its state saved
//! in the target so any run can be resumed, inspected or gated.

pub mod backfill;
pub mod backup;
pub mod command;
pub mod dry_run;
pub mod error;
pub mod events;
pub mod gate;
pub mod interrupt;
pub mod lease_wait;
pub mod lock_policy;
pub mod migrations;
pub mod pace;
pub mod records;
pub mod rehearsal;
pub mod retry;
pub mod rollback;
pub mod runner;
pub mod status;
pub mod verify;

pub use error::EngineError;
pub use events::{Event, Reporter, StepId};
pub use runner::{run, RunOptions};
