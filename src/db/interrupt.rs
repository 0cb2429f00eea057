//! An operator's interrupt (Ctrl-C, SIGTERM) while a statement runs that must not be abandoned:
//! a concurrent index build left behind by a vanished phased goes on waiting on the server, and
//! when it fails it leaves an INVALID index. While such a statement runs, its watcher holds a
//! [`Listener`]; the CLI hands signals to [`deliver`], and the watcher cancels the statement and
//! cleans up before phased exits. With no listener (or on a second signal) the CLI ends the
//! process at once, as the signal would have.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use tokio::sync::watch;

/// How many statements listen for an interrupt right now.
static LISTENERS: AtomicUsize = AtomicUsize::new(0);

/// The signal delivered, once one is.
fn channel() -> &'static watch::Sender<Option<&'static str>> {
    static CHANNEL: OnceLock<watch::Sender<Option<&'static str>>> = OnceLock::new();
    CHANNEL.get_or_init(|| watch::channel(None).0)
}

/// What became of a signal handed to [`deliver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// A running statement will be cancelled and cleaned up; the process ends after that.
    Delivered,
    /// Nothing listens (or a signal was delivered already): end the process now.
    EndNow,
}

/// Hands a signal (`SIGINT`, `SIGTERM`) to the statements that listen for it.
pub fn deliver(signal: &'static str) -> Delivery {
    let sender = channel();
    if LISTENERS.load(Ordering::SeqCst) == 0 || sender.borrow().is_some() {
        return Delivery::EndNow;
    }
    sender.send_replace(Some(signal));
    Delivery::Delivered
}

/// Held while a statement listens for an interrupt.
pub struct Listener {
    receiver: watch::Receiver<Option<&'static str>>,
}

/// Starts listening: until the listener is dropped, a signal is delivered here instead of ending
/// the process.
pub fn listen() -> Listener {
    LISTENERS.fetch_add(1, Ordering::SeqCst);
    Listener {
        receiver: channel().subscribe(),
    }
}

impl Listener {
    /// Resolves with the signal's name once one is delivered (at once if one was already).
    pub async fn interrupted(&mut self) -> &'static str {
        match self.receiver.wait_for(Option::is_some).await {
            Ok(signal) => signal.unwrap_or("a signal"),
            // The sender lives in a static and is never dropped.
            Err(_) => std::future::pending().await,
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        LISTENERS.fetch_sub(1, Ordering::SeqCst);
    }
}
