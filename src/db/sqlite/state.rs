//! The `phased_*` tables: created and upgraded by version, read and written with bound values.

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::sql_error;
use crate::db::state_schema::SQLITE;
use crate::db::{DbError, FlagRecord, StepKey, StepRecord, StepStart, StepStatus};

const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

pub fn ensure(conn: &mut Connection) -> Result<(), DbError> {
    // Up to date already (every run after the first): a read, so that many processes starting
    // at once, or one starting while another applies a migration, do not queue for the write
    // lock just to find nothing to do.
    if table_exists(conn, "phased_meta")? {
        let read = "SELECT value FROM phased_meta WHERE key = 'schema_version'";
        let current: Option<usize> = conn
            .query_row(read, [], |r| r.get::<_, String>(0))
            .optional()
            .map_err(|e| sql_error(e, read))?
            .and_then(|v| v.parse().ok());
        if current == Some(SQLITE.len()) {
            return Ok(());
        }
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| sql_error(e, "BEGIN IMMEDIATE"))?;
    let setup =
        "CREATE TABLE IF NOT EXISTS phased_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)";
    tx.execute_batch(setup).map_err(|e| sql_error(e, setup))?;
    let read = "SELECT value FROM phased_meta WHERE key = 'schema_version'";
    let current: usize = tx
        .query_row(read, [], |r| r.get::<_, String>(0))
        .optional()
        .map_err(|e| sql_error(e, read))?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if current > SQLITE.len() {
        return Err(DbError::Unexpected(format!(
            "the phased state in this database is at version {current}, newer than this phased understands ({}); upgrade phased",
            SQLITE.len()
        )));
    }
    for (i, statements) in SQLITE.iter().enumerate().skip(current) {
        for sql in *statements {
            tx.execute_batch(sql).map_err(|e| sql_error(e, sql))?;
        }
        let write = "INSERT INTO phased_meta (key, value) VALUES ('schema_version', ?1) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value";
        tx.execute(write, [(i + 1).to_string()])
            .map_err(|e| sql_error(e, write))?;
    }
    tx.commit().map_err(|e| sql_error(e, "COMMIT"))
}

fn table_exists(conn: &Connection, name: &str) -> Result<bool, DbError> {
    let sql = "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1";
    let n: i64 = conn
        .query_row(sql, [name], |r| r.get(0))
        .map_err(|e| sql_error(e, sql))?;
    Ok(n > 0)
}

pub fn load_steps(conn: &Connection, plan: &str) -> Result<Vec<StepRecord>, DbError> {
    if !table_exists(conn, "phased_steps")? {
        return Ok(Vec::new());
    }
    // `*` and columns read by name: a read-only command (status, plan, gate) still works on a
    // state an older phased created, before a run upgraded it (later columns read as NULL).
    let sql = "SELECT * FROM phased_steps WHERE plan = ?1 ORDER BY phase, step_index";
    let mut stmt = conn.prepare(sql).map_err(|e| sql_error(e, sql))?;
    let rows = stmt
        .query_map([plan], |r| {
            Ok(StepRecord {
                phase: r.get("phase")?,
                index: r.get("step_index")?,
                kind: r.get("kind")?,
                label: r.get("label")?,
                checksum: r.get("checksum")?,
                status: StepStatus::parse(&r.get::<_, String>("status")?),
                attempts: r.get("attempts")?,
                started_at: r.get("started_at")?,
                finished_at: r.get("finished_at")?,
                last_error: r.get("last_error")?,
                checkpoint: r.get("checkpoint")?,
                rows_done: r.get("rows_done")?,
                rows_total: r.get("rows_total")?,
                // Added by state version 2.
                rows_per_second: r.get::<_, Option<f64>>("rows_per_second").ok().flatten(),
                // Added by state version 5: a backfill's pace and why.
                progress: r.get::<_, Option<String>>("progress").ok().flatten(),
            })
        })
        .map_err(|e| sql_error(e, sql))?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(|e| sql_error(e, sql))
}

pub fn begin_step(conn: &Connection, step: &StepStart<'_>) -> Result<(), DbError> {
    let sql = format!(
        "INSERT INTO phased_steps (plan, phase, step_index, kind, label, checksum, status, attempts, started_at, finished_at, last_error, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'running', 1, {NOW}, NULL, NULL, {NOW}) \
         ON CONFLICT (plan, phase, step_index) DO UPDATE SET kind = excluded.kind, label = excluded.label, \
         checksum = excluded.checksum, status = 'running', attempts = phased_steps.attempts + 1, \
         started_at = {NOW}, finished_at = NULL, updated_at = {NOW}"
    );
    conn.execute(
        &sql,
        params![
            step.key.plan,
            step.key.phase,
            step.key.index,
            step.kind,
            step.label,
            step.checksum
        ],
    )
    .map_err(|e| sql_error(e, &sql))?;
    Ok(())
}

pub fn fail_step(conn: &Connection, key: &StepKey, error: &str) -> Result<(), DbError> {
    let sql = format!(
        "UPDATE phased_steps SET status = 'failed', last_error = ?4, finished_at = {NOW}, updated_at = {NOW} \
         WHERE plan = ?1 AND phase = ?2 AND step_index = ?3"
    );
    conn.execute(&sql, params![key.plan, key.phase, key.index, error])
        .map_err(|e| sql_error(e, &sql))?;
    Ok(())
}

pub fn mark_done(conn: &Connection, key: &StepKey) -> Result<(), DbError> {
    let sql = format!(
        "UPDATE phased_steps SET status = 'done', last_error = NULL, finished_at = {NOW}, updated_at = {NOW} \
         WHERE plan = ?1 AND phase = ?2 AND step_index = ?3"
    );
    conn.execute(&sql, params![key.plan, key.phase, key.index])
        .map_err(|e| sql_error(e, &sql))?;
    Ok(())
}

/// Records `status` the way the engine means it: done clears the last error and stamps the finish.
pub fn mark(conn: &Connection, key: &StepKey, status: StepStatus) -> Result<(), DbError> {
    match status {
        StepStatus::Done => mark_done(conn, key),
        other => set_status(conn, key, other),
    }
}

/// Sets a step's checkpoint; clearing it also clears the progress counted with it.
pub fn set_checkpoint(
    conn: &Connection,
    key: &StepKey,
    checkpoint: Option<&str>,
) -> Result<(), DbError> {
    let sql = match checkpoint {
        Some(_) => format!(
            "UPDATE phased_steps SET checkpoint = ?4, updated_at = {NOW} WHERE plan = ?1 AND phase = ?2 AND step_index = ?3"
        ),
        None => format!(
            "UPDATE phased_steps SET checkpoint = ?4, rows_done = 0, rows_total = NULL, updated_at = {NOW} \
             WHERE plan = ?1 AND phase = ?2 AND step_index = ?3"
        ),
    };
    conn.execute(&sql, params![key.plan, key.phase, key.index, checkpoint])
        .map_err(|e| sql_error(e, &sql))?;
    Ok(())
}

pub fn set_status(conn: &Connection, key: &StepKey, status: StepStatus) -> Result<(), DbError> {
    let sql = crate::db::state_sql::set_status(crate::db::Dialect::Sqlite, status);
    conn.execute(
        sql,
        params![key.plan, key.phase, key.index, status.as_str()],
    )
    .map_err(|e| sql_error(e, sql))?;
    Ok(())
}

/// How many statements of a `transactional: false` script are done (its checkpoint).
pub fn script_progress(conn: &Connection, key: &StepKey) -> Result<usize, DbError> {
    let sql =
        "SELECT checkpoint FROM phased_steps WHERE plan = ?1 AND phase = ?2 AND step_index = ?3";
    let checkpoint: Option<String> = conn
        .query_row(sql, params![key.plan, key.phase, key.index], |r| r.get(0))
        .optional()
        .map_err(|e| sql_error(e, sql))?
        .flatten();
    Ok(crate::db::state_sql::parse_script_progress(
        checkpoint.as_deref(),
    ))
}
pub fn set_rows_total(conn: &Connection, key: &StepKey, total: i64) -> Result<(), DbError> {
    let sql = format!(
        "UPDATE phased_steps SET rows_total = ?4, updated_at = {NOW} WHERE plan = ?1 AND phase = ?2 AND step_index = ?3"
    );
    conn.execute(&sql, params![key.plan, key.phase, key.index, total])
        .map_err(|e| sql_error(e, &sql))?;
    Ok(())
}

/// Records a backfill batch's checkpoint, inside the batch's transaction.
pub fn checkpoint(
    conn: &Connection,
    key: &StepKey,
    last_key: &str,
    rows: i64,
    rows_per_second: f64,
    pace: Option<&str>,
) -> Result<(), DbError> {
    let sql = format!(
        "UPDATE phased_steps SET checkpoint = ?4, rows_done = rows_done + ?5, rows_per_second = ?6, progress = ?7, \
         updated_at = {NOW} WHERE plan = ?1 AND phase = ?2 AND step_index = ?3"
    );
    conn.execute(
        &sql,
        params![
            key.plan,
            key.phase,
            key.index,
            last_key,
            rows,
            rows_per_second,
            pace
        ],
    )
    .map_err(|e| sql_error(e, &sql))?;
    Ok(())
}

pub fn flags(conn: &Connection) -> Result<Vec<FlagRecord>, DbError> {
    if !table_exists(conn, "phased_flags")? {
        return Ok(Vec::new());
    }
    let sql = "SELECT name, value, updated_at, plan FROM phased_flags ORDER BY name";
    let mut stmt = conn.prepare(sql).map_err(|e| sql_error(e, sql))?;
    let rows = stmt
        .query_map([], |r| {
            Ok(FlagRecord {
                name: r.get(0)?,
                value: r.get(1)?,
                updated_at: r.get(2)?,
                plan: r.get(3)?,
            })
        })
        .map_err(|e| sql_error(e, sql))?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(|e| sql_error(e, sql))
}
