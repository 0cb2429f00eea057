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
    source: Excerpt,
    span: Option<SourceSpan>,
    severity: miette::Severity,
}

/// Lines longer than this (in characters) are shown as a window around the column.
const SHOWN_LINE: usize = 200;
/// Characters shown before the column in a cut line.
const BEFORE_COLUMN: usize = 80;

/// What the snippet shows of the source: the finding's line and its neighbours, each cut to a
/// window around the column when too long (a 400 KB line would be echoed in full, and a column
/// past 65,535 makes the renderer panic). Other lines are left empty, so line numbers stay true;
/// the header keeps the real column.
#[derive(Debug)]
struct Excerpt {
    source: NamedSource<String>,
    /// The 0-based column of the finding in the file, when its line was cut.
    column: Option<usize>,
}

impl Excerpt {
    /// The excerpt and the finding's span in it.
    fn new(file: &str, source: &str, line: u64, column: u64) -> (Self, Option<SourceSpan>) {
        let col0 = usize::try_from(column.max(1) - 1).unwrap_or(0);
        let long = source
            .split('\n')
            .nth(usize::try_from(line.max(1) - 1).unwrap_or(0))
            .is_some_and(|l| l.chars().count() > SHOWN_LINE);
        if line == 0 || !long {
            let excerpt = Self {
                source: NamedSource::new(file, source.to_string()),
                column: None,
            };
            return (excerpt, span_at(source, line, column));
        }
        let first = col0.saturating_sub(BEFORE_COLUMN);
        let mut text = String::new();
        let mut new_column = column;
        for (i, l) in source.split_inclusive('\n').enumerate() {
            let number = i as u64 + 1;
            let newline = if l.ends_with('\n') { "\n" } else { "" };
            if number + 2 < line || number > line + 2 {
                text.push_str(newline);
                continue;
            }
            let body = l.trim_end_matches('\n');
            let count = body.chars().count();
            if count <= SHOWN_LINE && number != line {
                text.push_str(l);
                continue;
            }
            let cut: String = body.chars().skip(first).take(SHOWN_LINE).collect();
            let lead = if first > 0 && first < count {
                "…"
            } else {
                ""
            };
            let tail = if first + SHOWN_LINE < count {
                "…"
            } else {
                ""
            };
            text.push_str(lead);
            text.push_str(&cut);
            text.push_str(tail);
            text.push_str(newline);
            if number == line {
                new_column = (col0 - first + lead.chars().count() + 1) as u64;
            }
        }
        let span = span_at(&text, line, new_column);
        let excerpt = Self {
            source: NamedSource::new(file, text),
            column: Some(col0),
        };
        (excerpt, span)
    }
}

impl miette::SourceCode for Excerpt {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn miette::SpanContents<'a> + 'a>, miette::MietteError> {
        let contents = self
            .source
            .read_span(span, context_lines_before, context_lines_after)?;
        match self.column {
            // The span alone (the header's `file:line:column`): the column in the file.
            Some(column) if context_lines_before == 0 && context_lines_after == 0 => {
                Ok(Box::new(miette::MietteSpanContents::new_named(
                    contents.name().unwrap_or_default().to_string(),
                    contents.data(),
                    *contents.span(),
                    contents.line(),
                    column,
                    contents.line_count(),
                )))
            }
            _ => Ok(contents),
        }
    }
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
        let (source, span) = Excerpt::new(file, source, finding.line, finding.column);
        Self {
            headline,
            help: finding.help.clone(),
            source,
            span,
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
