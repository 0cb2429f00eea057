//! The integration suite: one binary, one module per area.

mod common;

mod backfill;
mod cli;
mod engine_steps;
mod plan_errors;
