//! `phased status PLAN [--watch]`: where a deployment stands, from the state in the target
//! database — so an on-call engineer can follow, from any machine, a deploy that CI is running.
//! `--watch` reads it again every `--interval`: on a terminal it redraws the whole view; in a
//! pipe or a log it prints one line each time something changed (no flicker, no escape codes).

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use super::args::{Cli, Format, StatusArgs};
use super::config::{prepare, Open};
use super::exit;
use crate::db::StepStatus;
use crate::engine;
use crate::engine::status::{PlanStatus, StepStatusView};
use crate::plan::PlanDuration;
use crate::with_target;

pub async fn status(cli: &Cli, args: &StatusArgs) -> u8 {
    let interval = match PlanDuration::parse(&args.interval) {
        Ok(d) if !d.0.is_zero() => d.0,
        _ => {
            eprintln!(
                "error: --interval `{}` is not a duration above zero (e.g. 1s, 250ms)",
                args.interval
            );
            return exit::INVALID;
        }
    };
    let (loaded, _url, mut target) = match prepare(cli, &args.plan, Open::Existing).await {
        Ok(v) => v,
        Err(code) => return code,
    };
    let terminal = std::io::stdout().is_terminal();
    let mut last = String::new();
    let mut reads = 0u64;
    loop {
        let result = with_target!(&mut target, t => engine::status::status(t, &loaded.plan).await);
        let status = match result {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::FAILED;
            }
        };
        reads += 1;
        if !args.watch {
            if cli.format == Format::Json {
                return super::out_json(&status);
            }
            crate::cli::out_text(&view(&status, &args.plan));
            return exit::OK;
        }
        match cli.format {
            Format::Json => {
                let line = serde_json::to_string(&status).unwrap_or_default();
                if line != last {
                    crate::outln!("{line}");
                    last = line;
                }
            }
            Format::Human if terminal => {
                // Home, clear, then the view: a redraw, not a scroll.
                crate::cli::out_text(&format!(
                    "\u{1b}[H\u{1b}[2J{}\n(every {}; Ctrl-C to stop)\n",
                    view(&status, &args.plan),
                    PlanDuration(interval)
                ));
            }
            Format::Human => {
                let line = summary(&status);
                if line != last {
                    crate::outln!("{} {line}", clock());
                    last = line;
                }
            }
        }
        if args.count.is_some_and(|n| reads >= n) {
            return exit::OK;
        }
        tokio::time::sleep(interval).await;
    }
}

/// The time of day (UTC) a watched line was read.
fn clock() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!("{:02}:{:02}:{:02}", now.hour(), now.minute(), now.second())
}

/// The whole view: the plan, the runner, every phase and step.
pub fn view(status: &PlanStatus, path: &Path) -> String {
    let mut out = format!("plan {} on {}\n", status.plan, status.database);
    if let Some(note) = &status.restored {
        out.push_str(&format!("{}\n", super::backups::restore_line(note)));
    }
    out.push_str(&match (&status.runner, status.orphaned) {
        (Some(runner), _) => format!("runner: alive — {runner} holds the plan's lease\n"),
        (None, true) => format!(
            "runner: none — a step shows `running` but no runner holds the lease: its run was interrupted or killed; `phased run {}` resumes it\n",
            path.display()
        ),
        (None, false) => "runner: none\n".to_string(),
    });
    if let Some(control) = &status.control {
        if control.paused {
            out.push_str(&format!(
                "backfills: paused by {} at {} (`phased resume` resumes them)\n",
                control.set_by, control.set_at
            ));
        } else if let Some(rate) = control.max_rows_per_second {
            out.push_str(&format!(
                "backfills: at most {rate} rows/s (`phased pace` by {} at {})\n",
                control.set_by, control.set_at
            ));
        }
    }
    for phase in &status.phases {
        out.push_str(&format!(
            "\n{} ({}) — {}\n",
            phase.name, phase.kind, phase.status
        ));
        for step in &phase.steps {
            let mut line = format!(
                "  {:>2}. {:<12} {}",
                step.step,
                step.status.as_str(),
                step.label
            );
            if step.attempts > 1 {
                line.push_str(&format!("  [{} attempts]", step.attempts));
            }
            if step.rows_done.is_some() {
                line.push_str(&format!("  {}", rows(step)));
                if let Some(checkpoint) = &step.checkpoint {
                    if step.status != StepStatus::Done {
                        line.push_str(&format!(", checkpoint key {checkpoint}"));
                    }
                }
            }
            if let Some(finished) = &step.finished_at {
                line.push_str(&format!("  at {finished}"));
            }
            if step.drift {
                line.push_str("  DRIFT: definition changed since it ran");
            }
            out.push_str(&line);
            out.push('\n');
            if let Some(pace) = &step.pace {
                let when = if step.status == StepStatus::Running {
                    "now"
                } else {
                    "when it stopped"
                };
                out.push_str(&format!("      pace {when}: {}\n", pace.describe()));
            }
            if let Some(progress) = &step.progress {
                let when = if step.status == StepStatus::Running {
                    "now"
                } else {
                    "stopped at"
                };
                out.push_str(&format!(
                    "      {} {when}: {}\n",
                    progress.command,
                    progress.summary()
                ));
                for session in &progress.waiting_for {
                    out.push_str(&format!("        waiting for {session}\n"));
                }
            }
            if let Some(error) = &step.last_error {
                if step.status != StepStatus::Done {
                    out.push_str(&format!(
                        "      last error: {}\n",
                        error.replace('\n', "\n      ")
                    ));
                }
            }
        }
    }
    out
}

/// A backfill's progress: rows written, remaining, pace and, while it runs, the time left.
fn rows(step: &StepStatusView) -> String {
    let done = step.rows_done.unwrap_or(0);
    let mut text = format!("{done} rows written");
    match (step.status, step.rows_remaining, step.rows_total) {
        (StepStatus::Done, _, _) => text.push_str(", 0 remaining"),
        (_, Some(left), Some(_)) => {
            text.push_str(&format!(", {left} remaining"));
            if let Some(rate) = step.rows_per_second.filter(|r| *r > 0.0) {
                text.push_str(&format!(", {rate:.0} rows/s"));
                if step.status == StepStatus::Running {
                    let eta = Duration::from_secs((left as f64 / rate).ceil() as u64);
                    text.push_str(&format!(", about {} left", PlanDuration(eta)));
                }
            }
            return text;
        }
        _ => {}
    }
    if let Some(rate) = step.rows_per_second {
        text.push_str(&format!(", {rate:.0} rows/s"));
    }
    text
}

/// One line for a log: the step at work (or the last one that moved), its progress, blockers it
/// reported, and the runner.
fn summary(status: &PlanStatus) -> String {
    let steps = status
        .phases
        .iter()
        .flat_map(|p| p.steps.iter().map(move |s| (p, s)));
    let current = steps
        .clone()
        .find(|(_, s)| matches!(s.status, StepStatus::Running | StepStatus::Failed))
        .or_else(|| steps.clone().find(|(_, s)| s.status == StepStatus::Pending));
    let done = steps
        .clone()
        .filter(|(_, s)| s.status == StepStatus::Done)
        .count();
    let total = steps.count();
    let mut line = format!("{done}/{total} steps done");
    if let Some((phase, step)) = current {
        line.push_str(&format!(
            "; {}#{} {} {}",
            phase.name,
            step.step,
            step.label,
            step.status.as_str()
        ));
        if step.rows_done.is_some() {
            line.push_str(&format!(" ({})", rows(step)));
        }
        if let Some(progress) = &step.progress {
            line.push_str(&format!(" ({})", progress.summary()));
            if let Some(first) = progress.waiting_for.first() {
                line.push_str(&format!("; waiting for pid {}", first.pid));
            }
        }
        if let Some(error) = &step.last_error {
            if let Some(blocked) = error
                .lines()
                .find(|l| l.trim_start().starts_with("blocked by"))
            {
                line.push_str(&format!("; {}", blocked.trim()));
            }
        }
    }
    line.push_str(&match (&status.runner, status.orphaned) {
        (Some(runner), _) => format!("; runner: {runner}"),
        (None, true) => "; runner: none (killed?)".to_string(),
        (None, false) => "; runner: none".to_string(),
    });
    line
}
