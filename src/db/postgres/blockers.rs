//! Who stands in the way of a lock: other sessions' entries in `pg_locks` on a table whose mode
//! conflicts with the one phased needs, with what `pg_stat_activity` says about them.

use super::conn::Conn;
use crate::db::{Blocker, DbError, LockMode};
use crate::ops::name::ident;

/// Sessions other than `ours` that hold or wait for a lock on `table` conflicting with `mode`,
/// longest-running first. A table that does not exist has none. A routine autovacuum is not a
/// blocker: PostgreSQL cancels it when a conflicting lock request waits on it (waiting for it to
/// finish could take hours); an anti-wraparound one is never cancelled, so it counts.
pub async fn find(
    conn: &Conn,
    table: &str,
    mode: LockMode,
    ours: &[i32],
) -> Result<Vec<Blocker>, DbError> {
    let sql = "SELECT l.pid, l.mode, l.granted, coalesce(a.application_name, ''), coalesce(a.state, ''), \
               coalesce(extract(epoch FROM now() - coalesce(a.xact_start, a.query_start, a.backend_start)), 0)::float8, \
               to_char(a.query_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
               left(regexp_replace(coalesce(a.query, ''), '\\s+', ' ', 'g'), 120) \
               FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
               WHERE l.locktype = 'relation' \
                 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                 AND l.relation = to_regclass($1) \
                 AND l.pid IS NOT NULL AND l.pid <> pg_backend_pid() AND NOT (l.pid = ANY($2)) \
                 AND NOT (coalesce(a.backend_type, '') = 'autovacuum worker' \
                          AND coalesce(a.query, '') NOT LIKE '%to prevent wraparound%') \
               ORDER BY 6 DESC, l.pid";
    let rows = conn.query(sql, &[&ident(table), &ours]).await?;
    let mut blockers: Vec<Blocker> = Vec::new();
    for row in rows {
        let held: String = row.get(1);
        let conflicts = LockMode::from_pg_name(&held).is_none_or(|m| m.conflicts_with(mode));
        if !conflicts {
            continue;
        }
        let pid: i32 = row.get(0);
        // One line per session, even when it holds several modes.
        if blockers.iter().any(|b| b.pid == pid) {
            continue;
        }
        blockers.push(Blocker {
            pid,
            mode: held,
            granted: row.get(2),
            application_name: row.get(3),
            state: row.get(4),
            seconds: row.get(5),
            query_start: row.get(6),
            query: row.get(7),
        });
    }
    Ok(blockers)
}
