//! The command line: parse → resolve → execute, and the mapping of outcomes to exit codes.

pub mod args;
pub mod backups;
pub mod commands;
pub mod config;
pub mod db;
pub mod junit;
pub mod lint;
pub mod output;
pub mod prompt;
pub mod status;

use std::process::ExitCode;

use clap::Parser;

pub use args::Cli;

/// Writes a line of results on stdout. A reader that went away (`phased status | head`) is not
/// worth a panic: the line is dropped.
pub fn out_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{args}");
}

/// Writes text on stdout as it is, tolerating a closed stdout like [`out_line`].
pub fn out_text(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
}

/// Prints a result as pretty JSON on stdout; the exit code to return.
pub fn out_json<T: serde::Serialize>(value: &T) -> u8 {
    match serde_json::to_string_pretty(value) {
        Ok(text) => {
            out_line(format_args!("{text}"));
            exit::OK
        }
        Err(e) => {
            eprintln!("error: cannot render the result as JSON: {e}");
            exit::FAILED
        }
    }
}

/// `println!` that tolerates a closed stdout.
#[macro_export]
#[doc(hidden)]
macro_rules! outln {
    () => {
        $crate::cli::out_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::cli::out_line(format_args!($($arg)*))
    };
}

/// Exit codes, as documented in the README.
pub mod exit {
    /// Done.
    pub const OK: u8 = 0;
    /// A step failed (state saved; a re-run resumes), drift, or a database error.
    pub const FAILED: u8 = 1;
    /// Invalid plan or usage.
    pub const INVALID: u8 = 2;
    /// A gate is not met.
    pub const GATE: u8 = 3;
    /// Another runner holds the plan's lock.
    pub const LOCKED: u8 = 4;
    // `run` interrupted by SIGINT / SIGTERM: 130 / 143 (engine::interrupt::exit_code).
}

/// Entry point used by `main.rs`.
pub fn main() -> ExitCode {
    let mut cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let code = if err.use_stderr() {
                exit::INVALID
            } else {
                exit::OK
            };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    cli.format = match cli.output {
        args::OutputFormat::Json => args::Format::Json,
        args::OutputFormat::Human => args::Format::Human,
        args::OutputFormat::Github => {
            if !matches!(
                cli.command,
                args::Command::Lint(_) | args::Command::Validate { .. }
            ) {
                eprintln!("error: `--format github` is for `phased lint` and `phased validate`");
                return ExitCode::from(exit::INVALID);
            }
            args::Format::Human
        }
    };
    output::init_logging(cli.verbose, cli.format == args::Format::Json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(exit::FAILED);
        }
    };
    ExitCode::from(runtime.block_on(commands::execute(cli)))
}
