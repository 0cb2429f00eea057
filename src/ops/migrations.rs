//! `migrations`: applies the versioned migrations of a folder up to a revision (`phased db …`
//! works on the same version tables). The engine runs it, one migration per transaction unless a
//! migration says otherwise, and records the revisions the database was at before it.
//!
//! Resumes: each migration records its revision in its own transaction, so a retry applies only
//! the ones still missing.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{engine_driven, Dialect, Inverse, InverseContext, Operation, RenderError, Unit};
use crate::plan::PhaseKind;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Migrations {
    #[serde(default = "Migrations::default_dir")]
    pub dir: PathBuf,
    #[serde(default = "Migrations::default_to")]
    pub to: String,
    /// How long a `CONCURRENTLY` statement of a `transactional: false` migration may wait, in
    /// total, for older transactions (`defaults`' when absent; not serialized when absent, so
    /// existing checksums stay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_wait_timeout: Option<crate::plan::PlanDuration>,
}

impl Migrations {
    fn default_dir() -> PathBuf {
        PathBuf::from("migrations")
    }
    fn default_to() -> String {
        "head".to_string()
    }
}

impl Operation for Migrations {
    fn kind(&self) -> &'static str {
        "migrations"
    }

    fn subject(&self) -> String {
        format!("{} to {}", self.dir.display(), self.to)
    }

    fn allowed_in(&self) -> &'static [PhaseKind] {
        &[PhaseKind::Expand, PhaseKind::Migrate]
    }

    fn index_wait_timeout(&self) -> Option<crate::plan::PlanDuration> {
        self.index_wait_timeout
    }

    fn units(&self, _dialect: Dialect) -> Result<Vec<Unit>, RenderError> {
        Err(engine_driven(self.kind()))
    }

    /// Partly applied or done, the downgrade goes back to where the step started.
    fn inverse(&self, _ctx: &InverseContext<'_>, _done: bool, _dialect: Dialect) -> Inverse {
        Inverse::Migrations
    }
}
