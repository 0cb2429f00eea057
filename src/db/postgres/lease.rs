//! The single-runner lease: a session-level advisory lock keyed by the plan, taken with
//! `pg_try_advisory_lock` (never waiting), released when the run ends or its connection dies.

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use super::sql_error;
use crate::db::{DbError, LeaseHolder};

/// The advisory lock key of a plan: the first 8 bytes of sha256("phased:" + plan).
pub fn key(plan: &str) -> i64 {
    let digest = Sha256::digest(format!("phased:{plan}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// Takes the lease, or returns who holds it.
pub async fn try_acquire(conn: &Client, plan: &str) -> Result<Option<LeaseHolder>, DbError> {
    let key = key(plan);
    let sql = "SELECT pg_try_advisory_lock($1)";
    let got: bool = conn
        .query_one(sql, &[&key])
        .await
        .map_err(|e| sql_error(e, sql))?
        .get(0);
    if got {
        return Ok(None);
    }
    Ok(Some(holder(conn, plan).await?.unwrap_or_else(|| {
        LeaseHolder {
            description: "another session (it has just released it or is not visible to this user)"
                .to_string(),
        }
    })))
}

/// Who holds the plan's lease, without taking it (`phased status`): None when nobody does.
pub async fn holder(conn: &Client, plan: &str) -> Result<Option<LeaseHolder>, DbError> {
    let key = key(plan);
    // A bigint advisory key shows in pg_locks as classid (high half) / objid (low half), objsubid 1;
    // advisory locks belong to a database, and the same plan may be running on another one.
    let classid = (key >> 32) as u32;
    let objid = (key & 0xffff_ffff) as u32;
    let who = "SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.client_addr::text, 'local'), \
               to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
               FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
               WHERE l.locktype = 'advisory' AND l.classid = $1 AND l.objid = $2 AND l.objsubid = 1 AND l.granted \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())";
    let row = conn
        .query_opt(who, &[&classid, &objid])
        .await
        .map_err(|e| sql_error(e, who))?;
    Ok(row.map(|r| {
        let pid: i32 = r.get(0);
        let app: String = r.get(1);
        let addr: String = r.get(2);
        let since: Option<String> = r.get(3);
        LeaseHolder {
            description: format!(
                "pid {pid} ({app}) from {addr}, connected since {}",
                since.unwrap_or_else(|| "an unknown time".into())
            ),
        }
    }))
}

pub async fn release(conn: &Client, plan: &str) -> Result<(), DbError> {
    let sql = "SELECT pg_advisory_unlock($1)";
    conn.query_one(sql, &[&key(plan)])
        .await
        .map_err(|e| sql_error(e, sql))?;
    Ok(())
}

/// Bumps the plan's lease generation, on the session that has just taken the advisory lock.
/// A runner still working under an older generation is fenced off by it (see [`check_fence`]);
/// one in the middle of a unit holds the row `FOR SHARE`, so this waits for that unit to end.
pub async fn bump_generation(conn: &Client, plan: &str) -> Result<i64, DbError> {
    let sql = "INSERT INTO phased.leases (plan, generation) VALUES ($1, 1) \
               ON CONFLICT (plan) DO UPDATE SET generation = phased.leases.generation + 1 \
               RETURNING generation";
    Ok(conn
        .query_one(sql, &[&plan])
        .await
        .map_err(|e| sql_error(e, sql))?
        .get(0))
}

/// The fence's look-up: the plan's lease generation, locked until the transaction ends.
pub(crate) const FENCE: &str = "SELECT generation FROM phased.leases WHERE plan = $1 FOR SHARE";

/// The fence: in a unit's transaction, the plan's lease generation must still be this runner's.
/// A look-up (sent only by a runner that holds a lease; a dry run takes none), locked `FOR
/// SHARE` until the transaction ends so no other runner can take the lease over meanwhile.
pub async fn check_fence<C: deadpool_postgres::GenericClient>(
    conn: &C,
    fence: Option<&(String, i64)>,
) -> Result<(), DbError> {
    let Some((plan, generation)) = fence else {
        return Ok(());
    };
    let sql = FENCE;
    let found: Option<i64> = conn
        .query_opt(sql, &[plan])
        .await
        .map_err(|e| sql_error(e, sql))?
        .map(|r| r.get(0));
    crate::db::fence::fence_result(plan, *generation, found)
}
