//! `command`: runs an outside program (no shell), e.g. to flip a flag in an outside flag
//! service. The engine runs it, from the plan's folder, within its timeout.
//!
//! Resumes: a command that did not finish is run again from the start, so it should be safe to
//! repeat; its `down` only runs for a command that succeeded.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{engine_driven, Dialect, Inverse, InverseContext, Operation, RenderError, Unit};
use crate::plan::{PhaseKind, PlanDuration};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// Program and arguments; no shell.
    pub run: Vec<String>,
    #[serde(default)]
    pub down: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default = "Command::default_timeout")]
    pub timeout: PlanDuration,
}

impl Command {
    fn default_timeout() -> PlanDuration {
        PlanDuration::from_millis(60_000)
    }
}

impl Operation for Command {
    fn kind(&self) -> &'static str {
        "command"
    }

    fn subject(&self) -> String {
        self.run.join(" ")
    }

    fn allowed_in(&self) -> &'static [PhaseKind] {
        &[
            PhaseKind::Expand,
            PhaseKind::Migrate,
            PhaseKind::SwitchFlag,
            PhaseKind::Contract,
        ]
    }

    fn units(&self, _dialect: Dialect) -> Result<Vec<Unit>, RenderError> {
        Err(engine_driven(self.kind()))
    }

    fn inverse(&self, _ctx: &InverseContext<'_>, done: bool, _dialect: Dialect) -> Inverse {
        if !done {
            return Inverse::Nothing(format!(
                "`{}` failed; its `down` only runs for a command that succeeded",
                self.run.join(" ")
            ));
        }
        match &self.down {
            Some(argv) if !argv.is_empty() => Inverse::Command(argv.clone()),
            _ => Inverse::Irreversible("the command step has no `down` to undo it".to_string()),
        }
    }
}
