//! The single-runner lease on SQLite: a row in `phased_lease`, taken in an immediate transaction.
//! A row whose process is gone (same host, no such pid) is stale and taken over, so a killed
//! runner never leaves the plan stuck.

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::sql_error;
use crate::db::{DbError, LeaseHolder};

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".to_string())
}

fn process_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Leases held by this process, by database file and plan: a row with our own pid is only stale
/// when no runner in this process holds it (two runners can share a process, e.g. in tests or
/// when phased is used as a library).
static HELD_HERE: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

fn held_key(conn: &Connection, plan: &str) -> (String, String) {
    let file = conn.path().unwrap_or("").to_string();
    let file = std::fs::canonicalize(&file)
        .map(|p| p.display().to_string())
        .unwrap_or(file);
    (file, plan.to_string())
}

fn held_here(key: &(String, String)) -> bool {
    HELD_HERE
        .lock()
        .map(|held| held.contains(key))
        .unwrap_or(false)
}

/// Takes the lease and returns its new generation, or returns who holds it.
pub fn try_acquire(conn: &mut Connection, plan: &str) -> Result<Result<i64, LeaseHolder>, DbError> {
    let me = std::process::id();
    let here = host();
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| sql_error(e, "BEGIN IMMEDIATE"))?;
    let read = "SELECT pid, host, since FROM phased_lease WHERE plan = ?1";
    let holder: Option<(u32, String, String)> = tx
        .query_row(read, [plan], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()
        .map_err(|e| sql_error(e, read))?;
    if let Some((pid, host, since)) = holder {
        let stale = host == here
            && (!process_alive(pid) || (pid == me && !held_here(&held_key(&tx, plan))));
        if !stale {
            return Ok(Err(LeaseHolder {
                description: if pid == me {
                    format!("another runner in this process (pid {pid}) on {host}, since {since}")
                } else {
                    format!("phased pid {pid} on {host}, since {since}")
                },
            }));
        }
        tracing::info!(pid, host = %host, "taking over a stale lease from a runner that is gone");
    }
    let write = "INSERT INTO phased_lease (plan, pid, host, since) VALUES (?1, ?2, ?3, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')) \
                 ON CONFLICT (plan) DO UPDATE SET pid = excluded.pid, host = excluded.host, since = excluded.since";
    tx.execute(write, params![plan, me, here])
        .map_err(|e| sql_error(e, write))?;
    // A new generation with every lease taken (a stale row taken over too): a runner still at
    // work under the old one is fenced off at its next unit (`check_fence`).
    let bump = "INSERT INTO phased_lease_generations (plan, generation) VALUES (?1, 1) \
                ON CONFLICT (plan) DO UPDATE SET generation = generation + 1 RETURNING generation";
    let generation: i64 = tx
        .query_row(bump, [plan], |r| r.get(0))
        .map_err(|e| sql_error(e, bump))?;
    tx.commit().map_err(|e| sql_error(e, "COMMIT"))?;
    if let Ok(mut held) = HELD_HERE.lock() {
        held.push(held_key(conn, plan));
    }
    Ok(Ok(generation))
}

/// The fence: in a unit's transaction (which holds SQLite's write lock, so no runner can take
/// the lease over meanwhile), the plan's lease generation must still be this runner's. Only a
/// runner holding a lease checks it (a dry run takes none).
pub fn check_fence(conn: &Connection, fence: Option<&(String, i64)>) -> Result<(), DbError> {
    let Some((plan, generation)) = fence else {
        return Ok(());
    };
    let sql = "SELECT generation FROM phased_lease_generations WHERE plan = ?1";
    let found: Option<i64> = conn
        .query_row(sql, [plan], |r| r.get(0))
        .optional()
        .map_err(|e| sql_error(e, sql))?;
    crate::db::fence::fence_result(plan, *generation, found)
}

/// Who holds the plan's lease, without taking it (`phased status`): None when nobody does, or
/// when the row's process is gone (the next run takes it over).
pub fn holder(conn: &Connection, plan: &str) -> Result<Option<LeaseHolder>, DbError> {
    let exists =
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'phased_lease'";
    let n: i64 = conn
        .query_row(exists, [], |r| r.get(0))
        .map_err(|e| sql_error(e, exists))?;
    if n == 0 {
        return Ok(None);
    }
    let read = "SELECT pid, host, since FROM phased_lease WHERE plan = ?1";
    let row: Option<(u32, String, String)> = conn
        .query_row(read, [plan], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()
        .map_err(|e| sql_error(e, read))?;
    Ok(row
        .filter(|(pid, host, _)| *host != self::host() || process_alive(*pid))
        .map(|(pid, host, since)| LeaseHolder {
            description: format!("phased pid {pid} on {host}, since {since}"),
        }))
}

pub fn release(conn: &Connection, plan: &str) -> Result<(), DbError> {
    let sql = "DELETE FROM phased_lease WHERE plan = ?1 AND pid = ?2";
    conn.execute(sql, params![plan, std::process::id()])
        .map_err(|e| sql_error(e, sql))?;
    let key = held_key(conn, plan);
    if let Ok(mut held) = HELD_HERE.lock() {
        held.retain(|k| *k != key);
    }
    Ok(())
}
