//! What a step records before it changes or drops something (`Unit::Remember`): the
//! definition as PostgreSQL itself renders it (`pg_get_indexdef`, `pg_get_constraintdef`,
//! `pg_get_expr`, the comment), kept in the step's checkpoint for rollback.

use super::conn::Conn;
use super::state;
use crate::db::{DbError, StepKey};
use crate::ops::name::ident;
use crate::ops::{Recorded, Remembered};

/// Looks `what` up and keeps it in the step's checkpoint. An index or constraint that is not
/// there leaves what an earlier attempt recorded (a rerun after the drop committed), or, when
/// nothing was, records that it was not there (rollback then has nothing to put back). A
/// default or comment is recorded even when there is none (that is what rollback puts back).
pub async fn record(conn: &Conn, key: &StepKey, what: &Remembered) -> Result<(), DbError> {
    if let Some(recorded) = look_up(conn, what).await? {
        return state::set_checkpoint(conn, key, Some(&recorded.to_checkpoint())).await;
    }
    // (A dry run on a database phased never ran on has no state tables to read.)
    let checkpoint: Option<String> = if state::relation_exists(conn, "phased.steps").await? {
        let sql = "SELECT checkpoint FROM phased.steps WHERE plan = $1 AND phase = $2 AND step_index = $3";
        conn.query_opt(sql, &[&key.plan, &key.phase, &key.index])
            .await?
            .and_then(|row| row.get(0))
    } else {
        None
    };
    if Recorded::from_checkpoint(checkpoint.as_deref()).is_some() {
        tracing::info!(
            what = %what.describe(),
            "not there any more; keeping what an earlier attempt recorded"
        );
        return Ok(());
    }
    state::set_checkpoint(conn, key, Some(&Recorded::default().to_checkpoint())).await
}

async fn look_up(conn: &Conn, what: &Remembered) -> Result<Option<Recorded>, DbError> {
    Ok(match what {
        Remembered::Index { name } => {
            let sql = "SELECT pg_get_indexdef(c.oid) FROM pg_class c \
                       WHERE c.oid = to_regclass($1) AND c.relkind IN ('i', 'I')";
            conn.query_opt(sql, &[&ident(name)])
                .await?
                .map(|row| Recorded {
                    definition: row.get(0),
                    ..Recorded::default()
                })
        }
        Remembered::Constraint { table, name } => {
            let sql = "SELECT pg_get_constraintdef(c.oid), c.contype::text, \
                       CASE WHEN c.contype IN ('u', 'p') THEN i.relname::text END, \
                       CASE WHEN c.contype IN ('u', 'p') THEN pg_get_indexdef(c.conindid) END \
                       FROM pg_constraint c LEFT JOIN pg_class i ON i.oid = c.conindid \
                       WHERE c.conrelid = to_regclass($1) AND c.conname = $2";
            conn.query_opt(sql, &[&ident(table), name])
                .await?
                .map(|row| Recorded {
                    definition: row.get(0),
                    contype: row.get(1),
                    index_name: row.get(2),
                    index_definition: row.get(3),
                })
        }
        Remembered::Default { table, column } => {
            let sql = "SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attribute a \
                       LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
                       WHERE a.attrelid = to_regclass($1) AND a.attname = $2 AND NOT a.attisdropped";
            conn.query_opt(sql, &[&ident(table), column])
                .await?
                .map(|row| Recorded {
                    definition: row.get(0),
                    ..Recorded::default()
                })
        }
        Remembered::Comment {
            table,
            column: None,
        } => {
            let sql = "SELECT obj_description(c.oid, 'pg_class') FROM pg_class c \
                       WHERE c.oid = to_regclass($1)";
            conn.query_opt(sql, &[&ident(table)])
                .await?
                .map(|row| Recorded {
                    definition: row.get(0),
                    ..Recorded::default()
                })
        }
        Remembered::Comment {
            table,
            column: Some(column),
        } => {
            let sql = "SELECT col_description(a.attrelid, a.attnum) FROM pg_attribute a \
                       WHERE a.attrelid = to_regclass($1) AND a.attname = $2 AND NOT a.attisdropped";
            conn.query_opt(sql, &[&ident(table), column])
                .await?
                .map(|row| Recorded {
                    definition: row.get(0),
                    ..Recorded::default()
                })
        }
    })
}
