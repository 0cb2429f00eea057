//! Versioned migrations on PostgreSQL: `phased.migrations` (applied revisions with checksums)
//! and `phased.version_heads`, written in the same transaction as the migration's SQL.
//!
//! A transactional migration runs under `SET LOCAL lock_timeout`, so a statement that queues
//! behind a long reader gives up (and is retried) instead of blocking every query behind it.
//! A non-transactional one (`CREATE INDEX CONCURRENTLY`) is sent statement by statement, each
//! under a session `lock_timeout` that is reset afterwards.

use super::conn::Conn;
use super::{set_local, PgTarget};
use crate::db::{AppliedMigration, DbError, MigrationRun, VersionState};
use crate::migrations::statements;

const TS: &str = "YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"";

/// Records (or forgets) the revision and replaces the heads.
async fn record(conn: &Conn, run: &MigrationRun<'_>) -> Result<(), DbError> {
    if run.up {
        let sql =
            "INSERT INTO phased.migrations (revision, checksum, applied_at) VALUES ($1, $2, now())";
        conn.execute(sql, &[&run.revision, &run.checksum]).await?;
    } else {
        let sql = "DELETE FROM phased.migrations WHERE revision = $1";
        conn.execute(sql, &[&run.revision]).await?;
    }
    replace_heads(conn, run.heads_after).await
}

async fn replace_heads(conn: &Conn, heads: &[String]) -> Result<(), DbError> {
    let clear = "DELETE FROM phased.version_heads";
    conn.execute(clear, &[]).await?;
    let insert = "INSERT INTO phased.version_heads (revision) SELECT unnest($1::text[])";
    conn.execute(insert, &[&heads]).await?;
    Ok(())
}

impl PgTarget {
    pub(super) async fn read_versions(&mut self) -> Result<VersionState, DbError> {
        if !super::state::relation_exists(&self.work, "phased.migrations").await? {
            return Ok(VersionState::default());
        }
        let sql = format!(
            "SELECT revision, checksum, to_char(applied_at AT TIME ZONE 'UTC', '{TS}') \
             FROM phased.migrations ORDER BY applied_at, revision"
        );
        let applied = self
            .work
            .query(&sql, &[])
            .await?
            .iter()
            .map(|r| AppliedMigration {
                revision: r.get(0),
                checksum: r.get(1),
                applied_at: r.get(2),
            })
            .collect();
        let sql = "SELECT revision FROM phased.version_heads ORDER BY revision";
        let heads = self
            .work
            .query(sql, &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        Ok(VersionState { applied, heads })
    }

    pub(super) async fn run_one_migration(
        &mut self,
        run: &MigrationRun<'_>,
        progress: &mut dyn FnMut(&crate::db::IndexProgress),
    ) -> Result<(), DbError> {
        if !run.transactional {
            for statement in statements::split(run.script) {
                for (plan, _) in self.all_fences() {
                    self.check_fence_now(&plan).await?;
                }
                self.run_standalone(&statement, run.timeouts, run.step, progress)
                    .await?;
            }
        }
        if let Some(why) = self.lost_reason() {
            return Err(DbError::LeaseLost(why));
        }
        // The record proves every lease this runner holds (the folder's `db:` lease, and the
        // plan's when a step runs it), in the migration's own transaction.
        let fences = self.all_fences();
        let work = &self.work;
        work.in_transaction(async {
            for fence in &fences {
                super::lease::check_fence(work.client()?, Some(fence)).await?;
            }
            work.batch_execute(&set_local(run.timeouts)).await?;
            if run.transactional && !statements::split(run.script).is_empty() {
                work.batch_execute(run.script).await?;
            }
            record(work, run).await
        })
        .await
    }

    pub(super) async fn replace_versions(
        &mut self,
        applied: &[(String, String)],
        heads: &[String],
    ) -> Result<(), DbError> {
        let work = &self.work;
        work.in_transaction(async {
            work.execute("DELETE FROM phased.migrations", &[]).await?;
            let insert = "INSERT INTO phased.migrations (revision, checksum, applied_at) VALUES ($1, $2, now())";
            for (revision, checksum) in applied {
                work.execute(insert, &[revision, checksum]).await?;
            }
            replace_heads(work, heads).await
        })
        .await
    }
}
