//! Whether an expression converts every existing row of a table: what `phased verify` asks of
//! the real target for each `change_type` and `add_column … up`, before anything runs. The SQL
//! and the walk are the same on both dialects; each driver (`postgres/conversion_check.rs`,
//! `sqlite/conversion_check.rs`) runs them read-only, under a deadline.
//!
//! One scan evaluates the expression over every row. When it fails, the rows are halved by the
//! table's key (`ORDER BY key LIMIT … OFFSET …`) until one row is left, the first in key order
//! that fails: about log2(rows) more scans, all within the same deadline.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::DbError;

/// One check: `expr` (over the row's columns by their bare names) evaluated over every row of
/// `table` (quoted), walked by `key` (quoted columns; empty: no narrowing to a row).
#[derive(Debug, Clone)]
pub struct ConversionCheck<'a> {
    pub table: &'a str,
    pub expr: &'a str,
    pub key: &'a [String],
    /// The time the whole check may take, narrowing included.
    pub timeout: Duration,
}

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "conversion", rename_all = "snake_case")]
pub enum Conversion {
    /// Every row converts.
    Converts { rows: i64 },
    /// Evaluating the expression failed: the database's error, and the key of the first row
    /// (in key order) that fails, when it was narrowed down in time.
    Fails {
        error: String,
        /// `id=42`; None when the table has no key to walk, the error is not one row's (a
        /// missing column), or the deadline came first.
        row: Option<String>,
    },
    /// The deadline came before the scan finished: nothing is known about the rows not seen.
    CutShort { timeout_ms: u64 },
    /// The check itself could not run (the connection failed): nothing is known.
    Unchecked { error: String },
}

/// What one statement of the check gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<T> {
    Done(T),
    /// The database's error (the statement's, not the connection's).
    Failed(String),
    /// The deadline came first.
    TimedOut,
}

/// A dialect's way of running the check's statements, read-only, each under what is left of
/// the deadline.
#[allow(async_fn_in_trait)]
pub trait Evaluator {
    /// The integer columns of the one row `sql` returns.
    async fn ints(&mut self, sql: &str, deadline: Instant) -> Result<Outcome<Vec<i64>>, DbError>;
    /// The text columns of the one row `sql` returns (None for no row).
    async fn texts(
        &mut self,
        sql: &str,
        deadline: Instant,
    ) -> Result<Outcome<Option<Vec<Option<String>>>>, DbError>;
}

/// Where the first failing row lies: in `[lo, hi)` by key order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bisect {
    lo: i64,
    hi: i64,
}

impl Bisect {
    pub fn new(rows: i64) -> Self {
        Self { lo: 0, hi: rows }
    }

    /// The window to evaluate next, `(offset, limit)`: the first half of what is left; None
    /// once one row is left.
    pub fn next(&self) -> Option<(i64, i64)> {
        (self.hi - self.lo > 1).then(|| (self.lo, (self.hi - self.lo) / 2))
    }

    /// Whether the window [`Bisect::next`] gave failed.
    pub fn record(&mut self, failed: bool) {
        let mid = self.lo + (self.hi - self.lo) / 2;
        if failed {
            self.hi = mid;
        } else {
            self.lo = mid;
        }
    }

    /// The row (offset in key order) narrowed down to.
    pub fn row(&self) -> i64 {
        self.lo
    }
}

fn window_sql(check: &ConversionCheck<'_>, offset: i64, limit: i64) -> String {
    format!(
        "SELECT count({}) FROM (SELECT * FROM {} ORDER BY {} LIMIT {limit} OFFSET {offset}) AS phased_row",
        check.expr,
        check.table,
        check.key.join(", ")
    )
}

/// Runs the check through `e` (which has begun its read-only transaction).
pub async fn run<E: Evaluator>(
    e: &mut E,
    check: &ConversionCheck<'_>,
) -> Result<Conversion, DbError> {
    let deadline = Instant::now() + check.timeout;
    let cut_short = Conversion::CutShort {
        timeout_ms: u64::try_from(check.timeout.as_millis()).unwrap_or(u64::MAX),
    };
    let all = format!(
        "SELECT count(*), count({}) FROM {} AS phased_row",
        check.expr, check.table
    );
    let error = match e.ints(&all, deadline).await? {
        Outcome::Done(counts) => {
            return Ok(Conversion::Converts {
                rows: counts.first().copied().unwrap_or(0),
            })
        }
        Outcome::TimedOut => return Ok(cut_short),
        Outcome::Failed(error) => error,
    };
    let unnarrowed = Conversion::Fails {
        error: error.clone(),
        row: None,
    };
    if check.key.is_empty() {
        return Ok(unnarrowed);
    }
    // An error without any row (a column the expression names is missing) is not a row's.
    match e.ints(&window_sql(check, 0, 0), deadline).await? {
        Outcome::Done(_) => {}
        Outcome::Failed(_) | Outcome::TimedOut => return Ok(unnarrowed),
    }
    let rows = match e
        .ints(&format!("SELECT count(*) FROM {}", check.table), deadline)
        .await?
    {
        Outcome::Done(counts) => counts.first().copied().unwrap_or(0),
        _ => return Ok(unnarrowed),
    };
    let mut bisect = Bisect::new(rows);
    while let Some((offset, limit)) = bisect.next() {
        match e.ints(&window_sql(check, offset, limit), deadline).await? {
            Outcome::Done(_) => bisect.record(false),
            Outcome::Failed(_) => bisect.record(true),
            Outcome::TimedOut => return Ok(unnarrowed),
        }
    }
    // The row left must fail on its own (rows may have changed between scans on a live
    // database: then say nothing about a row).
    match e
        .ints(&window_sql(check, bisect.row(), 1), deadline)
        .await?
    {
        Outcome::Failed(_) => {}
        _ => return Ok(unnarrowed),
    }
    let columns: Vec<String> = check
        .key
        .iter()
        .enumerate()
        // Named apart: a bare `CAST(id AS text)` is an output column named `id`, which the
        // ORDER BY below would then sort as text ('42' after '37' … '4').
        .map(|(i, k)| format!("CAST({k} AS text) AS phased_key_{i}"))
        .collect();
    let key_sql = format!(
        "SELECT {} FROM {} ORDER BY {} LIMIT 1 OFFSET {}",
        columns.join(", "),
        check.table,
        check.key.join(", "),
        bisect.row()
    );
    let row = match e.texts(&key_sql, deadline).await? {
        Outcome::Done(Some(values)) => Some(
            check
                .key
                .iter()
                .zip(values)
                .map(|(k, v)| {
                    format!(
                        "{}={}",
                        k.trim_matches('"'),
                        v.unwrap_or_else(|| "NULL".to_string())
                    )
                })
                .collect::<Vec<_>>()
                .join(", "),
        ),
        _ => None,
    };
    Ok(Conversion::Fails { error, row })
}

/// What is left of `deadline`, at least a millisecond (a zero timeout means none on PostgreSQL).
pub fn remaining(deadline: Instant) -> Option<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    (!left.is_zero()).then(|| left.max(Duration::from_millis(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bisecting finds the first failing row, whatever the others do.
    #[test]
    fn bisect_finds_the_first_failing_row() {
        for rows in 1..40i64 {
            for bad in 0..rows {
                let fails = |offset: i64, limit: i64| {
                    offset <= bad && bad < offset + limit
                        || (offset..offset + limit).any(|r| r > bad && r % 7 == 0)
                };
                let mut b = Bisect::new(rows);
                while let Some((offset, limit)) = b.next() {
                    b.record(fails(offset, limit));
                }
                // Rows after `bad` that also fail (every 7th) do not mislead it.
                assert_eq!(b.row(), bad, "rows {rows}, bad {bad}");
            }
        }
    }
}
