//! phased: zero-downtime database deployments in phases (expand, migrate, switch-flag, contract).

pub mod cli;
pub mod db;
pub mod engine;
pub mod migrations;
pub mod ops;
pub mod plan;
