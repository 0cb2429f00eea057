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
        /// A lock timeout, deadlock or serialization failure: worth another attempt.
        retryable: bool,
    },
    /// The database answered with something phased cannot use.
    #[error("{0}")]
    Unexpected(String),
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

    pub fn sql(&self) -> Option<&str> {
        match self {
            DbError::Sql { sql, .. } => Some(sql),
            _ => None,
        }
    }
}
