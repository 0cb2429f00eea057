//! `phased backups PLAN` and `phased restore BACKUP`: list the recorded backups, put one back.

use std::io::IsTerminal;
use std::path::Path;

use super::args::{Cli, Format, RestoreArgs};
use super::config::{self, prepare, Open};
use super::exit;
use super::prompt::confirm;
use crate::db::backup::{BackupError, RestoreNote};
use crate::db::{DatabaseUrl, Dialect};
use crate::engine::backup::{self, BackupFile};
use crate::with_target;

/// The line `status` and `restore` print about a restore.
pub fn restore_line(note: &RestoreNote) -> String {
    let mut line = format!("restored on {} from backup {}", note.restored_at, note.path);
    if let (Some(plan), Some(phase)) = (&note.plan, &note.phase) {
        line.push_str(&format!(" (plan {plan}, taken before phase {phase}"));
        if let Some(at) = &note.backup_created_at {
            line.push_str(&format!(" at {at}"));
        }
        line.push(')');
    }
    line.push_str(": the state below is the one the backup holds");
    line
}

fn human_size(bytes: i64) -> String {
    indicatif::HumanBytes(u64::try_from(bytes).unwrap_or(0)).to_string()
}

pub async fn list(cli: &Cli, path: &Path) -> u8 {
    let (loaded, _url, mut target) = match prepare(cli, path, Open::Existing).await {
        Ok(v) => v,
        Err(code) => return code,
    };
    let plan_id = loaded.plan.id().to_string();
    let result = with_target!(&mut target, t => backup::list(t, &plan_id).await);
    let listings = match result {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::FAILED;
        }
    };
    if cli.format == Format::Json {
        return super::out_json(&listings);
    }
    if listings.is_empty() {
        crate::outln!("no backups recorded for plan {plan_id}");
        return exit::OK;
    }
    crate::outln!("backups of plan {plan_id}, newest first:");
    for l in &listings {
        let b = &l.record;
        crate::outln!(
            "  {:>4}  {}  before {:<12} {:>10}  {:>7}  sha256 {}  {}{}{}",
            b.id,
            b.created_at,
            b.phase,
            human_size(b.size_bytes),
            format!("{}ms", b.duration_ms),
            b.sha256.get(..12).unwrap_or(&b.sha256),
            if b.verified {
                "verified"
            } else {
                "NOT verified"
            },
            if l.file_present {
                String::new()
            } else {
                "  FILE MISSING".to_string()
            },
            format_args!("\n        {}", b.path),
        );
    }
    exit::OK
}

fn dialect_name(d: Dialect) -> &'static str {
    match d {
        Dialect::Postgres => "PostgreSQL",
        Dialect::Sqlite => "SQLite",
    }
}

fn usage(message: String) -> u8 {
    eprintln!("error: {message}");
    exit::INVALID
}

fn report(e: &BackupError) {
    eprintln!("error: {}", e.message.replace('\n', "\n  "));
    if let Some(hint) = &e.hint {
        eprintln!("  hint: {hint}");
    }
}

pub async fn restore(cli: &Cli, args: &RestoreArgs) -> u8 {
    let file: BackupFile = match backup::inspect(&args.backup) {
        Ok(f) => f,
        Err(e) => {
            report(&e);
            return exit::INVALID;
        }
    };
    // A checksum record that is there but cannot be read: refused before anything else, whatever
    // the database (the record is also what would name it).
    if let Some(e) = &file.unreadable_sidecar {
        report(e);
        return exit::FAILED;
    }
    // --database / DATABASE_URL, else the database the backup was taken from.
    let text = match (&cli.database, &file.sidecar) {
        (Some(url), _) => url.clone(),
        (None, Some(sidecar)) => sidecar.database.clone(),
        (None, None) => {
            return usage(format!(
                "{} has no {} beside it saying where it was taken from: pass --database URL",
                args.backup.display(),
                backup::sidecar_path(&args.backup).display()
            ))
        }
    };
    let url = match config::database_url(Some(&text)) {
        Ok(u) => u,
        Err(e) => return usage(e),
    };
    let target_dialect = match url {
        DatabaseUrl::Postgres(_) => Dialect::Postgres,
        DatabaseUrl::Sqlite(_) => Dialect::Sqlite,
    };
    if target_dialect != file.dialect {
        return usage(format!(
            "{} is a {} backup and cannot be restored into {} ({})",
            args.backup.display(),
            dialect_name(file.dialect),
            url.redacted(),
            dialect_name(target_dialect)
        ));
    }
    let what = match &file.sidecar {
        Some(s) => format!(
            "the backup of plan {} taken before phase {} at {}",
            s.backup.plan, s.backup.phase, s.backup.created_at
        ),
        None => format!("the backup {}", args.backup.display()),
    };
    if !args.yes {
        let terminal = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
        if !terminal {
            return usage(format!(
                "restoring replaces what {} holds with {what}; pass --yes to confirm (stdin is not a terminal)",
                url.redacted()
            ));
        }
        if !confirm(&format!(
            "Replace what {} holds with {what}?",
            url.redacted()
        )) {
            eprintln!("not restored");
            return exit::FAILED;
        }
    }
    if file.sidecar.is_none() {
        eprintln!(
            "warning: {} has no {} beside it: its SHA-256 cannot be checked",
            args.backup.display(),
            backup::sidecar_path(&args.backup).display()
        );
    }
    if cli.format == Format::Human {
        eprintln!(
            "restoring {} into {} …",
            args.backup.display(),
            url.redacted()
        );
    }
    let started = std::time::Instant::now();
    match backup::restore(&file, &url).await {
        Ok(restored) => {
            match cli.format {
                Format::Json => {
                    crate::outln!(
                        "{}",
                        serde_json::json!({
                            "event": "restored",
                            "database": url.redacted(),
                            "created": restored.created,
                            "note": restored.note,
                        })
                    );
                    let end = crate::engine::Event::RunEnd {
                        outcome: crate::engine::events::Outcome::Restored,
                        remaining: Vec::new(),
                        elapsed_ms: u64::try_from(started.elapsed().as_millis())
                            .unwrap_or(u64::MAX),
                    };
                    crate::outln!("{}", serde_json::to_string(&end).unwrap_or_default());
                }
                Format::Human => {
                    crate::outln!(
                        "restored {} into {}{}",
                        restored.note.path,
                        url.redacted(),
                        if restored.created { " (created)" } else { "" }
                    );
                    if let (Some(plan), Some(phase)) = (&restored.note.plan, &restored.note.phase) {
                        crate::outln!(
                            "plan {plan} is back where it stood before phase {phase}; `phased status` on this database shows it"
                        );
                    }
                }
            }
            exit::OK
        }
        Err(e) => {
            report(&e);
            exit::FAILED
        }
    }
}
