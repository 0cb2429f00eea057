//! The integration suite: one binary, one module per area.

mod common;

mod backfill;
mod backups;
mod ci_recovery;
mod cli;
mod engine_steps;
mod migrations;
mod names;
mod online_safety;
mod plan_errors;
mod sqlite_rebuild;
mod step_checksums;
mod tls;
