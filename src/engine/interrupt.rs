//! Ctrl-C and SIGTERM (what CI runners and Kubernetes send): the run stops at a safe point.
//!
//! The CLI raises the interrupt when the first signal arrives and cancels the statement the
//! database is running for phased (every unit of work is one transaction, so a cancelled one
//! leaves nothing half-applied; an interrupted `CREATE INDEX CONCURRENTLY` leaves an INVALID
//! index that the next attempt drops first). The engine looks at the interrupt between steps,
//! between backfill batches and instead of waiting to retry, records the step it stopped in, and
//! returns `EngineError::Interrupted`; the lease is released as on any other return.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

/// The run's interrupt: raised once, by the first signal. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct Interrupt {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    signal: Mutex<Option<&'static str>>,
    notify: Notify,
}

impl Interrupt {
    pub fn new() -> Self {
        Self::default()
    }

    /// Raises the interrupt (`SIGINT`, `SIGTERM`); the first signal is the one kept.
    pub fn raise(&self, signal: &'static str) {
        let mut raised = self
            .inner
            .signal
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if raised.is_none() {
            *raised = Some(signal);
        }
        drop(raised);
        self.inner.notify.notify_waiters();
    }

    /// The signal that raised it, once raised.
    pub fn signal(&self) -> Option<&'static str> {
        *self
            .inner
            .signal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Resolves when the interrupt is raised (at once when it already is).
    pub async fn raised(&self) {
        loop {
            let notified = self.inner.notify.notified();
            if self.signal().is_some() {
                return;
            }
            notified.await;
        }
    }

    /// Sleeps for `wait`, or less when the interrupt is raised meanwhile; true when it was.
    pub async fn sleep(&self, wait: std::time::Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(wait) => self.signal().is_some(),
            _ = self.raised() => true,
        }
    }
}

/// The documented exit code of a run stopped by `signal`: 128 + its number, as shells report it.
pub fn exit_code(signal: &str) -> u8 {
    match signal {
        "SIGTERM" => 143,
        _ => 130,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_signal_is_kept_and_wakes_waiters() {
        let interrupt = Interrupt::new();
        assert_eq!(interrupt.signal(), None);
        let waiter = {
            let interrupt = interrupt.clone();
            tokio::spawn(async move { interrupt.raised().await })
        };
        interrupt.raise("SIGTERM");
        interrupt.raise("SIGINT");
        assert!(waiter.await.is_ok());
        assert_eq!(interrupt.signal(), Some("SIGTERM"));
        assert!(interrupt.sleep(std::time::Duration::from_secs(3600)).await);
        assert_eq!(exit_code("SIGTERM"), 143);
        assert_eq!(exit_code("SIGINT"), 130);
    }
}
