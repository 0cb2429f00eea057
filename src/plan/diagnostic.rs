//! Located plan errors: `file:line:column`, what was expected, rendered with the source line and a caret.

use std::fmt;

use miette::{Diagnostic, GraphicalReportHandler, GraphicalTheme, NamedSource, SourceSpan};
use serde_saphyr::Location;

/// How bad a finding is: errors stop the plan, warnings are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One finding in a plan file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    /// 1-based; 0 when the position is unknown.
    pub line: u64,
    pub column: u64,
    pub message: String,
    pub help: Option<String>,
}

impl Finding {
    pub fn error(at: Location, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            line: at.line(),
            column: at.column(),
            message: message.into(),
            help: None,
        }
    }

    pub fn warning(at: Location, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(at, message)
        }
    }

    pub fn at(line: u64, column: u64, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            line,
            column,
            message: message.into(),
            help: None,
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// Findings for one plan file, with its text so they can be rendered.
#[derive(Debug, Clone)]
pub struct PlanReport {
    pub file: String,
    pub source: String,
    pub findings: Vec<Finding>,
}

impl PlanReport {
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Warning)
    }

    /// Renders every finding with its source line and a caret, without colour.
    pub fn render_plain(&self) -> String {
        self.render(GraphicalTheme::unicode_nocolor())
    }

    /// Renders with colour when `color` is set (a terminal), plainly otherwise.
    pub fn render_for(&self, color: bool) -> String {
        if color {
            self.render(GraphicalTheme::unicode())
        } else {
            self.render_plain()
        }
    }

    fn render(&self, theme: GraphicalTheme) -> String {
        let handler = GraphicalReportHandler::new_themed(theme)
            .with_width(100)
            .with_links(false);
        let mut out = String::new();
        for finding in &self.findings {
            let located = LocatedFinding::new(&self.file, &self.source, finding);
            if handler.render_report(&mut out, &located).is_err() {
                out.push_str(&located.to_string());
            }
            out.push('\n');
        }
        out
    }
}

impl fmt::Display for PlanReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render_plain())
    }
}

/// A finding as a miette diagnostic.
#[derive(Debug)]
struct LocatedFinding {
    headline: String,
    help: Option<String>,
    source: NamedSource<String>,
    span: Option<SourceSpan>,
    severity: miette::Severity,
}

impl LocatedFinding {
    fn new(file: &str, source: &str, finding: &Finding) -> Self {
        let kind = match finding.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let headline = if finding.line == 0 {
            format!("{file}: {kind}: {}", finding.message)
        } else {
            format!(
                "{file}:{}:{}: {kind}: {}",
                finding.line, finding.column, finding.message
            )
        };
        Self {
            headline,
            help: finding.help.clone(),
            source: NamedSource::new(file, source.to_string()),
            span: span_at(source, finding.line, finding.column),
            severity: match finding.severity {
                Severity::Error => miette::Severity::Error,
                Severity::Warning => miette::Severity::Warning,
            },
        }
    }
}

impl fmt::Display for LocatedFinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.headline)
    }
}

impl std::error::Error for LocatedFinding {}

impl Diagnostic for LocatedFinding {
    fn severity(&self) -> Option<miette::Severity> {
        Some(self.severity)
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.span.map(|_| &self.source as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        self.span.map(|span| {
            Box::new(std::iter::once(miette::LabeledSpan::new_with_span(
                Some("here".to_string()),
                span,
            ))) as Box<dyn Iterator<Item = miette::LabeledSpan>>
        })
    }
}

/// Byte span of the token starting at a 1-based line and (character) column.
fn span_at(source: &str, line: u64, column: u64) -> Option<SourceSpan> {
    if line == 0 {
        return None;
    }
    let mut offset = 0usize;
    for (index, text) in source.split_inclusive('\n').enumerate() {
        if index as u64 + 1 == line {
            let col = usize::try_from(column.max(1) - 1).ok()?;
            let start = text
                .char_indices()
                .nth(col)
                .map(|(i, _)| i)
                .unwrap_or_else(|| text.trim_end_matches('\n').len());
            let rest = &text[start..];
            let len = token_len(rest);
            return Some(SourceSpan::new((offset + start).into(), len));
        }
        offset += text.len();
    }
    None
}

fn token_len(rest: &str) -> usize {
    let rest = rest.trim_end_matches(['\n', '\r']);
    if let Some(quoted) = rest.strip_prefix('"') {
        return quoted.find('"').map(|i| i + 2).unwrap_or(rest.len()).max(1);
    }
    let end = rest
        .find(|c: char| c.is_whitespace() || matches!(c, ':' | ',' | '}' | ']' | '{' | '['))
        .unwrap_or(rest.len());
    end.max(1).min(rest.len().max(1))
}
