//! The user schema of a PostgreSQL database as comparable lines, for `phased verify`: relations,
//! columns, indexes, constraints, triggers and functions, read from the catalogs. The `phased`
//! schema's tables (the state) are left out, its functions (dual-write triggers) are kept.

use deadpool_postgres::Object;

use super::sql_error;
use crate::db::DbError;

/// Schemas that are not the application's.
const SYSTEM: &str = "('pg_catalog', 'information_schema', 'pg_toast')";

pub async fn snapshot(conn: &Object) -> Result<Vec<String>, DbError> {
    let user = format!("n.nspname NOT IN {SYSTEM} AND n.nspname NOT LIKE 'pg\\_temp%' AND n.nspname NOT LIKE 'pg\\_toast%'");
    let queries = [
        format!(
            "SELECT concat_ws(' ', 'relation', c.relkind::text, n.nspname || '.' || c.relname) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {user} AND n.nspname <> 'phased'"
        ),
        format!(
            "SELECT concat_ws(' ', 'column', n.nspname || '.' || c.relname || '.' || a.attname, \
                    format_type(a.atttypid, a.atttypmod), CASE WHEN a.attnotnull THEN 'not_null' ELSE 'null' END, \
                    'default=' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')) \
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f') \
               AND {user} AND n.nspname <> 'phased'"
        ),
        format!(
            "SELECT concat_ws(' ', 'index', n.nspname || '.' || ci.relname, pg_get_indexdef(i.indexrelid), \
                    CASE WHEN i.indisvalid THEN 'valid' ELSE 'INVALID' END) \
             FROM pg_index i JOIN pg_class ci ON ci.oid = i.indexrelid JOIN pg_namespace n ON n.oid = ci.relnamespace \
             WHERE {user} AND n.nspname <> 'phased'"
        ),
        format!(
            "SELECT concat_ws(' ', 'constraint', n.nspname || '.' || c.relname || '.' || co.conname, \
                    pg_get_constraintdef(co.oid), CASE WHEN co.convalidated THEN 'validated' ELSE 'not_valid' END) \
             FROM pg_constraint co JOIN pg_class c ON c.oid = co.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE {user} AND n.nspname <> 'phased'"
        ),
        format!(
            "SELECT concat_ws(' ', 'trigger', n.nspname || '.' || c.relname || '.' || t.tgname, pg_get_triggerdef(t.oid)) \
             FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE NOT t.tgisinternal AND {user}"
        ),
        format!(
            "SELECT concat_ws(' ', 'function', n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')') \
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE {user} AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')"
        ),
    ];
    let mut lines = Vec::new();
    for sql in &queries {
        let rows = conn
            .query(sql.as_str(), &[])
            .await
            .map_err(|e| sql_error(e, sql))?;
        lines.extend(rows.iter().map(|r| r.get::<_, String>(0)));
    }
    lines.sort();
    Ok(lines)
}
