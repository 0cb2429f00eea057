//! The conversion check on SQLite (see `db/conversion_check.rs`): `PRAGMA query_only` and one
//! deferred transaction (a read: it takes SQLite's shared lock, writers go on in WAL mode), each
//! statement interrupted when the deadline comes (SQLite has no statement timeout: a watchdog
//! thread calls `sqlite3_interrupt`).
//!
//! SQLite's `CAST` never fails (`CAST('abc' AS INTEGER)` is 0), so the default `up` of a
//! `change_type` always converts; an `up` of the plan's own can still raise an error (`json()`
//! of text that is not JSON, an integer overflow in `abs()`), and that is what this finds.

use std::sync::mpsc;
use std::time::Instant;

use rusqlite::{Connection, ErrorCode};

use super::sql_error;
use crate::db::conversion_check::{
    self, remaining, Conversion, ConversionCheck, Evaluator, Outcome,
};
use crate::db::DbError;

struct Sqlite<'c> {
    conn: &'c Connection,
}

impl Sqlite<'_> {
    /// Runs `body` with a watchdog that interrupts it at the deadline.
    fn guarded<T>(
        &self,
        sql: &str,
        deadline: Instant,
        body: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Outcome<T> {
        let Some(left) = remaining(deadline) else {
            return Outcome::TimedOut;
        };
        let handle = self.conn.get_interrupt_handle();
        let (done, wait) = mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(left) {
                handle.interrupt();
            }
        });
        let result = body(self.conn);
        let _ = done.send(());
        let _ = watchdog.join();
        match result {
            Ok(value) => Outcome::Done(value),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == ErrorCode::OperationInterrupted =>
            {
                Outcome::TimedOut
            }
            Err(e) => Outcome::Failed(sql_error(e, sql).to_string()),
        }
    }
}

impl Evaluator for Sqlite<'_> {
    async fn ints(&mut self, sql: &str, deadline: Instant) -> Result<Outcome<Vec<i64>>, DbError> {
        Ok(self.guarded(sql, deadline, |conn| {
            conn.query_row(sql, [], |row| {
                (0..row.as_ref().column_count())
                    .map(|i| row.get::<_, i64>(i))
                    .collect()
            })
        }))
    }

    async fn texts(
        &mut self,
        sql: &str,
        deadline: Instant,
    ) -> Result<Outcome<Option<Vec<Option<String>>>>, DbError> {
        Ok(self.guarded(sql, deadline, |conn| {
            let mut stmt = conn.prepare(sql)?;
            let columns = stmt.column_count();
            let mut rows = stmt.query([])?;
            match rows.next()? {
                Some(row) => (0..columns)
                    .map(|i| row.get::<_, Option<String>>(i))
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map(Some),
                None => Ok(None),
            }
        }))
    }
}

/// Runs `check` read-only on `conn`, which must not be in a transaction; leaves it as it was.
pub async fn check(conn: &Connection, check: &ConversionCheck<'_>) -> Result<Conversion, DbError> {
    let begin = "PRAGMA query_only = ON; BEGIN";
    conn.execute_batch(begin).map_err(|e| sql_error(e, begin))?;
    let result = conversion_check::run(&mut Sqlite { conn }, check).await;
    let end = "ROLLBACK; PRAGMA query_only = OFF";
    let ended = conn.execute_batch(end).map_err(|e| sql_error(e, end));
    let found = result?;
    ended?;
    Ok(found)
}
