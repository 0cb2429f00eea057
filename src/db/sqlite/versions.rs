//! Versioned migrations on SQLite: `phased_migrations` and `phased_version_heads`, written in
//! the `BEGIN IMMEDIATE` transaction that runs the migration's SQL. `busy_timeout` plays the
//! part of lock_timeout: a writer that cannot get the database lock in time fails with
//! SQLITE_BUSY, which is retried.

use rusqlite::{params, Connection, TransactionBehavior};

use super::{sql_error, SqliteTarget};
use crate::db::{AppliedMigration, DbError, MigrationRun, VersionState};

fn record(conn: &Connection, run: &MigrationRun<'_>) -> Result<(), DbError> {
    if run.up {
        let sql = "INSERT INTO phased_migrations (revision, checksum, applied_at) \
                   VALUES (?1, ?2, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))";
        conn.execute(sql, params![run.revision, run.checksum])
            .map_err(|e| sql_error(e, sql))?;
    } else {
        let sql = "DELETE FROM phased_migrations WHERE revision = ?1";
        conn.execute(sql, [run.revision])
            .map_err(|e| sql_error(e, sql))?;
    }
    replace_heads(conn, run.heads_after)
}

fn replace_heads(conn: &Connection, heads: &[String]) -> Result<(), DbError> {
    let clear = "DELETE FROM phased_version_heads";
    conn.execute(clear, []).map_err(|e| sql_error(e, clear))?;
    let insert = "INSERT INTO phased_version_heads (revision) VALUES (?1)";
    for head in heads {
        conn.execute(insert, [head])
            .map_err(|e| sql_error(e, insert))?;
    }
    Ok(())
}

impl SqliteTarget {
    pub(super) fn read_versions(&self) -> Result<VersionState, DbError> {
        let exists =
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'phased_migrations'";
        let n: i64 = self
            .conn
            .query_row(exists, [], |r| r.get(0))
            .map_err(|e| sql_error(e, exists))?;
        if n == 0 {
            return Ok(VersionState::default());
        }
        let sql = "SELECT revision, checksum, applied_at FROM phased_migrations ORDER BY applied_at, revision";
        let mut stmt = self.conn.prepare(sql).map_err(|e| sql_error(e, sql))?;
        let applied = stmt
            .query_map([], |r| {
                Ok(AppliedMigration {
                    revision: r.get(0)?,
                    checksum: r.get(1)?,
                    applied_at: r.get(2)?,
                })
            })
            .map_err(|e| sql_error(e, sql))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| sql_error(e, sql))?;
        let sql = "SELECT revision FROM phased_version_heads ORDER BY revision";
        let mut stmt = self.conn.prepare(sql).map_err(|e| sql_error(e, sql))?;
        let heads = stmt
            .query_map([], |r| r.get(0))
            .map_err(|e| sql_error(e, sql))?
            .collect::<Result<Vec<String>, _>>()
            .map_err(|e| sql_error(e, sql))?;
        Ok(VersionState { applied, heads })
    }

    /// Runs and records one migration; the record proves every lease in `fences` (the
    /// folder's `db:` lease, and the plan's when a step runs it) in its own transaction.
    pub(super) fn run_one_migration(
        &mut self,
        run: &MigrationRun<'_>,
        fences: &[(String, i64)],
    ) -> Result<(), DbError> {
        self.with_busy_timeout(run.timeouts)?;
        if !run.transactional {
            for fence in fences {
                super::lease::check_fence(&self.conn, Some(fence))?;
            }
            self.conn
                .execute_batch(run.script)
                .map_err(|e| sql_error(e, run.script))?;
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| sql_error(e, "BEGIN IMMEDIATE"))?;
        for fence in fences {
            super::lease::check_fence(&tx, Some(fence))?;
        }
        if run.transactional {
            tx.execute_batch(run.script)
                .map_err(|e| sql_error(e, run.script))?;
        }
        record(&tx, run)?;
        tx.commit().map_err(|e| sql_error(e, "COMMIT"))
    }

    pub(super) fn replace_versions(
        &mut self,
        applied: &[(String, String)],
        heads: &[String],
    ) -> Result<(), DbError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| sql_error(e, "BEGIN IMMEDIATE"))?;
        let clear = "DELETE FROM phased_migrations";
        tx.execute(clear, []).map_err(|e| sql_error(e, clear))?;
        let insert = "INSERT INTO phased_migrations (revision, checksum, applied_at) \
                      VALUES (?1, ?2, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))";
        for (revision, checksum) in applied {
            tx.execute(insert, params![revision, checksum])
                .map_err(|e| sql_error(e, insert))?;
        }
        replace_heads(&tx, heads)?;
        tx.commit().map_err(|e| sql_error(e, "COMMIT"))
    }
}
