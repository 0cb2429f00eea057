//! A table's catalog facts (`Catalog::table_facts`) from SQLite's pragmas and its stored SQL.
//! SQLite keeps CHECK and FOREIGN KEY constraints only in the table's `CREATE TABLE` text
//! (`TableFacts::sql`), which the copy-table recipe rewrites; foreign keys are listed too.

use rusqlite::{Connection, OptionalExtension};

use super::sql_error;
use crate::db::DbError;
use crate::ops::facts::{ColumnFacts, ConstraintFacts, IndexFacts, TableFacts};
use crate::ops::name::base_name;

pub fn table_facts(conn: &Connection, table: &str) -> Result<TableFacts, DbError> {
    let table = base_name(table);
    let sql: Option<String> = conn
        .query_row(
            "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            [table],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| sql_error(e, "sqlite_schema"))?;
    let Some(sql) = sql else {
        return Ok(TableFacts::default());
    };
    let q = "SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_xinfo(?1) WHERE hidden = 0 ORDER BY cid";
    let mut stmt = conn.prepare(q).map_err(|e| sql_error(e, q))?;
    let columns = stmt
        .query_map([table], |r| {
            Ok(ColumnFacts {
                name: r.get(0)?,
                ty: r.get(1)?,
                not_null: r.get::<_, i64>(2)? != 0,
                default: r.get(3)?,
                primary_key: r.get::<_, i64>(4)? != 0,
            })
        })
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(|e| sql_error(e, q))?;
    let q =
        "SELECT l.name, l.\"unique\", l.origin, coalesce(m.sql, '') FROM pragma_index_list(?1) l \
             LEFT JOIN sqlite_schema m ON m.type = 'index' AND m.name = l.name ORDER BY l.name";
    let mut stmt = conn.prepare(q).map_err(|e| sql_error(e, q))?;
    let listed = stmt
        .query_map([table], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)? != 0,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(|e| sql_error(e, q))?;
    let mut indexes = Vec::new();
    for (name, unique, origin, definition) in listed {
        let q = "SELECT name FROM pragma_index_info(?1) WHERE name IS NOT NULL ORDER BY seqno";
        let mut stmt = conn.prepare(q).map_err(|e| sql_error(e, q))?;
        let mut cols = stmt
            .query_map([&name], |r| r.get::<_, String>(0))
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| sql_error(e, q))?;
        // Columns named only in an expression or the predicate: found in the statement text.
        for c in &columns {
            if !cols.contains(&c.name)
                && crate::ops::facts::replace_identifier(&definition, &c.name, "\u{1}")
                    != definition
            {
                cols.push(c.name.clone());
            }
        }
        indexes.push(IndexFacts {
            constraint: (origin != "c").then(|| name.clone()),
            primary: origin == "pk",
            name,
            definition,
            unique,
            columns: cols,
            valid: true,
        });
    }
    let q =
        "SELECT id, \"table\", \"from\", \"to\" FROM pragma_foreign_key_list(?1) ORDER BY id, seq";
    let mut stmt = conn.prepare(q).map_err(|e| sql_error(e, q))?;
    let keys = stmt
        .query_map([table], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(|e| sql_error(e, q))?;
    let mut constraints: Vec<ConstraintFacts> = Vec::new();
    for (id, parent, from, _to) in keys {
        let name = format!("fk{id}");
        match constraints.iter_mut().find(|k| k.name == name) {
            Some(k) => k.columns.push(from),
            None => constraints.push(ConstraintFacts {
                name,
                kind: 'f',
                definition: format!("REFERENCES {parent}"),
                columns: vec![from],
                validated: true,
            }),
        }
    }
    Ok(TableFacts {
        exists: true,
        columns,
        indexes,
        constraints,
        referenced_by: Vec::new(),
        sql,
    })
}
