//! The user schema of an SQLite database as comparable lines, for `phased verify`: tables with
//! their columns and foreign keys, indexes, triggers and views; `phased_*` and `sqlite_*` left out.

use rusqlite::Connection;

use super::sql_error;
use crate::db::DbError;

pub fn snapshot(conn: &Connection) -> Result<Vec<String>, DbError> {
    let objects_sql = "SELECT type, name, tbl_name, coalesce(sql, '') FROM sqlite_schema \
                       WHERE name NOT LIKE 'phased\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
                       ORDER BY type, name";
    let mut stmt = conn
        .prepare(objects_sql)
        .map_err(|e| sql_error(e, objects_sql))?;
    let objects = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })
        .map_err(|e| sql_error(e, objects_sql))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| sql_error(e, objects_sql))?;
    let mut lines = Vec::new();
    for (kind, name, table, sql) in objects {
        if kind != "table" {
            lines.push(format!("{kind} {name} on {table}: {}", normalise(&sql)));
            continue;
        }
        lines.push(format!("table {name}"));
        // Table constraints (CHECK, UNIQUE, FOREIGN KEY, PRIMARY KEY clauses), which
        // pragma_table_info does not show.
        if let Ok(definition) = super::table_definition::TableDefinition::parse(&name, &sql) {
            for constraint in definition.table_constraints() {
                lines.push(format!("constraint {name}: {}", normalise(constraint)));
            }
        }
        let columns_sql = "SELECT name, type, \"notnull\", coalesce(dflt_value, ''), pk FROM pragma_table_info(?1)";
        let mut stmt = conn
            .prepare(columns_sql)
            .map_err(|e| sql_error(e, columns_sql))?;
        let columns = stmt
            .query_map([&name], |r| {
                Ok(format!(
                    "column {name}.{} type={} not_null={} default={} pk={}",
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?
                ))
            })
            .map_err(|e| sql_error(e, columns_sql))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| sql_error(e, columns_sql))?;
        lines.extend(columns);
        let fk_sql = "SELECT \"table\", \"from\", coalesce(\"to\", ''), on_update, on_delete FROM pragma_foreign_key_list(?1) ORDER BY id, seq";
        let mut stmt = conn.prepare(fk_sql).map_err(|e| sql_error(e, fk_sql))?;
        let fks = stmt
            .query_map([&name], |r| {
                Ok(format!(
                    "foreign_key {name}.{} -> {}.{} on_update={} on_delete={}",
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?
                ))
            })
            .map_err(|e| sql_error(e, fk_sql))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| sql_error(e, fk_sql))?;
        lines.extend(fks);
    }
    lines.sort();
    Ok(lines)
}

/// Collapses whitespace so formatting differences are not reported as schema changes.
fn normalise(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}
