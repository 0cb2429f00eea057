//! Versioned migrations on PostgreSQL: `phased.migrations` (applied revisions with checksums)
//! and `phased.version_heads`, written in the same transaction as the migration's SQL.
//!
//! A transactional migration runs under `SET LOCAL lock_timeout`, so a statement that queues
//! behind a long reader gives up (and is retried) instead of blocking every query behind it.
//! A non-transactional one (`CREATE INDEX CONCURRENTLY`) is sent statement by statement, each
//! under a session `lock_timeout` that is reset afterwards.

use deadpool_postgres::GenericClient;

use super::{set_local, sql_error, PgTarget};
use crate::db::{AppliedMigration, DbError, MigrationRun, StepKey, VersionState};
use crate::migrations::statements;

const TS: &str = "YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"";

/// Records (or forgets) the revision and replaces the heads.
async fn record<C: GenericClient>(conn: &C, run: &MigrationRun<'_>) -> Result<(), DbError> {
    if run.up {
        let sql =
            "INSERT INTO phased.migrations (revision, checksum, applied_at) VALUES ($1, $2, now())";
        conn.execute(sql, &[&run.revision, &run.checksum])
            .await
            .map_err(|e| sql_error(e, sql))?;
    } else {
        let sql = "DELETE FROM phased.migrations WHERE revision = $1";
        conn.execute(sql, &[&run.revision])
            .await
            .map_err(|e| sql_error(e, sql))?;
    }
    replace_heads(conn, run.heads_after).await
}

async fn replace_heads<C: GenericClient>(conn: &C, heads: &[String]) -> Result<(), DbError> {
    let clear = "DELETE FROM phased.version_heads";
    conn.execute(clear, &[])
        .await
        .map_err(|e| sql_error(e, clear))?;
    let insert = "INSERT INTO phased.version_heads (revision) SELECT unnest($1::text[])";
    conn.execute(insert, &[&heads])
        .await
        .map_err(|e| sql_error(e, insert))?;
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
            .await
            .map_err(|e| sql_error(e, &sql))?
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
            .await
            .map_err(|e| sql_error(e, sql))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        Ok(VersionState { applied, heads })
    }

    pub(super) async fn run_one_migration(
        &mut self,
        run: &MigrationRun<'_>,
    ) -> Result<(), DbError> {
        if !run.transactional {
            for statement in statements::split(run.script) {
                self.run_standalone(&statement, run.timeouts).await?;
            }
        }
        let tx = self
            .work
            .transaction()
            .await
            .map_err(|e| sql_error(e, "BEGIN"))?;
        let set = set_local(run.timeouts);
        tx.batch_execute(&set)
            .await
            .map_err(|e| sql_error(e, &set))?;
        if run.transactional && !statements::split(run.script).is_empty() {
            tx.batch_execute(run.script)
                .await
                .map_err(|e| sql_error(e, run.script))?;
        }
        record(&tx, run).await?;
        tx.commit().await.map_err(|e| sql_error(e, "COMMIT"))
    }

    pub(super) async fn replace_versions(
        &mut self,
        applied: &[(String, String)],
        heads: &[String],
    ) -> Result<(), DbError> {
        let tx = self
            .work
            .transaction()
            .await
            .map_err(|e| sql_error(e, "BEGIN"))?;
        let clear = "DELETE FROM phased.migrations";
        tx.execute(clear, &[])
            .await
            .map_err(|e| sql_error(e, clear))?;
        let insert =
            "INSERT INTO phased.migrations (revision, checksum, applied_at) VALUES ($1, $2, now())";
        for (revision, checksum) in applied {
            tx.execute(insert, &[revision, checksum])
                .await
                .map_err(|e| sql_error(e, insert))?;
        }
        replace_heads(&tx, heads).await?;
        tx.commit().await.map_err(|e| sql_error(e, "COMMIT"))
    }

    pub(super) async fn write_checkpoint(
        &mut self,
        key: &StepKey,
        checkpoint: &str,
    ) -> Result<(), DbError> {
        let sql = "UPDATE phased.steps SET checkpoint = $4, updated_at = now() \
                   WHERE plan = $1 AND phase = $2 AND step_index = $3";
        self.work
            .execute(sql, &[&key.plan, &key.phase, &key.index, &checkpoint])
            .await
            .map_err(|e| sql_error(e, sql))?;
        Ok(())
    }
}
