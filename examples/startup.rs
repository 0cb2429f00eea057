//! An application that migrates its database when it starts, then serves.
//!
//! ```sh
//! cargo run --example startup -- --database sqlite://app.db --requests 3
//! curl http://127.0.0.1:PORT/        # the port it prints
//! ```
//!
//! The binary carries its migrations (`phased::embed_migrations!`, here phased's own example
//! history in `migrations/`). Start five copies at once against one database: one applies the
//! missing revisions, the other four wait for it (logging the holder's progress), then find
//! nothing to do, and all five serve. Each answers HTTP requests with the schema version it
//! sees, and exits after `--requests N` of them (or on Ctrl-C), so the example ends by itself.
//!
//! Exit codes follow the `phased` command's: 0 served, 2 refused (a malformed or destructive
//! revision, nothing ran), 4 another process still held the lease when the wait ran out, 1 any
//! other failure.

use std::io::Write;
use std::process::ExitCode;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// Where the application runs, from its flags and environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `--database URL`, else `DATABASE_URL`, else `sqlite://startup-example.db`.
    pub database_url: String,
    /// `--listen ADDR` (default `127.0.0.1:0`: a free port, printed).
    pub listen: String,
    /// `--requests N`: answer this many requests, then exit (default 3).
    pub requests: u64,
}

impl Config {
    pub fn parse(mut args: impl Iterator<Item = String>) -> Result<Config, String> {
        let mut config = Config {
            database_url: std::env::var("DATABASE_URL")
                .unwrap_or_else(|_| "sqlite://startup-example.db".to_string()),
            listen: "127.0.0.1:0".to_string(),
            requests: 3,
        };
        while let Some(flag) = args.next() {
            let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--database" => config.database_url = value()?,
                "--listen" => config.listen = value()?,
                "--requests" => {
                    let text = value()?;
                    config.requests = text
                        .parse()
                        .map_err(|_| format!("--requests takes a number, not `{text}`"))?;
                }
                other => {
                    return Err(format!(
                        "unknown argument `{other}`; usage: startup [--database URL] [--listen ADDR] [--requests N]"
                    ))
                }
            }
        }
        Ok(config)
    }
}

/// Why the application stopped.
#[derive(Debug)]
pub enum AppError {
    /// Migrating on startup failed: the application must not serve.
    Migrate(phased::Error),
    /// Serving failed.
    Serve(std::io::Error),
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::Migrate(e) => write!(f, "migrating on startup failed: {e}"),
            AppError::Serve(e) => write!(f, "serving failed: {e}"),
        }
    }
}

impl AppError {
    /// The `phased` command's exit codes, so an orchestrator reads both the same way.
    pub fn exit_code(&self) -> u8 {
        match self {
            AppError::Migrate(
                phased::Error::LeaseHeld { .. } | phased::Error::WaitTimedOut { .. },
            ) => 4,
            AppError::Migrate(
                phased::Error::Migrations(_)
                | phased::Error::Destructive(_)
                | phased::Error::Url(_),
            ) => 2,
            _ => 1,
        }
    }
}

/// Migrates, then serves `config.requests` requests.
pub async fn run(config: &Config) -> Result<(), AppError> {
    // 1. Migrate before anything else: the code below may rely on the newest schema.
    let migrator =
        phased::embed_migrations!("$CARGO_MANIFEST_DIR/migrations").map_err(AppError::Migrate)?;
    let upgraded = migrator
        .upgrade(&config.database_url, "head")
        .await
        .map_err(AppError::Migrate)?;
    tracing::info!(
        applied = upgraded.applied.len(),
        waited_ms = upgraded.waited.as_millis() as u64,
        "schema at {}",
        upgraded.heads.join(", ")
    );

    // 2. Serve: a minimal HTTP loop answering with the schema version this replica sees.
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(AppError::Serve)?;
    let address = listener.local_addr().map_err(AppError::Serve)?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on {address}");
    let _ = out.flush();
    drop(out);
    for _ in 0..config.requests {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted.map_err(AppError::Serve)?,
            _ = tokio::signal::ctrl_c() => break,
        };
        let mut stream = BufReader::new(stream);
        // The request head, up to its blank line; its content does not matter here.
        let mut line = String::new();
        while stream.read_line(&mut line).await.map_err(AppError::Serve)? > 2 {
            line.clear();
        }
        let body = match migrator.current(&config.database_url).await {
            Ok(current) => format!(
                "schema at {}{}\n",
                current.heads.join(", "),
                if current.is_up_to_date() {
                    " (up to date)"
                } else {
                    " (behind)"
                }
            ),
            Err(e) => format!("cannot read the schema version: {e}\n"),
        };
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        stream
            .get_mut()
            .write_all(response.as_bytes())
            .await
            .map_err(AppError::Serve)?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    // The application chooses how logs look; phased only emits `tracing` events.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match Config::parse(std::env::args().skip(1)) {
        Ok(config) => config,
        Err(message) => {
            tracing::error!("{message}");
            return ExitCode::from(2);
        }
    };
    match run(&config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}
