//! `phased lint FILE|DIR…`: reads SQL files (phased migrations keep only their PostgreSQL `up`
//! sections), lints them with `plan::lint`, and prints the findings for a person (the source
//! line and a caret), as NDJSON, or as GitHub workflow annotations. Also lints the migration
//! folders `migrations` steps run, for `phased validate`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use super::args::{LintArgs, OutputFormat as Format, PhaseKindArg};
use super::config::color;
use super::exit;
use crate::plan::lint::{lint_file_text, SqlFinding};
use crate::plan::{Finding, PhaseKind, PlanReport, Severity};

/// The findings of one file, with its text for rendering.
pub struct FileLint {
    pub path: PathBuf,
    pub text: String,
    pub findings: Vec<SqlFinding>,
}

impl FileLint {
    pub fn errors(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count()
    }

    pub fn warnings(&self) -> usize {
        self.findings.len() - self.errors()
    }
}

/// Runs `phased lint`; exit 2 when a finding is an error or a file cannot be read.
pub fn lint(args: &LintArgs, format: Format) -> u8 {
    let phase = args.phase.map(|p| match p {
        PhaseKindArg::Expand => PhaseKind::Expand,
        PhaseKindArg::Migrate => PhaseKind::Migrate,
        PhaseKindArg::SwitchFlag => PhaseKind::SwitchFlag,
        PhaseKindArg::Contract => PhaseKind::Contract,
    });
    let mut code = exit::OK;
    let mut files = Vec::new();
    for path in &args.paths {
        match sql_files(path) {
            Ok(found) => files.extend(found),
            Err(message) => {
                eprintln!("error: {message}");
                code = exit::INVALID;
            }
        }
    }
    let (mut errors, mut warnings) = (0, 0);
    for path in &files {
        let linted = match lint_file(path, phase, args.transactional) {
            Ok(l) => l,
            Err(message) => {
                eprintln!("error: {message}");
                code = exit::INVALID;
                continue;
            }
        };
        errors += linted.errors();
        warnings += linted.warnings();
        print_file(&linted, format);
    }
    match format {
        Format::Json => crate::outln!(
            "{}",
            serde_json::json!({"files": files.len(), "errors": errors, "warnings": warnings})
        ),
        Format::Human => crate::outln!(
            "{} file(s): {errors} error(s), {warnings} warning(s)",
            files.len()
        ),
        Format::Github => {}
    }
    if errors > 0 {
        code = exit::INVALID;
    }
    code
}

/// Lints one file, read from disk.
pub fn lint_file(
    path: &Path,
    phase: Option<PhaseKind>,
    transactional: bool,
) -> Result<FileLint, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let findings = lint_file_text(&text, phase, transactional).findings;
    Ok(FileLint {
        path: path.to_path_buf(),
        text,
        findings,
    })
}

/// `path` itself when it is a file; the `.sql` files under it, in name order, when a folder.
pub fn sql_files(path: &Path) -> Result<Vec<PathBuf>, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            out.extend(sql_files(&entry)?);
        } else if entry.extension().is_some_and(|e| e == "sql") {
            out.push(entry);
        }
    }
    Ok(out)
}

/// Prints one file's findings in `format`.
pub fn print_file(linted: &FileLint, format: Format) {
    let file = linted.path.display().to_string();
    match format {
        Format::Human => {
            if !linted.findings.is_empty() {
                let colored = color() && std::io::stdout().is_terminal();
                crate::outln!("{}", render(linted, colored).trim_end());
            }
        }
        Format::Json => {
            for f in &linted.findings {
                crate::outln!(
                    "{}",
                    serde_json::json!({
                        "file": file,
                        "line": f.line,
                        "column": f.column,
                        "rule": f.rule,
                        "severity": severity(f.severity),
                        "statement": f.statement,
                        "message": f.message,
                        "help": f.help,
                    })
                );
            }
        }
        Format::Github => {
            for f in &linted.findings {
                crate::outln!(
                    "{}",
                    annotation(
                        f.severity,
                        &file,
                        f.line,
                        f.column,
                        &format!("phased lint: {}", f.rule),
                        &format!("{} — `{}`\n{}", f.message, f.statement, f.help)
                    )
                );
            }
        }
    }
}

/// One file's findings for a person: each with its source line and a caret.
pub fn render(linted: &FileLint, colored: bool) -> String {
    let report = PlanReport {
        file: linted.path.display().to_string(),
        source: linted.text.clone(),
        findings: linted.findings.iter().map(as_finding).collect(),
    };
    report.render_for(colored)
}

/// A lint finding as a located plan finding (the miette renderer shows its source line).
fn as_finding(f: &SqlFinding) -> Finding {
    Finding {
        severity: f.severity,
        line: f.line,
        column: f.column,
        message: f.headline(),
        help: Some(format!(
            "{}; or `-- phased: allow {} — reason` above the statement",
            f.help, f.rule
        )),
    }
}

fn severity(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
    }
}

/// A GitHub Actions workflow command: `::error file=F,line=L,col=C,title=T::message`.
pub fn annotation(
    s: Severity,
    file: &str,
    line: u64,
    column: u64,
    title: &str,
    message: &str,
) -> String {
    format!(
        "::{} file={},line={line},col={column},title={}::{}",
        severity(s),
        escape_property(file),
        escape_property(title),
        escape_data(message)
    )
}

fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_escape_what_github_reads() {
        assert_eq!(
            annotation(
                Severity::Error,
                "a,b:c.sql",
                3,
                1,
                "phased lint: x",
                "50% done\nnext"
            ),
            "::error file=a%2Cb%3Ac.sql,line=3,col=1,title=phased lint%3A x::50%25 done%0Anext"
        );
    }
}
