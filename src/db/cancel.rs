//! Cancelling the statement the database is running for phased, from another task (an
//! operator's Ctrl-C): PostgreSQL through `pg_cancel_backend` on another connection of the
//! pool, SQLite through its interrupt handle. A cancelled statement fails its transaction, which
//! rolls back: nothing half-applied is left. With no statement running, nothing happens.

/// A handle on the step connection that can cancel what it runs.
pub enum Canceller {
    Postgres {
        pool: deadpool_postgres::Pool,
        /// The step connection's backend (it changes when a lost step connection is opened
        /// again; 0: unknown).
        pid: std::sync::Arc<std::sync::atomic::AtomicI32>,
    },
    Sqlite(rusqlite::InterruptHandle),
}

impl Canceller {
    pub async fn cancel(&self) {
        match self {
            Canceller::Postgres { pool, pid } => {
                let pid = pid.load(std::sync::atomic::Ordering::SeqCst);
                if pid == 0 {
                    return;
                }
                if let Ok(conn) = pool.get().await {
                    let sql = "SELECT pg_cancel_backend($1)";
                    if let Err(e) = conn.execute(sql, &[&pid]).await {
                        tracing::warn!(error = %e, "could not cancel the running statement");
                    }
                }
            }
            Canceller::Sqlite(handle) => handle.interrupt(),
        }
    }
}
