//! `phased plan`: the dry run. It is the real run — the runner, each step's code, the
//! database's executor — with the executor recording instead of sending (`db::recorder`), so
//! what it prints is what `phased run` would send, in that order, by construction. The
//! database's state and catalog are read as usual (offline: nothing is there).
//!
//! Where a run does something other than send a statement on its connection — take the lease,
//! check a gate, take a backup, run a program — the dry run says so instead of doing it.
//!
//! On PostgreSQL each statement is followed by the table locks it takes, read from its parse
//! (`plan::lint::locks`), and each step by the lint findings suppressed in its SQL, with the
//! comment or `allow:` that suppressed them.

use std::fmt::Write as _;

use super::events::{Event, Reporter};
use super::runner::{self, RunOptions};
use super::EngineError;
use crate::db::recorder::{Effect, Entry, Sent};
use crate::db::{Database, Dialect};
use crate::plan::LoadedPlan;

/// Runs the plan (or one phase of it) on a recording target; returns what was recorded.
pub async fn dry_run<T: Database>(
    target: &mut T,
    loaded: &LoadedPlan,
    phase: Option<&str>,
) -> Result<Vec<Entry>, EngineError> {
    let recorder = target
        .recorder()
        .cloned()
        .ok_or_else(|| EngineError::Usage("a dry run needs a recording target".to_string()))?;
    let options = RunOptions {
        phase: phase.map(str::to_string),
        ..RunOptions::default()
    };
    runner::run(target, loaded, &options, &mut Silent).await?;
    Ok(recorder.entries())
}

/// The run's own events are not the dry run's output: the recording is.
struct Silent;

impl Reporter for Silent {
    fn emit(&mut self, _event: &Event) {}
}

/// The recording as SQL a person reads: statements as sent (on PostgreSQL with the locks they
/// take), look-ups and phased's own bookkeeping as comments, phases and steps as headings.
/// `step_notes` are `(phase#N, line)` pairs shown under a pending step's heading: the lint
/// findings suppressed in its SQL (`plan::lint::suppressed_in_plan`).
pub fn render(
    header: &str,
    dialect: Dialect,
    entries: &[Entry],
    phase: Option<&str>,
    step_notes: &[(String, String)],
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{header}");
    let _ = writeln!(
        out,
        "-- nothing below has been run; `phased run` would send it in this order."
    );
    // Before the first phase: the state tables made or upgraded, in one line.
    let first = entries
        .iter()
        .position(|e| matches!(e, Entry::Phase { .. }))
        .unwrap_or(entries.len());
    let setup = entries[..first]
        .iter()
        .filter(|e| {
            matches!(
                e,
                Entry::Sql(Sent {
                    effect: Effect::State | Effect::Write,
                    ..
                })
            )
        })
        .count();
    if setup > 0 {
        let _ = writeln!(
            out,
            "-- first, phased's state tables are created or upgraded where needed ({setup} statement(s), in one transaction)"
        );
    }
    for entry in &entries[..first] {
        if let Entry::Note { text } = entry {
            let _ = writeln!(out, "-- {text}");
        }
    }
    let mut pending = 0usize;
    let mut repeating = false;
    for entry in &entries[first..] {
        match entry {
            Entry::Phase { name, kind, notes } => {
                let _ = writeln!(out, "\n-- ═══ phase {name} ({kind}) ═══");
                for note in notes {
                    let _ = writeln!(out, "-- {note}");
                }
            }
            Entry::Step {
                id,
                label,
                status,
                line,
            } => {
                if status == "done" {
                    let _ = writeln!(out, "\n-- step {id} {label}: done, skipped");
                } else {
                    pending += 1;
                    let _ = writeln!(out, "\n-- step {id} {label} ({status}, line {line})");
                    for (_, note) in step_notes.iter().filter(|(step, _)| step == id) {
                        let _ = writeln!(out, "-- {note}");
                    }
                }
            }
            Entry::Note { text } => {
                let _ = writeln!(out, "-- {text}");
            }
            Entry::Sql(sent) => {
                if sent.repeats && !repeating {
                    let _ = writeln!(out, "-- each batch, in one transaction:");
                }
                repeating = sent.repeats;
                write_statement(&mut out, dialect, sent);
            }
        }
    }
    let _ = writeln!(
        out,
        "\n-- {pending} pending step(s){}",
        phase.map(|p| format!(" in phase {p}")).unwrap_or_default()
    );
    out
}

/// `--   takes MODE on table` for each table a statement locks (from its parse); a text of
/// several statements names the line of each.
fn write_locks(out: &mut String, sql: &str) {
    let locks = crate::plan::lint::locks::locks(sql);
    let several = locks.iter().any(|l| l.line != 1);
    for lock in locks {
        let at = if several {
            format!(" (its line {})", lock.line)
        } else {
            String::new()
        };
        let _ = writeln!(out, "--   takes {} on {}{at}", lock.mode, lock.table);
    }
}

fn one_line(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn write_statement(out: &mut String, dialect: Dialect, sent: &Sent) {
    match sent.effect {
        Effect::Read => {
            let _ = writeln!(out, "-- look-up: {}", one_line(&sent.sql));
        }
        Effect::State => {
            let _ = writeln!(out, "-- state: {}", one_line(&sent.sql));
        }
        Effect::Write => {
            let _ = writeln!(out, "{};", sent.sql);
            if dialect == Dialect::Postgres {
                write_locks(out, &sent.sql);
            }
        }
    }
    if !sent.params.is_empty() {
        let names: Vec<String> = (1..=sent.params.len())
            .map(|i| match dialect {
                Dialect::Postgres => format!("${i}"),
                Dialect::Sqlite => format!("?{i}"),
            })
            .collect();
        let _ = writeln!(
            out,
            "--   {} = {}",
            names.join(", "),
            sent.params.join(", ")
        );
    }
}
