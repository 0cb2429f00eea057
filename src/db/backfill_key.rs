//! Checks on the key a backfill walks, shared by both dialects: keyset batches skip rows whose
//! key is NULL and need a unique key to keep batches bounded.

use super::DbError;

/// Checks that every key column exists and is NOT NULL, given the table's (name, not null).
pub fn check_key_columns(
    table: &str,
    key: &[String],
    columns: &[(String, bool)],
) -> Result<(), DbError> {
    for k in key {
        match columns.iter().find(|(name, _)| name == k) {
            None => {
                let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
                return Err(DbError::Unexpected(format!(
                    "the backfill's `key` names column `{k}`, which table `{table}` does not have; \
                     its columns are: {}",
                    names.join(", ")
                )));
            }
            Some((_, false)) => {
                return Err(DbError::Unexpected(format!(
                    "the backfill's `key` column `{table}.{k}` is nullable; rows with a NULL key \
                     would be skipped. Name NOT NULL columns in `key`"
                )))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The error for a `key` no unique index covers.
pub fn not_unique(table: &str, key: &[String]) -> DbError {
    DbError::Unexpected(format!(
        "the backfill's `key` ({}) of table `{table}` is not covered by a unique index; \
         keyset batches need a unique key. Add a unique index on it in an expand phase, or name \
         the primary key",
        key.join(", ")
    ))
}
