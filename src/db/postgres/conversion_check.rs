//! The conversion check on PostgreSQL (see `db/conversion_check.rs`): one `REPEATABLE READ
//! READ ONLY` transaction, so every scan sees the same rows and nothing can be written; each
//! statement under a savepoint (an evaluation error must not end the walk) and a
//! `statement_timeout` of what is left of the deadline. Takes ACCESS SHARE on the table, like
//! any SELECT: nobody waits for it but an ACCESS EXCLUSIVE lock.

use std::time::Instant;

use tokio_postgres::error::SqlState;

use super::sql_error;
use crate::db::conversion_check::{
    self, remaining, Conversion, ConversionCheck, Evaluator, Outcome,
};
use crate::db::DbError;

struct Pg<'c> {
    client: &'c tokio_postgres::Client,
}

impl Pg<'_> {
    /// Runs `body` under a savepoint and the time left; its error becomes an outcome unless the
    /// connection went.
    async fn guarded<T>(
        &self,
        sql: &str,
        deadline: Instant,
        body: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<Outcome<T>, DbError> {
        let Some(left) = remaining(deadline) else {
            return Ok(Outcome::TimedOut);
        };
        let setup = format!(
            "SAVEPOINT phased_check; SET LOCAL statement_timeout = {}",
            left.as_millis()
        );
        self.client
            .batch_execute(&setup)
            .await
            .map_err(|e| sql_error(e, &setup))?;
        match body.await {
            Ok(value) => {
                let release = "RELEASE SAVEPOINT phased_check";
                self.client
                    .batch_execute(release)
                    .await
                    .map_err(|e| sql_error(e, release))?;
                Ok(Outcome::Done(value))
            }
            Err(e) => {
                let timed_out = e.code() == Some(&SqlState::QUERY_CANCELED);
                let err = sql_error(e, sql);
                if err.is_connection_lost() {
                    return Err(err);
                }
                let back = "ROLLBACK TO SAVEPOINT phased_check";
                self.client
                    .batch_execute(back)
                    .await
                    .map_err(|e| sql_error(e, back))?;
                Ok(if timed_out {
                    Outcome::TimedOut
                } else {
                    Outcome::Failed(err.to_string())
                })
            }
        }
    }
}

impl Evaluator for Pg<'_> {
    async fn ints(&mut self, sql: &str, deadline: Instant) -> Result<Outcome<Vec<i64>>, DbError> {
        let client = self.client;
        self.guarded(sql, deadline, async move {
            let row = client.query_one(sql, &[]).await?;
            (0..row.len()).map(|i| row.try_get::<_, i64>(i)).collect()
        })
        .await
    }

    async fn texts(
        &mut self,
        sql: &str,
        deadline: Instant,
    ) -> Result<Outcome<Option<Vec<Option<String>>>>, DbError> {
        let client = self.client;
        self.guarded(sql, deadline, async move {
            let row = client.query_opt(sql, &[]).await?;
            row.map(|row| {
                (0..row.len())
                    .map(|i| row.try_get::<_, Option<String>>(i))
                    .collect()
            })
            .transpose()
        })
        .await
    }
}

/// Runs `check` read-only on `client`, which must not be in a transaction; always ends the
/// transaction it begins.
pub async fn check(
    client: &tokio_postgres::Client,
    check: &ConversionCheck<'_>,
) -> Result<Conversion, DbError> {
    let begin = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";
    client
        .batch_execute(begin)
        .await
        .map_err(|e| sql_error(e, begin))?;
    let result = conversion_check::run(&mut Pg { client }, check).await;
    let end = client.batch_execute("ROLLBACK").await;
    let found = result?;
    end.map_err(|e| sql_error(e, "ROLLBACK"))?;
    Ok(found)
}
