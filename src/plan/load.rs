//! Reading a plan file: YAML → model, then the files it names, then validation.

use std::path::{Path, PathBuf};

use super::diagnostic::{Finding, PlanReport, Severity};
use super::model::{Plan, Step};
use super::validate;

/// A plan that parsed and validated, with any warnings.
#[derive(Debug, Clone)]
pub struct LoadedPlan {
    pub plan: Plan,
    /// The file as given on the command line.
    pub file: String,
    /// The folder relative paths in the plan are resolved against.
    pub base_dir: PathBuf,
    /// Warnings only (errors make loading fail).
    pub report: PlanReport,
}

/// Reads, parses and validates a plan file. Every error is located.
pub fn load(path: &Path) -> Result<LoadedPlan, PlanReport> {
    let file = path.display().to_string();
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) => {
            return Err(PlanReport {
                file,
                source: String::new(),
                findings: vec![Finding::at(0, 0, format!("cannot read the plan: {err}"))],
            })
        }
    };
    let source = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(err) => return Err(not_utf8(file, err.as_bytes(), err.utf8_error())),
    };
    // `plan.yaml` has the parent `""`, which a child process cannot start in: that is `.`.
    let base_dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    parse_str(&file, &source, &base_dir)
}

/// A plan that is not UTF-8: located at its first invalid byte (offset, line, column), shown
/// with the invalid bytes replaced.
fn not_utf8(file: String, bytes: &[u8], err: std::str::Utf8Error) -> PlanReport {
    let offset = err.valid_up_to();
    let valid = String::from_utf8_lossy(&bytes[..offset]);
    let line = valid.matches('\n').count() as u64 + 1;
    let line_start = valid.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = valid[line_start..].chars().count() as u64 + 1;
    let bad = bytes
        .get(offset..offset + err.error_len().unwrap_or(bytes.len() - offset))
        .unwrap_or_default()
        .iter()
        .map(|b| format!("0x{b:02X}"))
        .collect::<Vec<_>>()
        .join(" ");
    PlanReport {
        file,
        source: String::from_utf8_lossy(bytes).into_owned(),
        findings: vec![Finding::at(
            line,
            column,
            format!("the plan is not UTF-8: byte {bad} at byte offset {offset} (line {line}, column {column})"),
        )
        .with_help("save the plan as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)")],
    }
}

/// Parses and validates plan text; `base_dir` resolves `sql: { file: … }` paths.
pub fn parse_str(file: &str, source: &str, base_dir: &Path) -> Result<LoadedPlan, PlanReport> {
    let report = |findings| PlanReport {
        file: file.to_string(),
        source: source.to_string(),
        findings,
    };
    let mut plan: Plan = match serde_saphyr::from_str(source) {
        Ok(plan) => plan,
        Err(err) => return Err(report(all_parse_findings(source, &err))),
    };
    plan.written = written_steps(source);
    let mut findings = super::compile::compile_changes(&mut plan);
    findings.extend(super::compile::schedule(&mut plan));
    findings.extend(read_sql_files(&mut plan, base_dir));
    findings.extend(check_migration_folders(&plan, base_dir));
    findings.extend(validate::validate(&plan));
    findings.extend(super::lint::add_column::check(&plan, source));
    if !findings.iter().any(|f| f.severity == Severity::Error) {
        findings.extend(validate::reversibility(&plan));
        findings.sort_by_key(|f| (f.line, f.column));
    }
    let rep = report(findings);
    if rep.has_errors() {
        return Err(rep);
    }
    Ok(LoadedPlan {
        plan,
        file: file.to_string(),
        base_dir: base_dir.to_path_buf(),
        report: rep,
    })
}

/// Each step as the file writes it, by location: a second, generic reading of the phases' step
/// lists (any other key is ignored). Should it fail, steps fall back to the legacy checksum.
fn written_steps(source: &str) -> super::WrittenSteps {
    use serde::Deserialize;
    use serde_saphyr::Spanned;

    #[derive(Deserialize)]
    struct WrittenPlan {
        #[serde(default)]
        phases: Vec<WrittenPhase>,
        #[serde(default)]
        changes: Vec<Spanned<serde_json::Value>>,
        /// A `changes:` plan's flags: each is the `flag` step it compiles to.
        #[serde(default)]
        flags: Vec<Spanned<serde_json::Value>>,
    }
    #[derive(Deserialize)]
    struct WrittenPhase {
        #[serde(default)]
        steps: Vec<Spanned<serde_json::Value>>,
    }

    let mut written = super::WrittenSteps::default();
    match serde_saphyr::from_str::<WrittenPlan>(source) {
        Ok(plan) => {
            let changes = plan.changes;
            let flags = plan.flags.into_iter().map(|f| {
                let at = f.referenced;
                Spanned::new(serde_json::json!({ "flag": f.value }), at, at)
            });
            for step in plan
                .phases
                .into_iter()
                .flat_map(|p| p.steps)
                .chain(changes)
                .chain(flags)
            {
                let at = (step.referenced.line(), step.referenced.column());
                written.0.insert(at, step.value);
            }
        }
        Err(e) => tracing::debug!("steps not read as written ({e}); legacy checksums apply"),
    }
    written
}

/// Every mistake serde finds, not only the first: the plan's error, then each step and gate
/// read on its own (from its own lines of the file, so each finding keeps its line and column).
/// A YAML syntax error stops there; so does a second mistake outside the steps and gates.
fn all_parse_findings(source: &str, err: &serde_saphyr::Error) -> Vec<Finding> {
    use serde::de::IgnoredAny;
    use serde::Deserialize;
    use serde_saphyr::Spanned;

    #[derive(Deserialize)]
    struct Items {
        #[serde(default)]
        phases: Vec<PhaseItems>,
        /// A `changes:` plan's steps: read like one phase's.
        #[serde(default)]
        changes: Vec<Spanned<IgnoredAny>>,
    }
    #[derive(Deserialize)]
    struct PhaseItems {
        #[serde(default)]
        gate: Vec<Spanned<IgnoredAny>>,
        #[serde(default)]
        steps: Vec<Spanned<IgnoredAny>>,
    }

    let first = syntax_finding(err);
    let Ok(mut items) = serde_saphyr::from_str::<Items>(source) else {
        return vec![first];
    };
    items.phases.push(PhaseItems {
        gate: Vec::new(),
        steps: std::mem::take(&mut items.changes),
    });
    let lines: Vec<&str> = source.lines().collect();
    let mut findings = Vec::new();
    for phase in &items.phases {
        for (list, parse) in [
            (
                &phase.steps,
                item_error::<Step> as fn(&str) -> Option<serde_saphyr::Error>,
            ),
            (&phase.gate, item_error::<super::Gate>),
        ] {
            for item in list {
                let (line, column) = (item.referenced.line(), item.referenced.column());
                let Some((text, offset)) = item_text(&lines, line, column) else {
                    continue;
                };
                if let Some(e) = parse(&text) {
                    let mut finding = syntax_finding(&e);
                    if finding.line > 0 {
                        finding.line += line - 1;
                        finding.column += offset;
                    } else {
                        (finding.line, finding.column) = (line, column);
                    }
                    findings.push(finding);
                }
            }
        }
    }
    if !findings
        .iter()
        .any(|f| (f.line, f.column) == (first.line, first.column))
    {
        findings.push(first);
    }
    findings.sort_by_key(|f| (f.line, f.column));
    findings.dedup_by_key(|f| (f.line, f.column));
    findings
}

fn item_error<T: serde::de::DeserializeOwned>(text: &str) -> Option<serde_saphyr::Error> {
    serde_saphyr::from_str::<T>(text).err()
}

/// The text of a sequence item that starts at `line`:`column` (1-based): from there to the next
/// line indented no deeper than its `- `, with the indentation of its later lines taken off so it
/// reads on its own; and how many columns were taken off.
fn item_text(lines: &[&str], line: u64, column: u64) -> Option<(String, u64)> {
    let first = lines.get(usize::try_from(line).ok()?.checked_sub(1)?)?;
    let offset = usize::try_from(column).ok()?.checked_sub(1)?;
    let mut text = first.get(offset..)?.to_string();
    // The item's `- ` stands two columns before it.
    let dash = offset.saturating_sub(2);
    for next in lines.iter().skip(usize::try_from(line).ok()?) {
        let indent = next.len() - next.trim_start().len();
        let blank = next.trim().is_empty() || next.trim_start().starts_with('#');
        if !blank && indent <= dash {
            break;
        }
        let cut = indent.min(offset);
        text.push('\n');
        text.push_str(&next[cut..]);
    }
    Some((text, offset as u64))
}

/// Turns a serde-saphyr error into a finding at its location, with a hint where one helps.
fn syntax_finding(err: &serde_saphyr::Error) -> Finding {
    let location = err.location();
    let message = plain_message(err);
    let (line, column) = location.map(|l| (l.line(), l.column())).unwrap_or((0, 0));
    let mut finding = Finding::at(line, column, message.clone());
    if message.contains("unknown variant") {
        if message.contains("expand") || message.contains("switch-flag") {
            finding =
                finding.with_help("phase kinds are expand, migrate, switch-flag and contract");
        } else {
            let kinds = Step::KINDS;
            let (last, rest) = kinds.split_last().unwrap_or((&"", &[]));
            finding = finding.with_help(format!("step kinds are {} and {last}", rest.join(", ")));
        }
    } else if message.contains("unknown field") {
        finding = finding.with_help("check the spelling; docs/plan-reference.md lists every field");
    } else if message.contains("missing field") {
        finding =
            finding.with_help("add the field; docs/plan-reference.md lists what each step needs");
    }
    finding
}

/// The error's message without the position and snippet serde-saphyr adds (we render our own).
fn plain_message(err: &serde_saphyr::Error) -> String {
    let text = err.to_string();
    let mut message = text.lines().next().unwrap_or("invalid plan").trim();
    message = message
        .strip_prefix("error:")
        .unwrap_or(message)
        .trim_start();
    if let Some(rest) = message.strip_prefix("line ") {
        // "line 6 column 9: unknown variant …"
        if let Some((_, after)) = rest.split_once(": ") {
            message = after;
        }
    }
    message.to_string()
}

/// Reads `sql: { file: … }` and `down_file` so their text is part of the step (and its checksum).
fn read_sql_files(plan: &mut Plan, base_dir: &Path) -> Vec<Finding> {
    let mut findings = Vec::new();
    let read =
        |file: &Path, what: &str, at, findings: &mut Vec<Finding>| match std::fs::read_to_string(
            base_dir.join(file),
        ) {
            Ok(text) => Some(text),
            Err(err) => {
                findings.push(
                    Finding::error(
                        at,
                        format!("sql {what} `{}` cannot be read: {err}", file.display()),
                    )
                    .with_help(format!(
                        "paths are relative to the plan's folder ({})",
                        base_dir.display()
                    )),
                );
                None
            }
        };
    for phase in plan.phases.value.iter_mut() {
        for step in phase.value.steps.value.iter_mut() {
            let at = step.referenced;
            if let Step::Sql(sql) = &mut step.value {
                if let Some(file) = &sql.file {
                    sql.file_text = read(file, "file", at, &mut findings);
                }
                if let Some(file) = &sql.down_file {
                    sql.down_file_text = read(file, "down_file", at, &mut findings);
                }
            }
        }
    }
    findings
}

/// Reads the folders of `migrations` steps, so a malformed file or a `to` that names no revision
/// is reported by `phased validate` with the step's location. A folder that cannot be read is
/// only a warning: it may be created by an earlier step of the deployment.
fn check_migration_folders(plan: &Plan, base_dir: &Path) -> Vec<Finding> {
    use crate::migrations::{self, MigrationError, Spec};
    let mut findings = Vec::new();
    for phase in &plan.phases.value {
        for step in &phase.value.steps.value {
            let Step::Migrations(m) = &step.value else {
                continue;
            };
            let at = step.referenced;
            let dir = base_dir.join(&m.dir);
            let history = match migrations::load(&dir) {
                Ok(h) => h,
                Err(MigrationError::Folder { message, .. }) => {
                    findings.push(
                        Finding::warning(
                            at,
                            format!(
                                "migrations folder `{}` cannot be read: {message}",
                                m.dir.display()
                            ),
                        )
                        .with_help(format!(
                            "paths are relative to the plan's folder ({})",
                            base_dir.display()
                        )),
                    );
                    continue;
                }
                Err(e) => {
                    findings.push(Finding::error(
                        at,
                        format!("migrations folder `{}`: {e}", m.dir.display()),
                    ));
                    continue;
                }
            };
            let resolved = Spec::parse(&m.to).and_then(|spec| match spec {
                Spec::Revision(name) => history.resolve(&name).map(|_| ()),
                Spec::Head if history.heads().len() > 1 => Err(MigrationError::MultipleHeads {
                    heads: history.heads().iter().map(|s| s.to_string()).collect(),
                }),
                Spec::Base | Spec::Relative(_) => Err(MigrationError::Usage(format!(
                    "`to: {spec}` is not a target a plan can upgrade to: use head, heads or a revision"
                ))),
                _ => Ok(()),
            });
            if let Err(e) = resolved {
                findings.push(
                    Finding::error(at, format!("migrations `to: {}`: {e}", m.to))
                        .with_help("`phased db history` lists the revisions"),
                );
            }
        }
    }
    findings
}
