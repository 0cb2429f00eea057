//! The table locks a piece of SQL asks for on PostgreSQL, read from the parse: for each
//! statement, the tables it names and the lock level PostgreSQL takes on them ("Explicit
//! Locking" in the PostgreSQL docs). A `sql` step reports them so the runner looks before it
//! queues, like every built-in step. Only what the statement names: a `DROP INDEX` (whose table
//! is not written) or a function's body is not looked into.

use squawk_syntax::SourceFile;

use super::statement::{statements, Statement};
use crate::ops::lock::LockMode;

/// A table one statement locks, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementLock {
    /// As PostgreSQL resolves it: unquoted names folded to lower case, quoted ones kept with
    /// their quotes, `schema.table` kept.
    pub table: String,
    pub mode: LockMode,
    /// 1-based line of the statement in the SQL.
    pub line: u64,
}

/// The locks of every statement of `sql`, in order.
pub fn locks(sql: &str) -> Vec<StatementLock> {
    let parse = SourceFile::parse(sql);
    statements(sql, &parse, false)
        .iter()
        .flat_map(|stmt| {
            statement_locks(stmt)
                .into_iter()
                .map(|(table, mode)| StatementLock {
                    table,
                    mode,
                    line: stmt.line,
                })
        })
        .collect()
}

/// The strongest lock per table, for the look before queueing.
pub fn strongest(locks: &[StatementLock]) -> Vec<(String, LockMode)> {
    let mut out: Vec<(String, LockMode)> = Vec::new();
    for lock in locks {
        match out.iter_mut().find(|(t, _)| *t == lock.table) {
            Some((_, mode)) => *mode = (*mode).max(lock.mode),
            None => out.push((lock.table.clone(), lock.mode)),
        }
    }
    out
}

fn statement_locks(stmt: &Statement) -> Vec<(String, LockMode)> {
    use LockMode::*;
    let w = &stmt.words;
    let one = |at: usize, mode: LockMode| {
        stmt.name_at(at)
            .map(|t| vec![(t, mode)])
            .unwrap_or_default()
    };
    if stmt.starts(&["ALTER", "TABLE"]) {
        let Some(at) = stmt.after_options(2, &[&["IF", "EXISTS"], &["ONLY"]]) else {
            return Vec::new();
        };
        let mode = if stmt.has(&["FOREIGN", "KEY"]) || stmt.has(&["REFERENCES"]) {
            ShareRowExclusive
        } else if stmt.has(&["VALIDATE", "CONSTRAINT"])
            || stmt.has(&["SET", "STATISTICS"])
            || stmt.has(&["ATTACH", "PARTITION"])
            || (stmt.has(&["DETACH", "PARTITION"]) && stmt.has(&["CONCURRENTLY"]))
        {
            ShareUpdateExclusive
        } else {
            AccessExclusive
        };
        let mut out = one(at, mode);
        if let Some(r) = w.iter().position(|x| x == "REFERENCES") {
            out.extend(one(r + 1, ShareRowExclusive));
        }
        return out;
    }
    if stmt.starts(&["CREATE"]) && w.iter().take(3).any(|x| x == "INDEX") {
        let mode = if stmt.has(&["CONCURRENTLY"]) {
            ShareUpdateExclusive
        } else {
            Share
        };
        return match w.iter().position(|x| x == "ON") {
            Some(on) => stmt
                .after_options(on + 1, &[&["ONLY"]])
                .map(|at| one(at, mode))
                .unwrap_or_default(),
            None => Vec::new(),
        };
    }
    if stmt.starts(&["CREATE"]) && w.iter().take(4).any(|x| x == "TRIGGER") {
        return match w.iter().position(|x| x == "ON") {
            Some(on) => one(on + 1, ShareRowExclusive),
            None => Vec::new(),
        };
    }
    if stmt.starts(&["CREATE", "TABLE"]) {
        return w
            .iter()
            .enumerate()
            .filter(|(_, x)| *x == "REFERENCES")
            .flat_map(|(i, _)| one(i + 1, ShareRowExclusive))
            .collect();
    }
    if stmt.starts(&["DROP", "TABLE"]) || stmt.starts(&["TRUNCATE"]) {
        let start = if stmt.starts(&["DROP"]) { 2 } else { 1 };
        let Some(at) = stmt.after_options(start, &[&["TABLE"], &["IF", "EXISTS"], &["ONLY"]])
        else {
            return Vec::new();
        };
        return stmt
            .name_list(at)
            .into_iter()
            .map(|t| (t, AccessExclusive))
            .collect();
    }
    if stmt.starts(&["DROP", "TRIGGER"]) {
        return match w.iter().position(|x| x == "ON") {
            Some(on) => one(on + 1, AccessExclusive),
            None => Vec::new(),
        };
    }
    if stmt.starts(&["WITH"]) {
        // Data-modifying parts, in a CTE's parentheses or as the statement after them:
        // `WITH moved AS (DELETE FROM a … RETURNING …) INSERT INTO b SELECT … FROM moved`.
        return (1..w.len())
            .filter(|&i| w[i - 1] == "(" || w[i - 1] == ")")
            .flat_map(|i| match w[i].as_str() {
                "UPDATE" => stmt
                    .after_options(i + 1, &[&["ONLY"]])
                    .map(|at| one(at, RowExclusive))
                    .unwrap_or_default(),
                "INSERT" if w.get(i + 1).is_some_and(|x| x == "INTO") => one(i + 2, RowExclusive),
                "DELETE" if w.get(i + 1).is_some_and(|x| x == "FROM") => stmt
                    .after_options(i + 2, &[&["ONLY"]])
                    .map(|at| one(at, RowExclusive))
                    .unwrap_or_default(),
                _ => Vec::new(),
            })
            .collect();
    }
    if stmt.starts(&["INSERT", "INTO"]) {
        return one(2, RowExclusive);
    }
    if stmt.starts(&["UPDATE"]) {
        return stmt
            .after_options(1, &[&["ONLY"]])
            .map(|at| one(at, RowExclusive))
            .unwrap_or_default();
    }
    if stmt.starts(&["DELETE", "FROM"]) {
        return stmt
            .after_options(2, &[&["ONLY"]])
            .map(|at| one(at, RowExclusive))
            .unwrap_or_default();
    }
    if stmt.starts(&["CLUSTER"]) {
        return one(1, AccessExclusive);
    }
    if stmt.starts(&["VACUUM"]) {
        let full = w.iter().any(|x| x == "FULL");
        let at = w
            .iter()
            .rposition(|x| {
                x == ")" || x == "FULL" || x == "ANALYZE" || x == "VERBOSE" || x == "VACUUM"
            })
            .map(|i| i + 1);
        let mode = if full {
            AccessExclusive
        } else {
            ShareUpdateExclusive
        };
        return at.map(|at| one(at, mode)).unwrap_or_default();
    }
    if stmt.starts(&["LOCK"]) {
        let Some(at) = stmt.after_options(1, &[&["TABLE"], &["ONLY"]]) else {
            return Vec::new();
        };
        let mode = match w.iter().position(|x| x == "IN") {
            Some(i) => mode_named(&w[i + 1..]),
            None => AccessExclusive,
        };
        return stmt.name_list(at).into_iter().map(|t| (t, mode)).collect();
    }
    if stmt.starts(&["REFRESH", "MATERIALIZED", "VIEW"]) {
        let concurrently = stmt.has(&["CONCURRENTLY"]);
        let at = if concurrently { 4 } else { 3 };
        return one(
            at,
            if concurrently {
                Exclusive
            } else {
                AccessExclusive
            },
        );
    }
    Vec::new()
}

/// `ACCESS EXCLUSIVE MODE` … → the mode (ACCESS EXCLUSIVE when unreadable, the strongest).
fn mode_named(words: &[String]) -> LockMode {
    use LockMode::*;
    let text: Vec<&str> = words
        .iter()
        .map(String::as_str)
        .take_while(|w| *w != "MODE")
        .collect();
    match text.as_slice() {
        ["ACCESS", "SHARE"] => AccessShare,
        ["ROW", "SHARE"] => RowShare,
        ["ROW", "EXCLUSIVE"] => RowExclusive,
        ["SHARE", "UPDATE", "EXCLUSIVE"] => ShareUpdateExclusive,
        ["SHARE"] => Share,
        ["SHARE", "ROW", "EXCLUSIVE"] => ShareRowExclusive,
        ["EXCLUSIVE"] => Exclusive,
        _ => AccessExclusive,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LockMode::*;

    fn of(sql: &str) -> Vec<(String, LockMode)> {
        strongest(&locks(sql))
    }

    #[test]
    fn alter_table_takes_access_exclusive_or_less() {
        assert_eq!(
            of("ALTER TABLE accounts ADD COLUMN c text"),
            vec![("accounts".into(), AccessExclusive)]
        );
        assert_eq!(
            of("ALTER TABLE ONLY public.Accounts VALIDATE CONSTRAINT c"),
            vec![("public.accounts".into(), ShareUpdateExclusive)]
        );
        assert_eq!(
            of("ALTER TABLE orders ADD CONSTRAINT fk FOREIGN KEY (customer_id) REFERENCES \"Customers\" (id) NOT VALID"),
            vec![("orders".into(), ShareRowExclusive), ("\"Customers\"".into(), ShareRowExclusive)]
        );
    }

    #[test]
    fn data_modifying_ctes_lock_what_they_write() {
        assert_eq!(
            of(
                "WITH batch AS (UPDATE \"accounts\" SET a = 1 WHERE id <= $1 RETURNING 1) \
                UPDATE phased.steps SET n = (SELECT count(*) FROM batch)"
            ),
            vec![
                ("\"accounts\"".into(), RowExclusive),
                ("phased.steps".into(), RowExclusive)
            ]
        );
        assert_eq!(
            of(
                "WITH moved AS MATERIALIZED (DELETE FROM ONLY a WHERE x RETURNING *) \
                INSERT INTO b SELECT * FROM moved"
            ),
            vec![("a".into(), RowExclusive), ("b".into(), RowExclusive)]
        );
        // A read-only CTE, a row lock and an upsert's update take nothing more.
        assert_eq!(
            of("WITH r AS (SELECT * FROM a FOR UPDATE) SELECT * FROM r"),
            vec![]
        );
        assert_eq!(
            of("WITH v AS (SELECT 1 AS id) INSERT INTO b SELECT id FROM v ON CONFLICT (id) DO UPDATE SET id = 2"),
            vec![("b".into(), RowExclusive)]
        );
    }

    #[test]
    fn indexes_writes_and_maintenance() {
        assert_eq!(
            of("CREATE UNIQUE INDEX i ON accounts (email)"),
            vec![("accounts".into(), Share)]
        );
        assert_eq!(
            of("CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON ONLY accounts (email)"),
            vec![("accounts".into(), ShareUpdateExclusive)]
        );
        assert_eq!(of("UPDATE accounts SET a = 1; DELETE FROM ONLY logs WHERE true; INSERT INTO audit VALUES (1)"),
            vec![("accounts".into(), RowExclusive), ("logs".into(), RowExclusive), ("audit".into(), RowExclusive)]);
        assert_eq!(
            of("TRUNCATE TABLE a, b; DROP TABLE IF EXISTS c"),
            vec![
                ("a".into(), AccessExclusive),
                ("b".into(), AccessExclusive),
                ("c".into(), AccessExclusive)
            ]
        );
        assert_eq!(
            of("VACUUM FULL invoices"),
            vec![("invoices".into(), AccessExclusive)]
        );
        assert_eq!(
            of("LOCK TABLE accounts IN SHARE ROW EXCLUSIVE MODE"),
            vec![("accounts".into(), ShareRowExclusive)]
        );
        assert_eq!(
            of("CREATE TRIGGER t BEFORE INSERT ON accounts FOR EACH ROW EXECUTE FUNCTION f()"),
            vec![("accounts".into(), ShareRowExclusive)]
        );
        assert_eq!(
            of("DROP TRIGGER IF EXISTS t ON \"Accounts\""),
            vec![("\"Accounts\"".into(), AccessExclusive)]
        );
    }

    #[test]
    fn reads_new_tables_and_function_bodies_take_nothing_to_look_for() {
        assert!(of("SELECT * FROM accounts").is_empty());
        assert!(of("CREATE TABLE t (id bigint PRIMARY KEY)").is_empty());
        assert!(of("DO $$ BEGIN UPDATE accounts SET a = 1; END $$").is_empty());
    }

    #[test]
    fn each_statement_keeps_its_line() {
        let all = locks("SELECT 1;\nALTER TABLE a ADD COLUMN c text;");
        assert_eq!(all[0].line, 2);
    }
}
