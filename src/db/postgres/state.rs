//! The `phased` schema: created and upgraded by version, read and written with bound values.

use super::conn::Conn;
use crate::db::Dialect;
use deadpool_postgres::GenericClient;

use super::sql_error;
use crate::db::state_schema::POSTGRES;
use crate::db::{DbError, FlagRecord, StepKey, StepRecord, StepStart, StepStatus};

/// Timestamps as RFC 3339 UTC text.
const TS: &str = "YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"";

/// Creates the schema and applies every state version not yet recorded, under a transaction-level
/// advisory lock so two first runs do not race.
pub async fn ensure(conn: &mut Conn) -> Result<(), DbError> {
    let work = &*conn;
    work.in_transaction(async {
        let setup = "SELECT pg_advisory_xact_lock(7368034869211301); \
                     CREATE SCHEMA IF NOT EXISTS phased; \
                     CREATE TABLE IF NOT EXISTS phased.meta (key text PRIMARY KEY, value text NOT NULL)";
        work.batch_execute(setup).await?;
        let current: i64 = if relation_exists(work, "phased.meta").await? {
            let read = "SELECT value FROM phased.meta WHERE key = 'schema_version'";
            work.query_opt(read, &[])
                .await?
                .and_then(|row| row.get::<_, String>(0).parse().ok())
                .unwrap_or(0)
        } else {
            0 // a dry run on a database phased has not touched yet
        };
        let known = POSTGRES.len() as i64;
        if current > known {
            return Err(DbError::Unexpected(format!(
                "the phased state in this database is at version {current}, newer than this phased understands ({known}); upgrade phased"
            )));
        }
        for (i, statements) in POSTGRES.iter().enumerate().skip(current as usize) {
            for sql in *statements {
                work.batch_execute(sql).await?;
            }
            let version = (i + 1).to_string();
            let write = "INSERT INTO phased.meta (key, value) VALUES ('schema_version', $1) \
                         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value";
            work.execute(write, &[&version]).await?;
        }
        Ok(())
    })
    .await
}

/// [`relation_exists`] on a plain client (backups, which never run in a dry run).
pub async fn relation_exists_on(
    conn: &deadpool_postgres::Object,
    name: &str,
) -> Result<bool, DbError> {
    let sql = "SELECT to_regclass($1) IS NOT NULL";
    Ok(conn
        .query_one(sql, &[&name])
        .await
        .map_err(|e| sql_error(e, sql))?
        .get(0))
}

/// Does this relation exist (`phased.steps`, a quoted user table)? Commands that only read
/// must work before the state tables were created.
pub async fn relation_exists(conn: &Conn, name: &str) -> Result<bool, DbError> {
    let sql = "SELECT to_regclass($1) IS NOT NULL";
    Ok(conn
        .query_opt(sql, &[&name])
        .await?
        .is_some_and(|row| row.get(0)))
}

pub async fn load_steps(conn: &Conn, plan: &str) -> Result<Vec<StepRecord>, DbError> {
    if !relation_exists(conn, "phased.steps").await? {
        return Ok(Vec::new());
    }
    // Columns added by later state versions are read through to_jsonb, so a read-only command
    // (status, plan, gate) still works on a state an older phased created and nothing upgraded yet.
    let sql = format!(
        "SELECT phase, step_index, kind, label, checksum, status, attempts, \
         to_char(started_at AT TIME ZONE 'UTC', '{TS}'), to_char(finished_at AT TIME ZONE 'UTC', '{TS}'), \
         last_error, checkpoint, rows_done, rows_total, (to_jsonb(s) ->> 'rows_per_second')::float8, \
         to_jsonb(s) ->> 'progress' \
         FROM phased.steps s WHERE plan = $1 ORDER BY phase, step_index"
    );
    let rows = conn.query(&sql, &[&plan]).await?;
    Ok(rows
        .iter()
        .map(|r| StepRecord {
            phase: r.get(0),
            index: r.get(1),
            kind: r.get(2),
            label: r.get(3),
            checksum: r.get(4),
            status: StepStatus::parse(r.get(5)),
            attempts: r.get(6),
            started_at: r.get(7),
            finished_at: r.get(8),
            last_error: r.get(9),
            checkpoint: r.get(10),
            rows_done: r.get(11),
            rows_total: r.get(12),
            rows_per_second: r.get(13),
            progress: r.get(14),
        })
        .collect())
}

pub async fn begin_step(conn: &Conn, step: &StepStart<'_>) -> Result<(), DbError> {
    let sql = "INSERT INTO phased.steps (plan, phase, step_index, kind, label, checksum, status, attempts, started_at, finished_at, last_error, updated_at) \
               VALUES ($1, $2, $3, $4, $5, $6, 'running', 1, now(), NULL, NULL, now()) \
               ON CONFLICT (plan, phase, step_index) DO UPDATE SET kind = EXCLUDED.kind, label = EXCLUDED.label, \
               checksum = EXCLUDED.checksum, status = 'running', attempts = phased.steps.attempts + 1, \
               started_at = now(), finished_at = NULL, updated_at = now()";
    conn.execute(
        sql,
        &[
            &step.key.plan,
            &step.key.phase,
            &step.key.index,
            &step.kind,
            &step.label,
            &step.checksum,
        ],
    )
    .await?;
    Ok(())
}

pub async fn fail_step(conn: &Conn, key: &StepKey, error: &str) -> Result<(), DbError> {
    let sql = "UPDATE phased.steps SET status = 'failed', last_error = $4, finished_at = now(), updated_at = now() \
               WHERE plan = $1 AND phase = $2 AND step_index = $3";
    conn.execute(sql, &[&key.plan, &key.phase, &key.index, &error])
        .await?;
    Ok(())
}

pub async fn mark_done(conn: &Conn, key: &StepKey) -> Result<(), DbError> {
    let sql = "UPDATE phased.steps SET status = 'done', last_error = NULL, finished_at = now(), updated_at = now() \
               WHERE plan = $1 AND phase = $2 AND step_index = $3";
    conn.execute(sql, &[&key.plan, &key.phase, &key.index])
        .await?;
    Ok(())
}

pub async fn set_status(conn: &Conn, key: &StepKey, status: StepStatus) -> Result<(), DbError> {
    conn.execute(
        crate::db::state_sql::set_status(Dialect::Postgres, status),
        &[&key.plan, &key.phase, &key.index, &status.as_str()],
    )
    .await?;
    Ok(())
}

/// Records `status` the way the engine means it: done clears the last error and stamps the finish.
pub async fn mark(conn: &Conn, key: &StepKey, status: StepStatus) -> Result<(), DbError> {
    match status {
        StepStatus::Done => mark_done(conn, key).await,
        other => set_status(conn, key, other).await,
    }
}

/// Sets a step's checkpoint; clearing it also clears the progress counted with it.
pub async fn set_checkpoint(
    conn: &Conn,
    key: &StepKey,
    checkpoint: Option<&str>,
) -> Result<(), DbError> {
    let sql = match checkpoint {
        Some(_) => {
            "UPDATE phased.steps SET checkpoint = $4, updated_at = now() \
             WHERE plan = $1 AND phase = $2 AND step_index = $3"
        }
        None => {
            "UPDATE phased.steps SET checkpoint = $4, rows_done = 0, rows_total = NULL, updated_at = now() \
             WHERE plan = $1 AND phase = $2 AND step_index = $3"
        }
    };
    conn.execute(sql, &[&key.plan, &key.phase, &key.index, &checkpoint])
        .await?;
    Ok(())
}

/// How many statements of a `transactional: false` script are done (its checkpoint).
pub async fn script_progress(conn: &Conn, key: &StepKey) -> Result<usize, DbError> {
    if !relation_exists(conn, "phased.steps").await? {
        return Ok(0);
    }
    let sql =
        "SELECT checkpoint FROM phased.steps WHERE plan = $1 AND phase = $2 AND step_index = $3";
    let checkpoint: Option<String> = conn
        .query_opt(sql, &[&key.plan, &key.phase, &key.index])
        .await?
        .and_then(|row| row.get(0));
    Ok(crate::db::state_sql::parse_script_progress(
        checkpoint.as_deref(),
    ))
}

/// Records that the first `done` statements of a script completed.
pub async fn set_script_progress(conn: &Conn, key: &StepKey, done: usize) -> Result<(), DbError> {
    let checkpoint = crate::db::state_sql::script_progress(done);
    set_checkpoint(conn, key, Some(&checkpoint)).await
}

pub async fn set_rows_total(conn: &Conn, key: &StepKey, total: i64) -> Result<(), DbError> {
    let sql = "UPDATE phased.steps SET rows_total = $4, updated_at = now() \
               WHERE plan = $1 AND phase = $2 AND step_index = $3";
    conn.execute(sql, &[&key.plan, &key.phase, &key.index, &total])
        .await?;
    Ok(())
}

pub async fn flags(conn: &Conn) -> Result<Vec<FlagRecord>, DbError> {
    if !relation_exists(conn, "phased.flags").await? {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT name, value, to_char(updated_at AT TIME ZONE 'UTC', '{TS}'), plan FROM phased.flags ORDER BY name"
    );
    let rows = conn.query(&sql, &[]).await?;
    Ok(rows
        .iter()
        .map(|r| FlagRecord {
            name: r.get(0),
            value: r.get(1),
            updated_at: r.get(2),
            plan: r.get(3),
        })
        .collect())
}

/// Records where a concurrent index build stands (`None` clears it). Sent from the session that
/// watches the build, never from the step connection, which is busy running it; never in a dry
/// run.
pub async fn set_progress(
    conn: &deadpool_postgres::Object,
    key: &StepKey,
    progress: Option<&str>,
) -> Result<(), DbError> {
    let sql = "UPDATE phased.steps SET progress = $4, updated_at = now() \
               WHERE plan = $1 AND phase = $2 AND step_index = $3";
    conn.execute(sql, &[&key.plan, &key.phase, &key.index, &progress])
        .await
        .map_err(|e| sql_error(e, sql))?;
    Ok(())
}
