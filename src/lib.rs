//! phased: zero-downtime database deployments in phases (expand, migrate, switch-flag, contract).

pub mod cli;
pub mod engine;
pub mod migrations;
pub mod plan;
pub mod target;
