//! The plan: model, parsing, validation. Pure: nothing here opens a connection.

pub mod compile;
pub mod diagnostic;
pub mod duration;
pub mod lint;
pub mod load;
pub mod model;
pub mod validate;

pub use diagnostic::{Finding, PlanReport, Severity};
pub use duration::PlanDuration;
pub use load::{load, parse_str, LoadedPlan};
pub use model::*;

use std::collections::HashMap;

use sha2::{Digest, Sha256};

/// Where a step stands in its plan: the key its state is stored under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRef {
    pub phase_index: usize,
    pub phase: String,
    /// 0-based position in the phase.
    pub index: usize,
    /// Hex sha256 of the step as the plan file writes it (and of the files it reads).
    pub checksum: String,
    /// The checksum earlier releases recorded ([`legacy_checksum`]), accepted in their state.
    pub legacy_checksum: String,
    /// 1-based line of the step in the plan file.
    pub line: u64,
}

impl StepRef {
    /// `phase#N`, 1-based, as shown to people.
    pub fn id(&self) -> String {
        format!("{}#{}", self.phase, self.index + 1)
    }

    /// Does a checksum recorded in the state stand for this step as the plan defines it now? A
    /// done step whose recorded checksum does not is drift. Accepts today's checksum and the one
    /// earlier releases recorded (whose state holds only that).
    pub fn matches_checksum(&self, recorded: &str) -> bool {
        recorded == self.checksum || recorded == self.legacy_checksum
    }
}

/// Each step as the plan file writes it (a generic value: only the keys the user wrote, no
/// defaults), by the step's line and column in the file. Filled when a plan is loaded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WrittenSteps(pub HashMap<(u64, u64), serde_json::Value>);

impl WrittenSteps {
    /// What the file writes for the step at this location, if it was read from one.
    pub fn at(&self, location: &serde_saphyr::Location) -> Option<&serde_json::Value> {
        self.0.get(&(location.line(), location.column()))
    }
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// JSON with every object's keys sorted, so the same value always hashes the same.
fn canonical_json(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                canonical_json(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The checksum of a step: sha256 of what the plan file writes for it (`written`, as canonical
/// JSON with sorted keys) and of the text of the files a `sql` step reads. Phased's defaults are
/// not part of it, so a release that changes a default leaves done steps done; writing a field
/// out, even with its default value, is a change. A step not read from a file (`written` is None)
/// falls back to [`legacy_checksum`].
pub fn checksum(written: Option<&serde_json::Value>, step: &Step) -> String {
    let Some(written) = written else {
        return legacy_checksum(step);
    };
    let mut files = serde_json::Map::new();
    if let Step::Sql(sql) = step {
        if let Some(text) = &sql.file_text {
            files.insert("file".into(), text.clone().into());
        }
        if let Some(text) = &sql.down_file_text {
            files.insert("down_file".into(), text.clone().into());
        }
    }
    let hashed = serde_json::json!({ "step": written, "files": files });
    let mut text = String::new();
    canonical_json(&hashed, &mut text);
    sha256_hex(&text)
}

/// The checksum releases before the written-form checksum recorded: the step's model serialized
/// (defaults included). Used only to accept the state those releases wrote
/// ([`StepRef::matches_checksum`]).
pub fn legacy_checksum(step: &Step) -> String {
    sha256_hex(&serde_json::to_string(step).unwrap_or_default())
}

impl Plan {
    /// Every step with its key, in plan order.
    pub fn step_refs(&self) -> Vec<(StepRef, &Step)> {
        let mut out = Vec::new();
        for (phase_index, phase) in self.phases.value.iter().enumerate() {
            for (index, step) in phase.value.steps.value.iter().enumerate() {
                let mut sum = checksum(self.written.at(&step.referenced), &step.value);
                if let Some(part) = self.scheduled_at(phase_index, index) {
                    // A part stands at its operation's location: its checksum is the
                    // operation's (what the user wrote), named for the part.
                    sum = sha256_hex(&format!("{sum}:{}", part.tag));
                }
                out.push((
                    StepRef {
                        phase_index,
                        phase: phase.value.name.value.clone(),
                        index,
                        checksum: sum,
                        legacy_checksum: legacy_checksum(&step.value),
                        line: step.referenced.line(),
                    },
                    &step.value,
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(yaml: &str, base: &std::path::Path) -> Vec<(StepRef, Step)> {
        let loaded = match parse_str("test.yaml", yaml, base) {
            Ok(l) => l,
            Err(report) => panic!("{}", report.render_plain()),
        };
        loaded
            .plan
            .step_refs()
            .into_iter()
            .map(|(r, s)| (r, s.clone()))
            .collect()
    }

    fn one(yaml_steps: &str) -> (StepRef, Step) {
        let yaml =
            format!("plan: p\nphases:\n  - name: m\n    kind: migrate\n    steps:\n{yaml_steps}");
        steps(&yaml, std::path::Path::new(".")).remove(0)
    }

    const OMITS_PAUSE: &str = "      - backfill: { table: t, set: { c: \"lower(d)\" } }\n";

    /// The regression: phased changing the default of a field the step leaves out (here, what
    /// `pause` parses to) changes the legacy checksum, not the checksum.
    #[test]
    fn a_changed_default_keeps_the_checksum() {
        let yaml =
            format!("plan: p\nphases:\n  - name: m\n    kind: migrate\n    steps:\n{OMITS_PAUSE}");
        let mut loaded = parse_str("test.yaml", &yaml, std::path::Path::new(".")).unwrap();
        let (before, legacy_before) = {
            let (r, _) = &loaded.plan.step_refs()[0];
            (r.checksum.clone(), r.legacy_checksum.clone())
        };
        let Step::Backfill(b) = &mut loaded.plan.phases.value[0].value.steps.value[0].value else {
            panic!("a backfill");
        };
        assert_eq!(b.pause, None);
        b.pause = Some(PlanDuration::from_millis(50));
        let (after, _) = &loaded.plan.step_refs()[0];
        assert_eq!(after.checksum, before);
        assert_ne!(after.legacy_checksum, legacy_before);
        assert!(after.matches_checksum(&before));
        assert!(after.matches_checksum(&after.legacy_checksum));
        assert!(!after.matches_checksum(&legacy_before));
    }

    /// The checksum is of what is written: layout, key order and comments do not count; writing a
    /// field out (even with its default value) does, though the model is the same.
    #[test]
    fn the_checksum_is_of_what_is_written() {
        let (flow, flow_step) = one(OMITS_PAUSE);
        let (block, block_step) = one(
            "      - backfill:   # names first\n          set:\n            c: lower(d)\n          table: t\n",
        );
        assert_eq!(flow_step, block_step);
        assert_eq!(flow.checksum, block.checksum);
        let (explicit, explicit_step) =
            one("      - backfill: { table: t, set: { c: \"lower(d)\" }, batch_size: auto }\n");
        assert_eq!(explicit_step, flow_step);
        assert_eq!(explicit.legacy_checksum, flow.legacy_checksum);
        assert_ne!(explicit.checksum, flow.checksum);
        let (other, _) = one("      - backfill: { table: t, set: { c: \"upper(d)\" } }\n");
        assert_ne!(other.checksum, flow.checksum);
        assert_eq!(flow.legacy_checksum, legacy_checksum(&flow_step));
        assert!(!flow.matches_checksum(&other.checksum));
    }

    /// The text of the files a sql step reads is part of its checksum.
    #[test]
    fn sql_files_count() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = "plan: p\nphases:\n  - name: e\n    kind: expand\n    steps:\n      - sql: { file: up.sql, down_file: down.sql }\n";
        std::fs::write(dir.path().join("up.sql"), "CREATE TABLE a (id int)").unwrap();
        std::fs::write(dir.path().join("down.sql"), "DROP TABLE a").unwrap();
        let (first, _) = steps(yaml, dir.path()).remove(0);
        std::fs::write(dir.path().join("up.sql"), "CREATE TABLE b (id int)").unwrap();
        let (up_changed, _) = steps(yaml, dir.path()).remove(0);
        std::fs::write(dir.path().join("down.sql"), "DROP TABLE b").unwrap();
        let (down_changed, _) = steps(yaml, dir.path()).remove(0);
        assert_ne!(first.checksum, up_changed.checksum);
        assert_ne!(up_changed.checksum, down_changed.checksum);
    }

    /// Every step of a plan is found as written (none falls back to the legacy checksum), also
    /// in several phases and with anchors.
    #[test]
    fn every_step_is_read_as_written() {
        let yaml = "plan: p\nphases:\n  - name: e\n    kind: expand\n    steps:\n      - add_column: { table: t, name: c, type: text }\n      - &same { sql: SELECT 1 }\n  - name: c\n    kind: contract\n    steps:\n      - drop_column: { table: t, name: c }\n      - *same\n";
        let found = steps(yaml, std::path::Path::new("."));
        assert_eq!(found.len(), 4);
        assert_eq!(
            found[1].0.checksum, found[3].0.checksum,
            "an alias writes the same step"
        );
        for (r, step) in found {
            assert_ne!(r.checksum, r.legacy_checksum, "{}", r.id());
            assert_eq!(r.legacy_checksum, legacy_checksum(&step));
        }
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let value = serde_json::json!({"b": [{"z": 1, "a": null}], "a": "x\"y"});
        let mut text = String::new();
        canonical_json(&value, &mut text);
        assert_eq!(text, r#"{"a":"x\"y","b":[{"a":null,"z":1}]}"#);
    }
}
