//! What goes with a dropped column: the constraints and indexes that involve it, looked up so
//! `drop_column` drops each by name (in its transaction, before the column) instead of letting
//! PostgreSQL drop them silently. A look-up, so a dry run sends it and shows the drops.

use super::conn::Conn;
use crate::db::DbError;
use crate::ops::name::{ident, quote};

/// The statements that drop `column` of `table` (as the plan names them): each constraint on it
/// (`ALTER TABLE … DROP CONSTRAINT`, which takes a unique or primary key's index along), each
/// other index that names it in its keys, expressions or predicate (`DROP INDEX`), then `drop`.
/// A foreign key of another table that references the column is left to `drop` to refuse.
pub async fn drop_statements(
    work: &Conn,
    table: &str,
    column: &str,
    drop: &str,
) -> Result<Vec<String>, DbError> {
    let constraints = "SELECT k.conname::text FROM pg_constraint k \
         JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attname = $2 \
         WHERE k.conrelid = to_regclass($1) AND a.attnum = ANY (k.conkey) \
           AND k.contype IN ('c', 'f', 'p', 'u', 'x') \
         ORDER BY k.conname";
    let indexes = "SELECT n.nspname::text, c.relname::text FROM pg_index i \
         JOIN pg_class c ON c.oid = i.indexrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attname = $2 \
         WHERE i.indrelid = to_regclass($1) \
           AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid \
                           AND k.conrelid = i.indrelid AND k.contype IN ('p', 'u', 'x') \
                           AND a.attnum = ANY (k.conkey)) \
           AND EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                       AND d.objid = i.indexrelid AND d.refclassid = 'pg_class'::regclass \
                       AND d.refobjid = i.indrelid AND d.refobjsubid = a.attnum) \
         ORDER BY c.relname";
    let table = ident(table);
    let mut statements = Vec::new();
    for row in work.query(constraints, &[&table, &column]).await? {
        let name: String = row.get(0);
        statements.push(format!(
            "ALTER TABLE {table} DROP CONSTRAINT {}",
            quote(&name)
        ));
    }
    for row in work.query(indexes, &[&table, &column]).await? {
        let (schema, name): (String, String) = (row.get(0), row.get(1));
        statements.push(format!("DROP INDEX {}.{}", quote(&schema), quote(&name)));
    }
    for sql in &statements {
        tracing::info!(statement = %sql, column, "goes with the dropped column");
    }
    statements.push(drop.to_string());
    Ok(statements)
}
