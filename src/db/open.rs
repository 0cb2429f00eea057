//! Opening a database by its URL: the one place that turns `postgres://…` or `sqlite://…` into
//! a target of either dialect, for the CLI and for what the engine opens itself (a restore).

use super::postgres::PgTarget;
use super::sqlite::SqliteTarget;
use super::{DatabaseUrl, DbError};

/// An opened target of either dialect.
pub enum AnyTarget {
    Postgres(Box<PgTarget>),
    Sqlite(Box<SqliteTarget>),
}

/// Whether opening may create a missing SQLite file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Open {
    /// `run`, `db upgrade`, `verify`'s scratch copy: a new database starts here.
    Create,
    /// Every command that reads or amends a database that must already be there: a mistyped
    /// path is an error, not a new empty file whose steps all read as pending.
    Existing,
}

/// Opens the database `url` names; PostgreSQL connections announce themselves as `application`.
pub async fn open(url: &DatabaseUrl, application: &str, mode: Open) -> Result<AnyTarget, DbError> {
    match url {
        DatabaseUrl::Postgres(u) => Ok(AnyTarget::Postgres(Box::new(
            PgTarget::connect(u, application).await?,
        ))),
        DatabaseUrl::Sqlite(path) => {
            if mode == Open::Existing && is_missing_file(url) {
                return Err(DbError::Connect {
                    target: url.redacted(),
                    message: "no such database file (`phased run` creates it); check --database \
                              or DATABASE_URL"
                        .to_string(),
                });
            }
            Ok(AnyTarget::Sqlite(Box::new(SqliteTarget::open(path)?)))
        }
    }
}

/// The target a dry run runs on: `opened` (or nothing, offline) with its connection recording
/// into `recorder` (PostgreSQL: writes recorded, look-ups sent; SQLite: an in-memory copy).
pub fn recording(
    opened: Option<AnyTarget>,
    dialect: crate::db::Dialect,
    recorder: crate::db::recorder::Recorder,
) -> Result<AnyTarget, DbError> {
    Ok(match (opened, dialect) {
        (Some(AnyTarget::Postgres(t)), _) => {
            AnyTarget::Postgres(Box::new(PgTarget::recording(Some(*t), recorder)))
        }
        (Some(AnyTarget::Sqlite(t)), _) => {
            AnyTarget::Sqlite(Box::new(SqliteTarget::recording(Some(&t), recorder)?))
        }
        (None, crate::db::Dialect::Postgres) => {
            AnyTarget::Postgres(Box::new(PgTarget::recording(None, recorder)))
        }
        (None, crate::db::Dialect::Sqlite) => {
            AnyTarget::Sqlite(Box::new(SqliteTarget::recording(None, recorder)?))
        }
    })
}

/// The URL names an SQLite file that does not exist (`:memory:` and `file:` URIs are SQLite's
/// to resolve, so they count as there).
pub fn is_missing_file(url: &DatabaseUrl) -> bool {
    match url {
        DatabaseUrl::Postgres(_) => false,
        DatabaseUrl::Sqlite(path) => {
            let text = path.to_string_lossy();
            !(text == ":memory:" || text.starts_with("file:") || path.exists())
        }
    }
}

/// Runs `$body` with `$t` bound to the concrete target (the database traits are not object-safe).
#[macro_export]
#[doc(hidden)]
macro_rules! with_target {
    ($any:expr, $t:ident => $body:expr) => {
        match $any {
            $crate::db::open::AnyTarget::Postgres($t) => {
                #[allow(unused_imports)]
                use $crate::db::prelude::*;
                let $t = &mut **$t;
                $body
            }
            $crate::db::open::AnyTarget::Sqlite($t) => {
                #[allow(unused_imports)]
                use $crate::db::prelude::*;
                let $t = &mut **$t;
                $body
            }
        }
    };
}
