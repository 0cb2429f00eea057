//! The integration suite: one binary, one module per area.

mod common;

mod backfill;
mod backup_hygiene;
mod backups;
mod catalog_ops;
mod ci_recovery;
mod cli;
mod contention;
mod docs_examples;
mod drop_column_dependents;
mod dropped_connection;
mod dry_run_is_the_run;
mod engine_scripts;
mod engine_steps;
mod fault_sweep;
mod index_builds;
mod input_edges;
mod interrupts;
mod lease_fence;
mod lint;
mod migrations;
mod names;
mod online_safety;
mod operations_written_once;
mod pg_capture_selftest;
mod plan_errors;
mod plan_fuzz;
mod restore_checksum;
mod sqlite_rebuild;
mod startup;
mod state_writes;
mod step_checksum;
mod step_checksums;
mod tls;
mod verify_passwords;
