//! The migration files each `migrations` step of a plan runs, so that they are linted in that
//! step's phase: the revisions up to its `to` that no earlier `migrations` step on the same
//! folder has run (a plan that brings a folder to `8d3e…` in `expand` and to `head` in
//! `migrate` lints the first revisions as `expand`, the rest as `migrate`). Read from the folder
//! like `phased db upgrade` reads it; a folder or `to` that cannot be read lists no files
//! (loading the plan reports it).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde_saphyr::Location;

use crate::migrations::{path, Spec};
use crate::plan::{PhaseKind, Plan, Step};

/// A file one `migrations` step runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepFile {
    /// `phase#N` of the step, as the run and the dry run name it.
    pub step_id: String,
    /// Where the step stands in the plan.
    pub at: Location,
    pub phase: PhaseKind,
    pub path: PathBuf,
    /// Whether the revision runs in one transaction (`-- transactional: true`).
    pub transactional: bool,
}

/// The files each `migrations` step of `plan` runs, in run order; folders resolved against
/// `base`.
pub fn files_run(plan: &Plan, base: &Path) -> Vec<StepFile> {
    let mut applied: HashMap<PathBuf, BTreeSet<String>> = HashMap::new();
    let mut out = Vec::new();
    for phase in &plan.phases.value {
        let phase = &phase.value;
        for (index, step) in phase.steps.value.iter().enumerate() {
            let Step::Migrations(m) = &step.value else {
                continue;
            };
            let dir = base.join(&m.dir);
            let Ok(history) = crate::migrations::load(&dir) else {
                continue;
            };
            let Ok(spec) = Spec::parse(&m.to) else {
                continue;
            };
            let done = applied.entry(dir).or_default();
            let Ok(moves) = path::upgrade(&history, done, &spec) else {
                continue;
            };
            for mv in moves {
                if let Some(migration) = history.get(&mv.revision) {
                    out.push(StepFile {
                        step_id: format!("{}#{}", phase.name.value, index + 1),
                        at: step.referenced,
                        phase: phase.kind.value,
                        path: migration.path.clone(),
                        transactional: migration.transactional,
                    });
                }
                done.insert(mv.revision);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(yaml: &str, base: &Path) -> Plan {
        match crate::plan::parse_str("plan.yaml", yaml, base) {
            Ok(loaded) => loaded.plan,
            Err(report) => panic!("{}", report.render_plain()),
        }
    }

    #[test]
    fn each_step_runs_the_revisions_after_the_previous_one() {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("plans");
        let yaml = std::fs::read_to_string(base.join("migrations.yaml")).unwrap_or_default();
        let files = files_run(&plan(&yaml, &base), &base);
        let by_step: Vec<(String, PhaseKind, String)> = files
            .iter()
            .map(|f| {
                let name = f
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (f.step_id.clone(), f.phase, name[..13].to_string())
            })
            .collect();
        assert_eq!(by_step.len(), 5, "{by_step:?}");
        assert_eq!(
            &by_step[..2],
            &[
                ("schema#1".into(), PhaseKind::Expand, "20261101_0900".into()),
                ("schema#1".into(), PhaseKind::Expand, "20261108_1430".into()),
            ]
        );
        assert!(by_step[2..]
            .iter()
            .all(|(id, kind, _)| id == "data#1" && *kind == PhaseKind::Migrate));
        assert!(!files[2].transactional || !files[3].transactional);
    }
}
