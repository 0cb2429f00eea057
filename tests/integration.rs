//! The integration suite: one binary, one module per area.

mod common;

mod cli;
mod engine_steps;
mod plan_errors;
mod online_safety;
mod sqlite_rebuild;
