//! The `command` step: run a program (no shell) with its arguments and environment, under a
//! timeout; a non-zero exit fails the step.

use std::path::Path;
use std::process::Stdio;

use super::events::{Event, Reporter};
use crate::db::DbError;
use crate::plan::Command;

pub async fn run(
    step: &Command,
    base_dir: &Path,
    reporter: &mut dyn Reporter,
) -> Result<(), DbError> {
    run_argv(&step.run, step, base_dir, reporter).await
}

/// Runs `argv` with the step's environment and timeout, from the plan's folder.
pub async fn run_argv(
    argv: &[String],
    step: &Command,
    base_dir: &Path,
    reporter: &mut dyn Reporter,
) -> Result<(), DbError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(DbError::Unexpected("command has no program".into()));
    };
    let shown = argv.join(" ");
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(&step.env)
        .current_dir(base_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| DbError::Unexpected(format!("cannot start `{shown}`: {e}")))?;
    let output = match tokio::time::timeout(step.timeout.0, child.wait_with_output()).await {
        Ok(result) => result.map_err(|e| DbError::Unexpected(format!("`{shown}` failed: {e}")))?,
        Err(_) => {
            return Err(DbError::Unexpected(format!(
                "`{shown}` did not finish within {}",
                step.timeout
            )))
        }
    };
    for (stream, bytes) in [("stdout", &output.stdout), ("stderr", &output.stderr)] {
        let text = String::from_utf8_lossy(bytes);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            reporter.emit(&Event::Log {
                level: "info".to_string(),
                message: format!("{program} {stream}: {line}"),
            });
        }
    }
    if output.status.success() {
        Ok(())
    } else {
        let tail = String::from_utf8_lossy(&output.stderr)
            .lines()
            .last()
            .unwrap_or("")
            .to_string();
        Err(DbError::Unexpected(format!(
            "`{shown}` exited with {}{}",
            output.status,
            if tail.is_empty() {
                String::new()
            } else {
                format!(": {tail}")
            }
        )))
    }
}
