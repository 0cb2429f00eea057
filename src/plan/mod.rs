//! The plan: model, parsing, validation. Pure: nothing here opens a connection.

pub mod diagnostic;
pub mod duration;
pub mod load;
pub mod model;
pub mod validate;

pub use diagnostic::{Finding, PlanReport, Severity};
pub use duration::PlanDuration;
pub use load::{load, parse_str, LoadedPlan};
pub use model::*;

use sha2::{Digest, Sha256};

/// Where a step stands in its plan: the key its state is stored under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRef {
    pub phase_index: usize,
    pub phase: String,
    /// 0-based position in the phase.
    pub index: usize,
    /// Hex sha256 of the step's definition (and of the files it reads).
    pub checksum: String,
    /// 1-based line of the step in the plan file.
    pub line: u64,
}

impl StepRef {
    /// `phase#N`, 1-based, as shown to people.
    pub fn id(&self) -> String {
        format!("{}#{}", self.phase, self.index + 1)
    }
}

/// The checksum of a step's definition: its canonical JSON, hashed.
pub fn checksum(step: &Step) -> String {
    let json = serde_json::to_string(step).unwrap_or_default();
    let digest = Sha256::digest(json.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl Plan {
    /// Every step with its key, in plan order.
    pub fn step_refs(&self) -> Vec<(StepRef, &Step)> {
        let mut out = Vec::new();
        for (phase_index, phase) in self.phases.value.iter().enumerate() {
            for (index, step) in phase.value.steps.value.iter().enumerate() {
                out.push((
                    StepRef {
                        phase_index,
                        phase: phase.value.name.value.clone(),
                        index,
                        checksum: checksum(&step.value),
                        line: step.referenced.line(),
                    },
                    &step.value,
                ));
            }
        }
        out
    }
}
