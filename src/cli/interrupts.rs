//! Signals (Ctrl-C, SIGTERM). While a concurrent index build or drop runs, the first one is
//! handed to it (`db::interrupt`): it cancels the statement and drops the INVALID index a build
//! leaves before phased exits, instead of leaving a build on the server that goes on waiting
//! for old transactions. Otherwise — or on a second signal — phased exits at once, with the
//! code a shell reports for a process the signal ended (130 for SIGINT, 143 for SIGTERM).

use crate::db::interrupt::{deliver, Delivery};

/// Listens for signals for the rest of the process.
pub async fn listen() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut interrupt), Ok(mut terminate)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        loop {
            let (name, code) = tokio::select! {
                _ = interrupt.recv() => ("SIGINT", 130),
                _ = terminate.recv() => ("SIGTERM", 143),
            };
            handle(name, code);
        }
    }
    #[cfg(not(unix))]
    loop {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        handle("Ctrl-C", 130);
    }
}

// Ending the process here skips destructors, as the signal itself did before phased listened
// for it: nothing changes for a command that runs no concurrent index statement.
#[allow(clippy::disallowed_methods)]
fn handle(name: &'static str, code: i32) {
    match deliver(name) {
        Delivery::Delivered => eprintln!(
            "\n{name}: cancelling the concurrent index statement that is running and cleaning up after it (send {name} again to stop at once)"
        ),
        Delivery::EndNow => std::process::exit(code),
    }
}
