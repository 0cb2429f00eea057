//! The integration suite: one binary, one module per area.

mod common;

mod backups;
mod cli;
mod engine_steps;
mod migrations;
mod plan_errors;
