//! Errors from talking to a database, classified so the engine knows what is worth retrying.

/// A database error, with the SQL that caused it.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database could not be reached or opened.
    #[error("cannot connect to {target}: {message}")]
    Connect { target: String, message: String },
    /// A statement failed.
    #[error("{message}")]
    Sql {
        message: String,
        /// SQLSTATE on PostgreSQL, the extended result code name on SQLite.
        code: Option<String>,
        sql: String,
        /// A lock timeout, deadlock, serialization failure or lost connection: worth another
        /// attempt.
        retryable: bool,
    },
    /// The database answered with something phased cannot use.
    #[error("{0}")]
    Unexpected(String),
    /// This runner no longer holds the plan's lease (its lock session ended, or another runner
    /// took the lease over): the unit of work was rolled back and no more may be done.
    #[error("the lease was lost: {0}")]
    LeaseLost(String),
}

impl DbError {
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            DbError::Sql {
                retryable: true,
                ..
            }
        )
    }

    /// The connection was lost under the statement (terminated by an administrator, a
    /// failover, a dropped network): its transaction rolled back, and a new connection may carry
    /// on. PostgreSQL's connection-exception class (08), `admin_shutdown` / `crash_shutdown`
    /// (57P01, 57P02); the driver's "connection closed" is mapped to 08006.
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, DbError::Sql { code: Some(c), .. }
            if c.starts_with("08") || c == "57P01" || c == "57P02")
    }

    /// Why the lease was lost, when that is what this error is.
    pub fn lease_lost(&self) -> Option<&str> {
        match self {
            DbError::LeaseLost(why) => Some(why),
            _ => None,
        }
    }

    pub fn sql(&self) -> Option<&str> {
        match self {
            DbError::Sql { sql, .. } => Some(sql),
            _ => None,
        }
    }
}
