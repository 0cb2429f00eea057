//! `run --junit FILE`: a JUnit XML report CI systems display — one `testsuite` per phase, one
//! `testcase` per step (and per gate condition and backup), the error as the failure text. The writer is
//! hand-written: the format is small, and escaping is the only subtle part.

use std::fmt::Write as _;

use crate::engine::{EngineError, Event, Reporter};

/// Forwards events to the real reporter and keeps them for the report.
pub struct JunitRecorder {
    inner: Box<dyn Reporter>,
    pub events: Vec<Event>,
}

impl JunitRecorder {
    pub fn new(inner: Box<dyn Reporter>) -> Self {
        Self {
            inner,
            events: Vec::new(),
        }
    }
}

impl Reporter for JunitRecorder {
    fn emit(&mut self, event: &Event) {
        self.events.push(event.clone());
        self.inner.emit(event);
    }
}

#[derive(Debug, Default)]
struct Case {
    name: String,
    seconds: f64,
    failure: Option<(String, String)>,
    skipped: Option<String>,
}

#[derive(Debug)]
struct Suite {
    name: String,
    cases: Vec<Case>,
}

fn suite<'a>(suites: &'a mut Vec<Suite>, name: &str) -> &'a mut Suite {
    if let Some(i) = suites.iter().position(|s| s.name == name) {
        return &mut suites[i];
    }
    suites.push(Suite {
        name: name.to_string(),
        cases: Vec::new(),
    });
    let last = suites.len() - 1;
    &mut suites[last]
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").to_string()
}

/// The report of a run's events and, when it failed, its error.
pub fn render(plan: &str, events: &[Event], error: Option<&EngineError>) -> String {
    let mut suites: Vec<Suite> = Vec::new();
    for event in events {
        match event {
            Event::PhaseStart { phase, .. } => {
                suite(&mut suites, phase);
            }
            Event::PhaseSkipped { phase, reason } => suite(&mut suites, phase).cases.push(Case {
                name: format!("phase {phase}"),
                skipped: Some(reason.clone()),
                ..Case::default()
            }),
            Event::GateResult {
                phase,
                condition,
                ok,
                detail,
            } => suite(&mut suites, phase).cases.push(Case {
                name: format!("gate: {condition}"),
                failure: (!ok).then(|| (format!("gate not met: {detail}"), detail.clone())),
                ..Case::default()
            }),
            Event::BackupDone {
                phase,
                path,
                duration_ms,
                ..
            } => suite(&mut suites, phase).cases.push(Case {
                name: format!("backup {path}"),
                seconds: *duration_ms as f64 / 1000.0,
                ..Case::default()
            }),
            Event::BackupFailed { phase, error } => suite(&mut suites, phase).cases.push(Case {
                name: format!("backup before {phase}"),
                failure: Some((first_line(error), error.clone())),
                ..Case::default()
            }),
            Event::StepEnd { step, elapsed_ms } => {
                suite(&mut suites, &step.phase).cases.push(Case {
                    name: format!("#{} {}", step.step, step.label),
                    seconds: *elapsed_ms as f64 / 1000.0,
                    ..Case::default()
                })
            }
            Event::StepSkipped { step, reason } => {
                suite(&mut suites, &step.phase).cases.push(Case {
                    name: format!("#{} {}", step.step, step.label),
                    skipped: Some(reason.clone()),
                    ..Case::default()
                })
            }
            Event::StepFailed { step, error, sql } => {
                let mut text = error.clone();
                if let Some(sql) = sql {
                    text.push_str(&format!("\nSQL: {sql}"));
                }
                suite(&mut suites, &step.phase).cases.push(Case {
                    name: format!("#{} {}", step.step, step.label),
                    failure: Some((first_line(error), text)),
                    ..Case::default()
                })
            }
            _ => {}
        }
    }
    let has_failure = suites
        .iter()
        .any(|s| s.cases.iter().any(|c| c.failure.is_some()));
    if let Some(err) = error.filter(|_| !has_failure) {
        suite(&mut suites, "run").cases.push(Case {
            name: format!("run {plan}"),
            failure: Some((first_line(&err.to_string()), err.to_string())),
            ..Case::default()
        });
    }
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let total: usize = suites.iter().map(|s| s.cases.len()).sum();
    let failures: usize = suites
        .iter()
        .map(|s| s.cases.iter().filter(|c| c.failure.is_some()).count())
        .sum();
    let _ = writeln!(
        out,
        "<testsuites name=\"{}\" tests=\"{total}\" failures=\"{failures}\">",
        escape(&format!("phased {plan}"))
    );
    for s in &suites {
        let seconds: f64 = s.cases.iter().map(|c| c.seconds).sum();
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" time=\"{seconds:.3}\">",
            escape(&s.name),
            s.cases.len(),
            s.cases.iter().filter(|c| c.failure.is_some()).count(),
            s.cases.iter().filter(|c| c.skipped.is_some()).count(),
        );
        for c in &s.cases {
            let head = format!(
                "    <testcase name=\"{}\" classname=\"{}\" time=\"{:.3}\"",
                escape(&c.name),
                escape(&format!("{plan}.{}", s.name)),
                c.seconds
            );
            match (&c.failure, &c.skipped) {
                (Some((message, text)), _) => {
                    let _ = writeln!(
                        out,
                        "{head}>\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                        escape(message),
                        escape(text)
                    );
                }
                (None, Some(reason)) => {
                    let _ = writeln!(
                        out,
                        "{head}>\n      <skipped message=\"{}\"/>\n    </testcase>",
                        escape(reason)
                    );
                }
                (None, None) => {
                    let _ = writeln!(out, "{head}/>");
                }
            }
        }
        let _ = writeln!(out, "  </testsuite>");
    }
    out.push_str("</testsuites>\n");
    out
}

/// Escapes text for XML attributes and content; characters XML 1.0 cannot hold become U+FFFD.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\t' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::StepId;

    #[test]
    fn escapes_markup_and_control_characters() {
        assert_eq!(
            escape("a<b & \"c\" 'd'>\u{1}"),
            "a&lt;b &amp; &quot;c&quot; &apos;d&apos;&gt;\u{FFFD}"
        );
    }

    #[test]
    fn a_failed_step_is_a_failure_in_its_phase() {
        let step = StepId {
            phase: "expand".into(),
            step: 2,
            label: "sql <bad>".into(),
        };
        let events = vec![
            Event::PhaseStart {
                phase: "expand".into(),
                kind: "expand".into(),
                description: None,
            },
            Event::StepFailed {
                step,
                error: "syntax error at \"&\"".into(),
                sql: Some("SELEC 1 & 2".into()),
            },
        ];
        let xml = render("p", &events, None);
        assert!(
            xml.contains("<testsuite name=\"expand\" tests=\"1\" failures=\"1\""),
            "{xml}"
        );
        assert!(xml.contains("name=\"#2 sql &lt;bad&gt;\""), "{xml}");
        assert!(xml.contains("SQL: SELEC 1 &amp; 2"), "{xml}");
    }
}
