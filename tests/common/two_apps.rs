//! The two-application harness: the old application (the schema by its old names) and the new
//! one (by the new names) as sessions of their own, writing and reading while phases run.
//!
//! - [`App`]: one application session; `exec` and `rows` panic naming the application and the
//!   SQL, since every statement the contract promises must succeed.
//! - [`Writer`]: an application writing in the background, in a loop, while a phase runs:
//!   each round runs its statements with `{i}` replaced by the round number (distinct keys);
//!   `stop` returns the rounds done and every error seen.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::TestDb;

/// One application session.
pub enum App {
    Pg(tokio_postgres::Client, &'static str),
    Sqlite(rusqlite::Connection, &'static str),
}

impl App {
    /// A session named `who` ("old app", "new app") on the test database. SQLite waits up to
    /// 10 s for the write lock, as an application would (phased holds it for moments).
    pub async fn open(db: &TestDb, who: &'static str) -> App {
        match db {
            TestDb::Pg(pg) => App::Pg(pg.client().await, who),
            TestDb::Sqlite(lite) => {
                let conn = lite.conn();
                conn.busy_timeout(std::time::Duration::from_secs(10))
                    .expect("busy_timeout");
                App::Sqlite(conn, who)
            }
        }
    }

    fn who(&self) -> &'static str {
        match self {
            App::Pg(_, who) | App::Sqlite(_, who) => who,
        }
    }

    /// Runs statements; an error is returned with the application and the SQL.
    pub async fn try_exec(&self, sql: &str) -> Result<(), String> {
        let result = match self {
            App::Pg(client, _) => client.batch_execute(sql).await.map_err(|e| {
                e.as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_else(|| e.to_string())
            }),
            App::Sqlite(conn, _) => conn.execute_batch(sql).map_err(|e| e.to_string()),
        };
        result.map_err(|e| format!("{}: `{sql}`: {e}", self.who()))
    }

    /// Runs statements that must succeed.
    pub async fn exec(&self, sql: &str) {
        if let Err(e) = self.try_exec(sql).await {
            panic!("{e}");
        }
    }

    /// Every row of a query, each value as text (NULL as None), in the query's order.
    pub async fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        match self {
            // The simple protocol returns every value as text, in column order.
            App::Pg(client, who) => client
                .simple_query(sql)
                .await
                .unwrap_or_else(|e| panic!("{who}: `{sql}`: {e}"))
                .into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                        (0..row.len())
                            .map(|i| row.get(i).map(str::to_string))
                            .collect(),
                    ),
                    _ => None,
                })
                .collect(),
            App::Sqlite(conn, who) => {
                let mut stmt = conn
                    .prepare(sql)
                    .unwrap_or_else(|e| panic!("{who}: `{sql}`: {e}"));
                let n = stmt.column_count();
                stmt.query_map([], |r| {
                    (0..n)
                        .map(|i| {
                            r.get::<_, rusqlite::types::Value>(i).map(|v| match v {
                                rusqlite::types::Value::Null => None,
                                rusqlite::types::Value::Integer(i) => Some(i.to_string()),
                                rusqlite::types::Value::Real(f) => Some(f.to_string()),
                                rusqlite::types::Value::Text(t) => Some(t),
                                rusqlite::types::Value::Blob(b) => Some(format!("{b:?}")),
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .unwrap_or_else(|e| panic!("{who}: `{sql}`: {e}"))
            }
        }
    }

    /// One value of a query that returns one row.
    pub async fn value(&self, sql: &str) -> Option<String> {
        self.rows(sql)
            .await
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten())
    }
}

/// An application writing in a loop in the background, on a thread of its own (an SQLite
/// connection cannot be shared between tasks).
pub struct Writer {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<(u64, Vec<String>)>,
}

impl Writer {
    /// Starts `who` running `statements` (with `{i}` replaced by the round, from `first`) round
    /// after round until stopped. Every round runs; an error is kept and the next round goes on.
    pub async fn start(db: &TestDb, who: &'static str, first: u64, statements: &[&str]) -> Writer {
        let app = App::open(db, who).await;
        let statements: Vec<String> = statements.iter().map(|s| s.to_string()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the writer");
            runtime.block_on(async move {
                let mut round = first;
                let mut errors = Vec::new();
                let mut rounds = 0;
                // At least one round, so a phase that ends at once still saw a write.
                while rounds == 0 || !flag.load(Ordering::SeqCst) {
                    for sql in &statements {
                        if let Err(e) = app.try_exec(&sql.replace("{i}", &round.to_string())).await
                        {
                            errors.push(e);
                        }
                    }
                    round += 1;
                    rounds += 1;
                    // A pace an application might have, and room for the runner on 2 cores.
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
                (rounds, errors)
            })
        });
        Writer { stop, handle }
    }

    /// Stops after the current round: the rounds done and the errors seen.
    pub async fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        tokio::task::spawn_blocking(move || self.handle.join())
            .await
            .expect("join")
            .expect("the writer thread")
    }
}

/// Runs `phase` of the plan (one phase, through the engine) while both writers write, then
/// stops them and asserts that no statement of either failed; returns the rounds each did.
pub async fn phase_under_writers(
    db: &TestDb,
    loaded: &phased::plan::LoadedPlan,
    phase: &str,
    writers: Vec<Writer>,
) -> Vec<u64> {
    let options = phased::engine::RunOptions {
        phase: Some(phase.to_string()),
        ..Default::default()
    };
    let ran = super::run(db, loaded, options).await;
    let mut rounds = Vec::new();
    let mut errors = Vec::new();
    for w in writers {
        let (n, e) = w.stop().await;
        rounds.push(n);
        errors.extend(e);
    }
    if let Err((e, _)) = ran {
        panic!("phase {phase} failed: {e}");
    }
    assert!(
        errors.is_empty(),
        "during phase {phase}, the applications' statements failed:\n{}",
        errors.join("\n")
    );
    rounds
}
