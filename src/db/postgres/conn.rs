//! The connection step work runs on: it sends statements, or — for `phased plan` — records them
//! (see `db::recorder`). Every statement of a step's path goes through here, so a dry run cannot
//! drift from a run: there is one code path, and only this file knows which mode it is in.
//!
//! Writes (`execute`, `batch_execute`, `simple_query`) are recorded instead of sent while
//! recording; reads (`query*`) are sent as usual, and answered with nothing when there is no
//! database (`phased plan --offline`).

use deadpool_postgres::Object;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::sql_error;
use crate::db::recorder::{effect_of_write, Effect, Recorder};
use crate::db::DbError;

pub struct Conn {
    client: Option<Object>,
    recorder: Option<Recorder>,
    /// The backfill batch statement prepared on this connection, with its SQL: kept here, not
    /// in the pool's statement cache, since a batch must know before it sends anything
    /// whether the statement still needs preparing (`backfill::run_batch`).
    batch: Option<(String, tokio_postgres::Statement)>,
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

fn shown(params: Params<'_>) -> Vec<String> {
    params.iter().map(|p| format!("{p:?}")).collect()
}

impl Conn {
    pub fn live(client: Object) -> Self {
        Self {
            client: Some(client),
            recorder: None,
            batch: None,
        }
    }

    /// Records instead of writing; `client` answers the look-ups (None: offline, no answers).
    pub fn recording(client: Option<Object>, recorder: Recorder) -> Self {
        Self {
            client,
            recorder: Some(recorder),
            batch: None,
        }
    }

    pub fn into_client(self) -> Option<Object> {
        self.client
    }

    /// True when the live connection is gone (its session ended); never while recording.
    pub fn is_closed(&self) -> bool {
        self.recorder.is_none() && self.client.as_ref().is_some_and(|c| c.is_closed())
    }

    pub fn recorder(&self) -> Option<&Recorder> {
        self.recorder.as_ref()
    }

    /// The database connection itself, for what never runs in a dry run (backups, snapshots,
    /// the commands that only read).
    pub fn client(&self) -> Result<&Object, DbError> {
        self.client.as_ref().ok_or_else(|| {
            DbError::Unexpected("no database connection (offline dry run)".to_string())
        })
    }

    /// The backfill batch statement prepared on this connection for `sql`, if it is.
    pub fn batch_statement(&self, sql: &str) -> Option<tokio_postgres::Statement> {
        self.batch
            .as_ref()
            .filter(|(text, _)| text == sql)
            .map(|(_, statement)| statement.clone())
    }

    /// Keeps the backfill batch statement just prepared for `sql` (the one before is dropped,
    /// and with it its server-side statement).
    pub fn keep_batch_statement(&mut self, sql: &str, statement: tokio_postgres::Statement) {
        self.batch = Some((sql.to_string(), statement));
    }

    /// The live connection, mutably (a backfill batch pipelines prepared statements on it).
    pub fn client_mut(&mut self) -> Result<&mut Object, DbError> {
        self.client.as_mut().ok_or_else(|| {
            DbError::Unexpected("no database connection (offline dry run)".to_string())
        })
    }

    fn record_read(&self, sql: &str, params: Params<'_>) {
        if let Some(r) = &self.recorder {
            r.sql(sql, shown(params), Effect::Read);
        }
    }

    /// A statement that changes something; returns the rows it affected (0 when recorded).
    pub async fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64, DbError> {
        if let Some(r) = &self.recorder {
            r.sql(sql, shown(params), effect_of_write(sql));
            return Ok(0);
        }
        self.client()?
            .execute(sql, params)
            .await
            .map_err(|e| sql_error(e, sql))
    }

    /// Statements without parameters, sent in one message (simple protocol).
    pub async fn batch_execute(&self, sql: &str) -> Result<(), DbError> {
        if let Some(r) = &self.recorder {
            r.sql(sql, Vec::new(), effect_of_write(sql));
            return Ok(());
        }
        self.client()?
            .batch_execute(sql)
            .await
            .map_err(|e| sql_error(e, sql))
    }

    /// One statement outside the extended protocol's implicit transaction (`… CONCURRENTLY`).
    pub async fn simple_query(&self, sql: &str) -> Result<(), DbError> {
        if let Some(r) = &self.recorder {
            r.sql(sql, Vec::new(), effect_of_write(sql));
            return Ok(());
        }
        self.client()?
            .simple_query(sql)
            .await
            .map(|_| ())
            .map_err(|e| sql_error(e, sql))
    }

    /// Opens a transaction (`BEGIN`, as tokio-postgres sends it).
    pub async fn begin(&self) -> Result<(), DbError> {
        self.batch_execute("BEGIN").await
    }

    pub async fn commit(&self) -> Result<(), DbError> {
        self.batch_execute("COMMIT").await
    }

    /// Ends a failed transaction; the error that failed it is what matters, so this one's own
    /// failure (a dead connection) is left to the next statement to report.
    pub async fn rollback(&self) {
        let _ = self.batch_execute("ROLLBACK").await;
    }

    /// Runs `body` between BEGIN and COMMIT, rolling back when it fails.
    pub async fn in_transaction<F, T>(&self, body: F) -> Result<T, DbError>
    where
        F: std::future::Future<Output = Result<T, DbError>>,
    {
        self.begin().await?;
        match body.await {
            Ok(value) => {
                if let Err(e) = self.commit().await {
                    self.rollback().await;
                    return Err(e);
                }
                Ok(value)
            }
            Err(e) => {
                self.rollback().await;
                Err(e)
            }
        }
    }

    pub async fn query(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, DbError> {
        self.record_read(sql, params);
        match &self.client {
            Some(c) => c.query(sql, params).await.map_err(|e| sql_error(e, sql)),
            None => Ok(Vec::new()),
        }
    }

    pub async fn query_opt(&self, sql: &str, params: Params<'_>) -> Result<Option<Row>, DbError> {
        self.record_read(sql, params);
        match &self.client {
            Some(c) => c
                .query_opt(sql, params)
                .await
                .map_err(|e| sql_error(e, sql)),
            None => Ok(None),
        }
    }
}
