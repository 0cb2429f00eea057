//! A table's catalog facts (`Catalog::table_facts`): look-ups only, so a dry run sends them.

use super::conn::Conn;
use crate::db::DbError;
use crate::ops::facts::{ColumnFacts, ConstraintFacts, IndexFacts, ReferenceFacts, TableFacts};
use crate::ops::name::ident;

const COLUMNS: &str =
    "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull, \
       pg_get_expr(d.adbin, d.adrelid), \
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = a.attrelid AND i.indisprimary \
               AND a.attnum = ANY (i.indkey)) \
     FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
     WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
     ORDER BY a.attnum";

const INDEXES: &str = "SELECT c.relname::text, pg_get_indexdef(i.indexrelid), i.indisunique, \
       i.indisprimary, i.indisvalid, \
       (SELECT k.conname::text FROM pg_constraint k WHERE k.conindid = i.indexrelid \
          AND k.conrelid = i.indrelid AND k.contype IN ('p', 'u', 'x') LIMIT 1), \
       ARRAY(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = i.indrelid \
             AND a.attnum > 0 AND NOT a.attisdropped AND (a.attnum = ANY (i.indkey) \
               OR EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                  AND d.objid = i.indexrelid AND d.refclassid = 'pg_class'::regclass \
                  AND d.refobjid = i.indrelid AND d.refobjsubid = a.attnum)) \
             ORDER BY a.attnum) \
     FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
     WHERE i.indrelid = to_regclass($1) ORDER BY c.relname";

const CONSTRAINTS: &str = "SELECT k.conname::text, k.contype::text, pg_get_constraintdef(k.oid), \
       ARRAY(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = k.conrelid \
             AND a.attnum = ANY (k.conkey) ORDER BY a.attnum), k.convalidated \
     FROM pg_constraint k WHERE k.conrelid = to_regclass($1) ORDER BY k.conname";

const REFERENCED_BY: &str = "SELECT k.conname::text, k.conrelid::regclass::text, \
       pg_get_constraintdef(k.oid), \
       ARRAY(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = k.confrelid \
             AND a.attnum = ANY (k.confkey) ORDER BY a.attnum) \
     FROM pg_constraint k WHERE k.contype = 'f' AND k.confrelid = to_regclass($1) \
     ORDER BY k.conname";

/// The facts of `table` (as the plan names it); an absent table has none.
pub async fn table_facts(work: &Conn, table: &str) -> Result<TableFacts, DbError> {
    let name = ident(table);
    let columns: Vec<ColumnFacts> = work
        .query(COLUMNS, &[&name])
        .await?
        .into_iter()
        .map(|r| ColumnFacts {
            name: r.get(0),
            ty: r.get(1),
            not_null: r.get(2),
            default: r.get(3),
            primary_key: r.get(4),
        })
        .collect();
    if columns.is_empty() {
        return Ok(TableFacts::default());
    }
    let indexes = work
        .query(INDEXES, &[&name])
        .await?
        .into_iter()
        .map(|r| IndexFacts {
            name: r.get(0),
            definition: r.get(1),
            unique: r.get(2),
            primary: r.get(3),
            valid: r.get(4),
            constraint: r.get(5),
            columns: r.get(6),
        })
        .collect();
    let constraints = work
        .query(CONSTRAINTS, &[&name])
        .await?
        .into_iter()
        .map(|r| {
            let kind: String = r.get(1);
            ConstraintFacts {
                name: r.get(0),
                kind: kind.chars().next().unwrap_or('?'),
                definition: r.get(2),
                columns: r.get(3),
                validated: r.get(4),
            }
        })
        .collect();
    let referenced_by = work
        .query(REFERENCED_BY, &[&name])
        .await?
        .into_iter()
        .map(|r| ReferenceFacts {
            name: r.get(0),
            table: r.get(1),
            definition: r.get(2),
            columns: r.get(3),
        })
        .collect();
    Ok(TableFacts {
        exists: true,
        columns,
        indexes,
        constraints,
        referenced_by,
        sql: String::new(),
    })
}
