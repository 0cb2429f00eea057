//! Turning run events into output: progress bars and lines on stderr for people, NDJSON on
//! stdout for machines. Logs go through tracing-indicatif so they never tear a bar.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::ProgressStyle;
use tracing::Span;
use tracing_indicatif::span_ext::IndicatifSpanExt;
use tracing_indicatif::suspend_tracing_indicatif;

use crate::engine::events::Outcome;
use crate::engine::{Event, Reporter};

/// NDJSON: one event per line on stdout.
pub struct JsonReporter;

impl Reporter for JsonReporter {
    fn emit(&mut self, event: &Event) {
        if let Ok(line) = serde_json::to_string(event) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }
}

/// Lines for people on stderr; a bar per backfill or index build when stderr is a terminal.
pub struct HumanReporter {
    terminal: bool,
    bar: Option<(Span, String)>,
    last_plain_progress: Option<Instant>,
    /// The signal of the last slowdown a plain line announced (cleared once the pace rises).
    last_plain_slowdown: Option<String>,
    /// The latest progress line not printed yet (plain output prints every few seconds, and
    /// always the last one before the step's end).
    pending_plain: Option<String>,
    /// An index build's phase and the sessions it waits for, as last shown: a change is shown
    /// at once.
    index_shown: Option<String>,
}

impl HumanReporter {
    pub fn new() -> Self {
        Self {
            terminal: std::io::stderr().is_terminal(),
            bar: None,
            last_plain_progress: None,
            last_plain_slowdown: None,
            pending_plain: None,
            index_shown: None,
        }
    }

    /// The terminal's bar for step `id`, started with `template` (after the step's name) when
    /// the step has none yet.
    fn bar_for(&mut self, id: &str, label: &str, template: &str) -> Option<&Span> {
        if self.bar.as_ref().map(|(_, i)| i != id).unwrap_or(true) {
            self.end_bar();
            let span = tracing::info_span!("phased_progress");
            // indicatif templates treat braces as keys: the label is escaped.
            let prefix = format!("{id} {label}")
                .replace('{', "{{")
                .replace('}', "}}");
            let template = format!("  {{spinner}} {prefix} {template}");
            span.pb_set_style(
                &ProgressStyle::with_template(&template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            span.pb_start();
            self.bar = Some((span, id.to_string()));
        }
        self.bar.as_ref().map(|(span, _)| span)
    }

    fn line(&self, text: String) {
        suspend_tracing_indicatif(|| eprintln!("{text}"));
    }

    fn end_bar(&mut self) {
        if let Some((span, _)) = self.bar.take() {
            drop(span);
        }
        if let Some(line) = self.pending_plain.take() {
            self.line(line);
        }
    }
}

impl Default for HumanReporter {
    fn default() -> Self {
        Self::new()
    }
}

fn secs(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

impl Reporter for HumanReporter {
    fn emit(&mut self, event: &Event) {
        match event {
            Event::RunStart {
                plan,
                database,
                phases,
            } => self.line(format!(
                "phased: plan {plan} on {database} — phases: {}",
                phases.join(" → ")
            )),
            Event::LeaseWait {
                key,
                holder,
                progress,
                waited_ms,
                timeout_ms,
            } => self.line(format!(
                "  ⏳ waiting for the lease {key}: held by {holder}; {progress} (waited {} of {})",
                secs(*waited_ms),
                crate::plan::PlanDuration::from_millis(*timeout_ms)
            )),
            Event::LeaseAcquired { key, waited_ms } => self.line(format!(
                "  took the lease {key} after waiting {}",
                secs(*waited_ms)
            )),
            Event::PhaseStart {
                phase,
                kind,
                description,
            } => self.line(match description {
                Some(d) => format!("\n▸ phase {phase} ({kind}): {d}"),
                None => format!("\n▸ phase {phase} ({kind})"),
            }),
            Event::PhaseSkipped { phase, reason } => {
                self.line(format!("▸ phase {phase}: skipped, {reason}"))
            }
            Event::PhaseEnd { phase, elapsed_ms } => {
                self.line(format!("  phase {phase} done in {}", secs(*elapsed_ms)))
            }
            Event::GateResult {
                phase,
                condition,
                ok,
                detail,
            } => self.line(format!(
                "  gate of {phase}: {} {condition} — {detail}",
                if *ok { "✓" } else { "✗" }
            )),
            Event::StepStart { step, attempt } => {
                if *attempt > 1 {
                    self.line(format!(
                        "  … {}#{} {} (attempt {attempt})",
                        step.phase, step.step, step.label
                    ));
                }
            }
            Event::StepSkipped { step, reason } => self.line(format!(
                "  · {}#{} {} — skipped, {reason}",
                step.phase, step.step, step.label
            )),
            Event::StepRetry {
                step,
                attempt,
                error,
                wait_ms,
                blockers,
            } => {
                let mut text = format!(
                    "  ↻ {}#{} {}: attempt {attempt} failed ({}); retrying in {}",
                    step.phase,
                    step.step,
                    step.label,
                    error.lines().next().unwrap_or(""),
                    secs(*wait_ms)
                );
                for blocker in blockers {
                    text.push_str(&format!("\n      blocked by {blocker}"));
                }
                self.line(text)
            }
            Event::StepWaiting {
                step,
                attempt,
                table,
                lock,
                blockers,
                wait_ms,
            } => {
                let mut text = format!(
                    "  ⏸ {}#{} {}: not queueing for {lock} on {table} (attempt {attempt}): {} session(s) hold conflicting locks; looking again in {}",
                    step.phase,
                    step.step,
                    step.label,
                    blockers.len(),
                    secs(*wait_ms)
                );
                for blocker in blockers {
                    text.push_str(&format!("\n      held by {blocker}"));
                }
                self.line(text)
            }
            Event::StepEnd { step, elapsed_ms } => {
                self.end_bar();
                self.line(format!(
                    "  ✓ {}#{} {}  ({})",
                    step.phase,
                    step.step,
                    step.label,
                    secs(*elapsed_ms)
                ))
            }
            Event::StepFailed { step, error, sql } => {
                self.end_bar();
                let mut text = format!(
                    "  ✗ {}#{} {}: {}",
                    step.phase,
                    step.step,
                    step.label,
                    error.replace('\n', "\n    ")
                );
                if let Some(sql) = sql {
                    text.push_str(&format!("\n    SQL: {}", sql.replace('\n', "\n         ")));
                }
                self.line(text)
            }
            Event::BackfillProgress {
                step,
                rows_done,
                rows_total,
                batch_size,
                rows_per_second,
                paused,
                pace,
            } => {
                let status = match (paused, pace) {
                    (Some(reason), _) => format!("paused: {reason}"),
                    (None, Some(pace)) => format!(
                        "{rows_per_second:.0} rows/s, batch {batch_size}; {}",
                        pace.describe()
                    ),
                    (None, None) => format!("{rows_per_second:.0} rows/s, batch {batch_size}"),
                };
                // A slowdown is news: a plain line says so at once, once per signal until the
                // pace rises again.
                use crate::engine::pace::Trend;
                let mut news = false;
                if let Some(pace) = pace.as_ref().filter(|_| paused.is_none()) {
                    match pace.trend {
                        Trend::Down => {
                            news = self.last_plain_slowdown.as_deref() != Some(&pace.signal);
                            self.last_plain_slowdown = Some(pace.signal.clone());
                        }
                        Trend::Up => self.last_plain_slowdown = None,
                        Trend::Start | Trend::Steady => {}
                    }
                }
                if self.terminal {
                    let id = format!("{}#{}", step.phase, step.step);
                    let template = "[{bar:30}] {human_pos}/{human_len} rows, eta {eta} — {msg}";
                    if let Some(span) = self.bar_for(&id, &step.label, template) {
                        span.pb_set_length(rows_total.unwrap_or(0).max(*rows_done));
                        span.pb_set_position(*rows_done);
                        span.pb_set_message(&status);
                    }
                } else {
                    let total = rows_total.map(|t| format!("/{t}")).unwrap_or_default();
                    let line = format!(
                        "    {}#{} {}: {rows_done}{total} rows ({status})",
                        step.phase, step.step, step.label
                    );
                    let due = self
                        .last_plain_progress
                        .is_none_or(|t| t.elapsed() >= Duration::from_secs(5))
                        || paused.is_some()
                        || news;
                    if due {
                        self.pending_plain = None;
                        self.line(line);
                        self.last_plain_progress = Some(Instant::now());
                    } else {
                        self.pending_plain = Some(line);
                    }
                }
            }
            Event::IndexProgress { step, progress } => {
                let id = format!("{}#{}", step.phase, step.step);
                let shown = format!(
                    "{id}|{}|{:?}",
                    progress.phase,
                    progress
                        .waiting_for
                        .iter()
                        .map(|w| w.pid)
                        .collect::<Vec<_>>()
                );
                let changed = self.index_shown.as_deref() != Some(shown.as_str());
                self.index_shown = Some(shown);
                let waiting: String = progress
                    .waiting_for
                    .iter()
                    .map(|w| format!("\n      waiting for {w}"))
                    .collect();
                if self.terminal {
                    if changed && !waiting.is_empty() {
                        self.line(format!(
                            "    {id} {}: {}{waiting}",
                            step.label, progress.phase
                        ));
                    }
                    if let Some(span) = self.bar_for(&id, &step.label, "[{bar:30}] {msg}") {
                        span.pb_set_length(progress.total.unwrap_or(0));
                        span.pb_set_position(progress.done.unwrap_or(0));
                        span.pb_set_message(&progress.summary());
                    }
                } else {
                    let line = format!("    {id} {}: {}", step.label, progress.summary());
                    let due = self
                        .last_plain_progress
                        .is_none_or(|t| t.elapsed() >= Duration::from_secs(5));
                    if changed || due {
                        self.pending_plain = None;
                        self.line(if changed {
                            format!("{line}{waiting}")
                        } else {
                            line
                        });
                        self.last_plain_progress = Some(Instant::now());
                    } else {
                        self.pending_plain = Some(line);
                    }
                }
            }
            Event::Log { level, message } => self.line(format!("    [{level}] {message}")),
            Event::RollbackStart {
                plan,
                database,
                to,
                phases,
            } => self.line(format!(
                "phased: rolling back plan {plan} on {database} {} — phases, newest first: {}",
                to.as_ref()
                    .map(|p| format!("to phase {p}"))
                    .unwrap_or_else(|| "to the start".to_string()),
                phases.iter().rev().cloned().collect::<Vec<_>>().join(" → ")
            )),
            Event::StepUndo { step, inverse } => self.line(format!(
                "  ↶ {}#{} {}: {}",
                step.phase,
                step.step,
                step.label,
                inverse.replace('\n', " ")
            )),
            Event::StepUndone { step, elapsed_ms } => self.line(format!(
                "  ✓ undone {}#{} {}  ({})",
                step.phase,
                step.step,
                step.label,
                secs(*elapsed_ms)
            )),
            Event::RunEnd {
                outcome,
                remaining,
                elapsed_ms,
            } => {
                self.end_bar();
                let took = secs(*elapsed_ms);
                self.line(match outcome {
                    Outcome::Done => format!("\ndone in {took}: every phase of the plan is done"),
                    Outcome::Partial => format!(
                        "\nthe phases asked for are done in {took}; still to run: {} (`phased run` continues)",
                        remaining.join(", ")
                    ),
                    Outcome::RolledBack => format!("\nrolled back in {took}"),
                    Outcome::Restored => format!("\nrestored in {took}"),
                })
            }
            Event::BackupStart { phase, path } => {
                self.end_bar();
                if self.terminal {
                    let span = tracing::info_span!("phased_progress");
                    span.pb_set_style(
                        &ProgressStyle::with_template(
                            "  {spinner} {msg}: {bytes} written ({bytes_per_sec}, {elapsed})",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    span.pb_set_message(&format!("backup before {phase}"));
                    span.pb_start();
                    self.bar = Some((span, format!("backup:{phase}")));
                } else {
                    self.line(format!("  backup before {phase} → {path}"));
                }
            }
            Event::BackupProgress { phase, bytes } => {
                if let Some((span, id)) = &self.bar {
                    if id == &format!("backup:{phase}") {
                        span.pb_set_position(*bytes);
                        span.pb_tick();
                    }
                }
            }
            Event::BackupDone {
                phase,
                path,
                size_bytes,
                sha256,
                duration_ms,
                verified,
            } => {
                self.end_bar();
                self.line(format!(
                    "  ✓ backup before {phase}: {path} ({}, sha256 {}…, {}, {})",
                    indicatif::HumanBytes(*size_bytes),
                    sha256.get(..12).unwrap_or(sha256),
                    if *verified {
                        "verified"
                    } else {
                        "NOT verified"
                    },
                    secs(*duration_ms)
                ))
            }
            Event::BackupFailed { phase, error } => {
                self.end_bar();
                self.line(format!(
                    "  ✗ backup before {phase}: {}",
                    error.lines().next().unwrap_or("")
                ))
            }
            Event::BackupPruned { path } => {
                self.line(format!("  · pruned old backup {path} (backup.keep)"))
            }
        }
    }
}

/// Sets up logging: `RUST_LOG` or `-v`, on stderr, routed through the progress bars.
pub fn init_logging(verbose: u8, json: bool) {
    use tracing_subscriber::filter::{filter_fn, EnvFilter};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    let default = match verbose {
        0 => "warn,phased=info",
        1 => "info,phased=debug",
        _ => "debug,phased=trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let indicatif = tracing_indicatif::IndicatifLayer::new();
    let writer = indicatif.get_stderr_writer();
    let only_progress = filter_fn(|meta| meta.name() == "phased_progress");
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(super::config::color())
        .with_target(false)
        .without_time();
    let registry = tracing_subscriber::registry();
    let result = if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .try_init()
    } else {
        registry
            .with(fmt.with_filter(filter))
            .with(indicatif.with_filter(only_progress))
            .try_init()
    };
    let _ = result;
}
