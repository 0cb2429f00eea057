//! SQLite's copy-table recipe, for changes it cannot make in place (adding a CHECK or a FOREIGN
//! KEY, making a column NOT NULL, and their inverses for rollback): the procedure of
//! <https://sqlite.org/lang_altertable.html#otheralter> and Alembic's batch mode.
//!
//! One `BEGIN IMMEDIATE` transaction holds SQLite's write lock for the whole rebuild (readers go
//! on in WAL mode; other writers wait up to busy_timeout): create the new table from the stored
//! definition with the change, copy every row (rowids included), drop the old table, rename the
//! new one, recreate the indexes and triggers (phased's dual_write triggers among them), check the
//! foreign keys, record the step, commit. Rows that violate the new constraint are named and the
//! transaction rolled back, so the table is left exactly as it was.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use super::table_definition::{drop_default, drop_not_null, TableDefinition};
use super::{sql_error, state};
use crate::db::{DbError, StepKey};
use crate::ops::name::{base_name, ident};
use crate::ops::TableChange;

/// How many offending keys a failure names.
const SHOWN: usize = 10;

/// Rebuilds `table` with `change`; marks `done` in the same transaction.
pub fn rebuild(
    conn: &mut Connection,
    table: &str,
    change: &TableChange,
    done: Option<&StepKey>,
    fence: Option<&(String, i64)>,
) -> Result<(), DbError> {
    let pragma = |conn: &Connection, name: &str| -> Result<i64, DbError> {
        let sql = format!("PRAGMA {name}");
        conn.query_row(&sql, [], |r| r.get(0))
            .map_err(|e| sql_error(e, &sql))
    };
    // Both must be set outside the transaction. With foreign keys on, DROP TABLE would run the
    // ON DELETE actions of tables that reference this one; legacy_alter_table keeps RENAME from
    // rewriting (or refusing over) views and triggers that name the table.
    let foreign_keys = pragma(conn, "foreign_keys")?;
    let legacy_alter = pragma(conn, "legacy_alter_table")?;
    let set = |conn: &Connection, sql: &str| conn.execute_batch(sql).map_err(|e| sql_error(e, sql));
    set(
        conn,
        "PRAGMA foreign_keys = OFF; PRAGMA legacy_alter_table = ON",
    )?;
    let result = rebuild_in_transaction(conn, table, change, done, fence);
    let restore =
        format!("PRAGMA foreign_keys = {foreign_keys}; PRAGMA legacy_alter_table = {legacy_alter}");
    let restored = set(conn, &restore);
    result?;
    restored
}

fn rebuild_in_transaction(
    conn: &mut Connection,
    table: &str,
    change: &TableChange,
    done: Option<&StepKey>,
    fence: Option<&(String, i64)>,
) -> Result<(), DbError> {
    let name = base_name(table);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| sql_error(e, "BEGIN IMMEDIATE"))?;
    // The fence first, under the write lock this transaction holds until it commits.
    super::lease::check_fence(&tx, fence)?;
    let read =
        "SELECT name, sql FROM sqlite_schema WHERE type = 'table' AND name = ?1 COLLATE NOCASE";
    let (name, create): (String, String) = tx
        .query_row(read, [name], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(|e| sql_error(e, read))?
        .ok_or_else(|| DbError::Unexpected(format!("table `{table}` does not exist")))?;
    let mut definition =
        TableDefinition::parse(&name, &create).map_err(|e| DbError::Unexpected(e.to_string()))?;
    let keys = key_columns(&tx, &name, &definition)?;
    let quoted = ident(&name);

    // Apply the change to the definition, refusing first when existing rows would violate it.
    match change {
        TableChange::AddCheck {
            name: check,
            expression,
        } => {
            let violators = offending_keys(&tx, &quoted, &keys, &format!("NOT ({expression})"))?;
            if !violators.is_empty() {
                return Err(violation(
                    &name,
                    &format!("the new CHECK `{check}` ({expression})"),
                    &keys,
                    &violators,
                ));
            }
            definition
                .items
                .push(format!("CONSTRAINT {} CHECK ({expression})", ident(check)));
        }
        TableChange::AddForeignKey {
            name: fk,
            definition: text,
        } => {
            definition
                .items
                .push(format!("CONSTRAINT {} {text}", ident(fk)));
        }
        TableChange::SetNotNull { column } => {
            let already = "SELECT count(*) FROM pragma_table_info(?1) WHERE name = ?2 COLLATE NOCASE AND \"notnull\"";
            let n: i64 = tx
                .query_row(already, [&name, column], |r| r.get(0))
                .map_err(|e| sql_error(e, already))?;
            if n > 0 {
                // Nothing to rebuild: the column is NOT NULL already.
                return finish_unchanged(tx, done);
            }
            let violators =
                offending_keys(&tx, &quoted, &keys, &format!("{} IS NULL", ident(column)))?;
            if !violators.is_empty() {
                return Err(violation(
                    &name,
                    &format!("NOT NULL on `{column}`"),
                    &keys,
                    &violators,
                ));
            }
            let item = definition.column_mut(column).ok_or_else(|| {
                DbError::Unexpected(format!("table `{name}` has no column `{column}`"))
            })?;
            item.push_str(" NOT NULL");
        }
        TableChange::DropConstraint { name: constraint } => {
            if !definition.remove_constraint(constraint) {
                // Nothing to rebuild: the constraint is not there (any more).
                return finish_unchanged(tx, done);
            }
        }
        TableChange::DropNotNull { column } => {
            let item = definition.column_mut(column).ok_or_else(|| {
                DbError::Unexpected(format!("table `{name}` has no column `{column}`"))
            })?;
            if !drop_not_null(item) {
                return finish_unchanged(tx, done);
            }
        }
        TableChange::SetDefault { column, default } => {
            let current =
                "SELECT dflt_value FROM pragma_table_info(?1) WHERE name = ?2 COLLATE NOCASE";
            let now: Option<String> = tx
                .query_row(current, [&name, column], |r| r.get(0))
                .optional()
                .map_err(|e| sql_error(e, current))?
                .ok_or_else(|| {
                    DbError::Unexpected(format!("table `{name}` has no column `{column}`"))
                })?;
            if &now == default {
                return finish_unchanged(tx, done);
            }
            let item = definition.column_mut(column).ok_or_else(|| {
                DbError::Unexpected(format!("table `{name}` has no column `{column}`"))
            })?;
            drop_default(item);
            if let Some(default) = default {
                item.push_str(&format!(" DEFAULT {default}"));
            }
        }
        TableChange::AddUnique {
            name: unique,
            columns,
        } => {
            if definition.constraint(unique).is_some() {
                return finish_unchanged(tx, done);
            }
            let listed = columns
                .iter()
                .map(|c| ident(c))
                .collect::<Vec<_>>()
                .join(", ");
            let not_null = columns
                .iter()
                .map(|c| format!("{} IS NOT NULL", ident(c)))
                .collect::<Vec<_>>()
                .join(" AND ");
            let sql = format!(
                "SELECT {listed} FROM {quoted} WHERE {not_null} GROUP BY {listed} HAVING count(*) > 1 LIMIT {}",
                SHOWN + 1
            );
            let repeated = rows_as_keys(&tx, &sql, columns, [])?;
            if !repeated.is_empty() {
                return Err(violation(
                    &name,
                    &format!(
                        "the new UNIQUE constraint `{unique}` ({}): these keys repeat",
                        columns.join(", ")
                    ),
                    columns,
                    &repeated,
                ));
            }
            definition
                .items
                .push(format!("CONSTRAINT {} UNIQUE ({listed})", ident(unique)));
        }
        TableChange::RestoreConstraint {
            name: constraint,
            clause,
        } => {
            if definition.constraint(constraint).is_some() {
                return finish_unchanged(tx, done);
            }
            definition.items.push(clause.clone());
        }
        TableChange::RenameConstraint { from, to } => {
            if !definition.rename_constraint(from, to) {
                if definition.constraint(to).is_some() {
                    return finish_unchanged(tx, done);
                }
                return Err(DbError::Unexpected(format!(
                    "table `{name}` has no constraint `{from}` to rename"
                )));
            }
        }
    }

    // What DROP TABLE takes with it and must be recreated: indexes and triggers (automatic
    // indexes of UNIQUE / PRIMARY KEY constraints have no SQL and come back with the table).
    let others =
        "SELECT sql FROM sqlite_schema WHERE tbl_name = ?1 AND type IN ('index', 'trigger') \
                  AND sql IS NOT NULL ORDER BY type = 'trigger', rowid";
    let recreate: Vec<String> = {
        let mut stmt = tx.prepare(others).map_err(|e| sql_error(e, others))?;
        let rows = stmt
            .query_map([&name], |r| r.get::<_, String>(0))
            .map_err(|e| sql_error(e, others))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| sql_error(e, others))?
    };
    let sequence = autoincrement_seq(&tx, &name)?;

    let staging = ident(&format!("{name}__phased_rebuild"));
    let columns = copied_columns(&tx, &name)?;
    // A rowid table without an INTEGER PRIMARY KEY keeps its rowids only if they are copied.
    let columns = if !definition.without_rowid() && !rowid_is_alias(&tx, &name)? {
        format!("rowid, {columns}")
    } else {
        columns
    };
    let steps = [
        format!("DROP TABLE IF EXISTS {staging}"),
        definition.render(&staging),
        format!("INSERT INTO {staging} ({columns}) SELECT {columns} FROM {quoted}"),
        format!("DROP TABLE {quoted}"),
        format!("ALTER TABLE {staging} RENAME TO {quoted}"),
    ];
    for sql in steps.iter().chain(recreate.iter()) {
        tx.execute_batch(sql).map_err(|e| sql_error(e, sql))?;
    }
    if let Some(seq) = sequence {
        let sql = "UPDATE sqlite_sequence SET seq = max(seq, ?2) WHERE name = ?1";
        tx.execute(sql, rusqlite::params![name, seq])
            .map_err(|e| sql_error(e, sql))?;
    }

    if let TableChange::AddForeignKey {
        name: fk,
        definition: text,
    } = change
    {
        let violators = foreign_key_violations(&tx, &name, &keys)?;
        if !violators.is_empty() {
            return Err(violation(
                &name,
                &format!("the new FOREIGN KEY `{fk}` ({text})"),
                &keys,
                &violators,
            ));
        }
    }
    let check = "PRAGMA integrity_check(1)";
    let integrity: String = tx
        .query_row(check, [], |r| r.get(0))
        .map_err(|e| sql_error(e, check))?;
    if integrity != "ok" {
        return Err(DbError::Unexpected(format!(
            "the rebuilt table `{name}` fails the integrity check: {integrity}; nothing was changed"
        )));
    }
    if let Some(key) = done {
        state::mark_done(&tx, key)?;
    }
    tx.commit().map_err(|e| sql_error(e, "COMMIT"))
}

/// A change with nothing to do: records the step and commits.
/// The statements that drop `column` of `table` (as the plan names them): `DROP INDEX`
/// for each index that names the column (in its keys, an expression or its `WHERE`), then
/// `drop`. SQLite refuses `ALTER TABLE … DROP COLUMN` on an indexed column; PostgreSQL drops such
/// indexes itself: both drop them, by name, so `phased plan` shows them. Constraints written in
/// the table's definition (UNIQUE, CHECK, FOREIGN KEY on the column) are left to SQLite, which
/// refuses the drop and says which.
pub fn drop_column_statements(
    conn: &Connection,
    table: &str,
    column: &str,
    drop: &str,
) -> Result<Vec<String>, DbError> {
    let name = base_name(table);
    let sql = "SELECT name, sql FROM sqlite_schema \
               WHERE type = 'index' AND tbl_name = ?1 COLLATE NOCASE AND sql IS NOT NULL ORDER BY name";
    let mut stmt = conn.prepare(sql).map_err(|e| sql_error(e, sql))?;
    let indexes = stmt
        .query_map([&name], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(|e| sql_error(e, sql))?;
    let mut statements = Vec::new();
    for (index, create) in indexes {
        let xinfo = format!(
            "SELECT count(*) FROM pragma_index_xinfo({}) WHERE name = ?1 COLLATE NOCASE",
            sql_text(&index)
        );
        let keyed: i64 = conn
            .query_row(&xinfo, [column], |r| r.get(0))
            .map_err(|e| sql_error(e, &xinfo))?;
        let body = create.split_once('(').map(|(_, b)| b).unwrap_or_default();
        if keyed > 0 || names_word(body, column) {
            tracing::info!(index = %index, column, "goes with the dropped column");
            statements.push(format!("DROP INDEX {}", ident(&index)));
        }
    }
    statements.push(drop.to_string());
    Ok(statements)
}

/// The statements that rename index `from` to `to`, which SQLite cannot do in place: its
/// stored `CREATE [UNIQUE] INDEX from ON …` under the new name, then `DROP INDEX from`. None
/// when `from` is gone and `to` is there (a rename that committed).
pub fn rename_index_statements(
    conn: &Connection,
    from: &str,
    to: &str,
) -> Result<Vec<String>, DbError> {
    let sql = "SELECT sql FROM sqlite_schema WHERE type = 'index' AND name = ?1 COLLATE NOCASE";
    let stored = |name: &str| -> Result<Option<Option<String>>, DbError> {
        conn.query_row(sql, [base_name(name)], |r| r.get(0))
            .optional()
            .map_err(|e| sql_error(e, sql))
    };
    let create = match stored(from)? {
        Some(Some(create)) => create,
        Some(None) => {
            return Err(DbError::Unexpected(format!(
                "index `{from}` belongs to a UNIQUE or PRIMARY KEY constraint (it has no SQL of its own): rename the constraint instead"
            )))
        }
        None if stored(to)?.is_some() => return Ok(Vec::new()),
        None => {
            return Err(DbError::Unexpected(format!(
                "there is no index `{from}` to rename"
            )))
        }
    };
    // `CREATE [UNIQUE] INDEX [IF NOT EXISTS] <name> ON …`: the name's place.
    let mut rest = create.as_str();
    let mut at = 0;
    for word in ["CREATE", "UNIQUE", "INDEX", "IF", "NOT", "EXISTS"] {
        let trimmed = rest.trim_start();
        let skipped = rest.len() - trimmed.len();
        let matches = trimmed
            .get(..word.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(word))
            && trimmed[word.len()..].starts_with(char::is_whitespace);
        if matches {
            at += skipped + word.len();
            rest = &trimmed[word.len()..];
        }
    }
    let trimmed = rest.trim_start();
    at += rest.len() - trimmed.len();
    let len = super::table_definition::name_len(trimmed).ok_or_else(|| {
        DbError::Unexpected(format!(
            "cannot read the name in the SQL of index `{from}`: {create}"
        ))
    })?;
    let renamed = format!(
        "{}{}{}",
        &create[..at],
        super::table_definition::written_like(trimmed, to),
        &create[at + len..]
    );
    Ok(vec![format!("DROP INDEX {}", ident(from)), renamed])
}

/// A string literal for SQLite.
fn sql_text(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Does `sql` name `word` as an identifier (bare, or in double quotes, brackets or backticks)?
fn names_word(sql: &str, word: &str) -> bool {
    let lower = sql.to_lowercase();
    let word = word.to_lowercase();
    let is_ident = |c: char| c.is_alphanumeric() || c == '_' || c == '$';
    lower.match_indices(&word).any(|(at, _)| {
        let before = lower[..at].chars().next_back();
        let after = lower[at + word.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

fn finish_unchanged(tx: rusqlite::Transaction<'_>, done: Option<&StepKey>) -> Result<(), DbError> {
    if let Some(key) = done {
        state::mark_done(&tx, key)?;
    }
    tx.commit().map_err(|e| sql_error(e, "COMMIT"))
}

/// The columns that identify a row in messages: the primary key, else the rowid.
fn key_columns(
    conn: &Connection,
    table: &str,
    definition: &TableDefinition,
) -> Result<Vec<String>, DbError> {
    let sql = "SELECT name FROM pragma_table_info(?1) WHERE pk > 0 ORDER BY pk";
    let mut stmt = conn.prepare(sql).map_err(|e| sql_error(e, sql))?;
    let keys: Vec<String> = stmt
        .query_map([table], |r| r.get(0))
        .map_err(|e| sql_error(e, sql))?
        .collect::<Result<_, _>>()
        .map_err(|e| sql_error(e, sql))?;
    if keys.is_empty() && !definition.without_rowid() {
        return Ok(vec!["rowid".to_string()]);
    }
    Ok(keys)
}

/// Does the table have an INTEGER PRIMARY KEY (which is its rowid, copied with the columns)?
fn rowid_is_alias(conn: &Connection, table: &str) -> Result<bool, DbError> {
    let sql = "SELECT count(*) = 1 AND max(upper(type) = 'INTEGER') FROM pragma_table_info(?1) WHERE pk > 0";
    conn.query_row(sql, [table], |r| r.get::<_, Option<bool>>(0))
        .map(|v| v.unwrap_or(false))
        .map_err(|e| sql_error(e, sql))
}

/// The stored columns (generated columns are computed again by the new table).
fn copied_columns(conn: &Connection, table: &str) -> Result<String, DbError> {
    let sql = "SELECT name FROM pragma_table_xinfo(?1) WHERE hidden = 0 ORDER BY cid";
    let mut stmt = conn.prepare(sql).map_err(|e| sql_error(e, sql))?;
    let names: Vec<String> = stmt
        .query_map([table], |r| r.get(0))
        .map_err(|e| sql_error(e, sql))?
        .collect::<Result<_, _>>()
        .map_err(|e| sql_error(e, sql))?;
    Ok(names
        .iter()
        .map(|n| ident(n))
        .collect::<Vec<_>>()
        .join(", "))
}

/// The AUTOINCREMENT counter, so the rebuilt table never reuses a key.
fn autoincrement_seq(conn: &Connection, table: &str) -> Result<Option<i64>, DbError> {
    let exists = "SELECT count(*) FROM sqlite_schema WHERE name = 'sqlite_sequence'";
    let n: i64 = conn
        .query_row(exists, [], |r| r.get(0))
        .map_err(|e| sql_error(e, exists))?;
    if n == 0 {
        return Ok(None);
    }
    let sql = "SELECT seq FROM sqlite_sequence WHERE name = ?1";
    conn.query_row(sql, [table], |r| r.get(0))
        .optional()
        .map_err(|e| sql_error(e, sql))
}

/// The keys of up to SHOWN + 1 rows matching `condition`, rendered `(id=3)`.
fn offending_keys(
    conn: &Connection,
    quoted_table: &str,
    keys: &[String],
    condition: &str,
) -> Result<Vec<String>, DbError> {
    let sql = format!(
        "SELECT {} FROM {quoted_table} WHERE {condition} LIMIT {}",
        key_select(keys),
        SHOWN + 1
    );
    rows_as_keys(conn, &sql, keys, [])
}

fn key_select(keys: &[String]) -> String {
    keys.iter()
        .map(|k| if k == "rowid" { k.clone() } else { ident(k) })
        .collect::<Vec<_>>()
        .join(", ")
}

fn rows_as_keys<P: rusqlite::Params>(
    conn: &Connection,
    sql: &str,
    keys: &[String],
    params: P,
) -> Result<Vec<String>, DbError> {
    let mut stmt = conn.prepare(sql).map_err(|e| sql_error(e, sql))?;
    let rows = stmt
        .query_map(params, |r| {
            let mut parts = Vec::new();
            for (i, key) in keys.iter().enumerate() {
                let value: rusqlite::types::Value = r.get(i)?;
                parts.push(format!("{key}={}", show(&value)));
            }
            Ok(format!("({})", parts.join(", ")))
        })
        .map_err(|e| sql_error(e, sql))?;
    rows.collect::<Result<_, _>>()
        .map_err(|e| sql_error(e, sql))
}

fn show(value: &rusqlite::types::Value) -> String {
    use rusqlite::types::Value;
    match value {
        Value::Null => "NULL".to_string(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => f.to_string(),
        Value::Text(t) => format!("'{}'", t.replace('\'', "''")),
        Value::Blob(b) => format!("<{} bytes>", b.len()),
    }
}

/// `PRAGMA foreign_key_check` on the rebuilt table, as the keys of the offending rows.
fn foreign_key_violations(
    conn: &Connection,
    table: &str,
    keys: &[String],
) -> Result<Vec<String>, DbError> {
    let sql = format!("PRAGMA foreign_key_check({})", ident(table));
    let rowids: Vec<Option<i64>> = {
        let mut stmt = conn.prepare(&sql).map_err(|e| sql_error(e, &sql))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, Option<i64>>(1))
            .map_err(|e| sql_error(e, &sql))?;
        rows.take(SHOWN + 1)
            .collect::<Result<_, _>>()
            .map_err(|e| sql_error(e, &sql))?
    };
    let lookup = format!(
        "SELECT {} FROM {} WHERE rowid = ?1",
        key_select(keys),
        ident(table)
    );
    let mut found = Vec::new();
    for rowid in rowids {
        match rowid {
            Some(rowid) => found.extend(rows_as_keys(conn, &lookup, keys, [rowid])?),
            // WITHOUT ROWID tables report no rowid.
            None => found.push("(a row of a WITHOUT ROWID table)".to_string()),
        }
    }
    Ok(found)
}

fn violation(table: &str, what: &str, keys: &[String], violators: &[String]) -> DbError {
    let more = if violators.len() > SHOWN {
        " and more".to_string()
    } else {
        String::new()
    };
    let shown: Vec<&str> = violators.iter().take(SHOWN).map(String::as_str).collect();
    DbError::Sql {
        message: format!(
            "rows of `{table}` violate {what}: {}{more} (by {}); table `{table}` was left unchanged. \
             Fix or remove those rows (a backfill or sql step) and run again",
            shown.join(", "),
            keys.join(", ")
        ),
        code: Some("ConstraintViolation".to_string()),
        sql: format!("-- rebuild of {table}"),
        retryable: false,
    }
}
