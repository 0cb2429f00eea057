//! Backfill batches: keyset pagination by the key, never OFFSET, so each batch costs the same
//! however far into the table it is. Row locks only, on the batch's rows, under lock_timeout.

use super::{ident, ident_list, Dialect};

/// The SQL of one batch, with its placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSql {
    /// Returns the last key of the next batch (one row, one text column per key column), or nothing.
    pub find_last: String,
    /// Updates the rows after the previous key up to and including the batch's last key.
    pub update: String,
    /// Counts the rows still to visit: after the previous key (when any) and matching the
    /// predicate. Run once per attempt, for the progress total; never per batch.
    pub count: String,
}

/// `key_types` are the PostgreSQL types of the key columns (for casting bound text values).
pub fn render(
    dialect: Dialect,
    table: &str,
    key: &[String],
    key_types: &[String],
    set: &[(String, String)],
    predicate: Option<&str>,
    has_lower_bound: bool,
) -> BatchSql {
    let n = key.len();
    let keys = ident_list(key);
    // Parameter `number` (1-based) holds key column `column`'s value, bound as text on
    // PostgreSQL and cast to the column's type.
    let param = |number: usize, column: usize| match dialect {
        Dialect::Postgres => {
            let ty = key_types.get(column).map(String::as_str).unwrap_or("text");
            format!("${number}::text::{ty}")
        }
        Dialect::Sqlite => format!("?{number}"),
    };
    let tuple = |offset: usize| {
        (0..n)
            .map(|i| param(offset + i + 1, i))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let limit_index = if has_lower_bound { n + 1 } else { 1 };
    let limit_param = match dialect {
        Dialect::Postgres => format!("${limit_index}"),
        Dialect::Sqlite => format!("?{limit_index}"),
    };
    let mut conditions = Vec::new();
    if has_lower_bound {
        conditions.push(format!("({keys}) > ({})", tuple(0)));
    }
    if let Some(p) = predicate {
        conditions.push(format!("({p})"));
    }
    let where_clause = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    let order_asc = key.iter().map(|k| ident(k)).collect::<Vec<_>>().join(", ");
    let order_desc = key
        .iter()
        .map(|k| format!("batch.{} DESC", ident(k)))
        .collect::<Vec<_>>()
        .join(", ");
    let select_keys = match dialect {
        Dialect::Postgres => key
            .iter()
            .map(|k| format!("batch.{}::text", ident(k)))
            .collect::<Vec<_>>()
            .join(", "),
        Dialect::Sqlite => key
            .iter()
            .map(|k| format!("batch.{}", ident(k)))
            .collect::<Vec<_>>()
            .join(", "),
    };
    let find_last = format!(
        "SELECT {select_keys} FROM (SELECT {keys} FROM {t}{where_clause} ORDER BY {order_asc} LIMIT {limit_param}) AS batch ORDER BY {order_desc} LIMIT 1",
        t = ident(table)
    );

    // The update covers (previous key, last key]: parameters 1..n the previous key (when any),
    // then n+1..2n (or 1..n) the last key.
    let upper_offset = if has_lower_bound { n } else { 0 };
    let mut upd_conditions = Vec::new();
    if has_lower_bound {
        upd_conditions.push(format!("({keys}) > ({})", tuple(0)));
    }
    upd_conditions.push(format!("({keys}) <= ({})", tuple(upper_offset)));
    if let Some(p) = predicate {
        upd_conditions.push(format!("({p})"));
    }
    let assignments = set
        .iter()
        .map(|(c, e)| format!("{} = {e}", ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let update = format!(
        "UPDATE {} SET {assignments} WHERE {}",
        ident(table),
        upd_conditions.join(" AND ")
    );
    let count = format!("SELECT count(*) FROM {}{where_clause}", ident(table));
    BatchSql {
        find_last,
        update,
        count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_batch_casts_bound_text() {
        let sql = render(
            Dialect::Postgres,
            "accounts",
            &["id".into()],
            &["bigint".into()],
            &[("email_lower".into(), "lower(email)".into())],
            Some("email_lower IS NULL"),
            true,
        );
        assert_eq!(
            sql.find_last,
            "SELECT batch.\"id\"::text FROM (SELECT \"id\" FROM \"accounts\" WHERE (\"id\") > ($1::text::bigint) AND (email_lower IS NULL) ORDER BY \"id\" LIMIT $2) AS batch ORDER BY batch.\"id\" DESC LIMIT 1"
        );
        assert_eq!(
            sql.update,
            "UPDATE \"accounts\" SET \"email_lower\" = lower(email) WHERE (\"id\") > ($1::text::bigint) AND (\"id\") <= ($2::text::bigint) AND (email_lower IS NULL)"
        );
    }

    #[test]
    fn sqlite_first_batch_has_no_lower_bound() {
        let sql = render(
            Dialect::Sqlite,
            "t",
            &["a".into(), "b".into()],
            &[],
            &[("c".into(), "1".into())],
            None,
            false,
        );
        assert_eq!(
            sql.update,
            "UPDATE \"t\" SET \"c\" = 1 WHERE (\"a\", \"b\") <= (?1, ?2)"
        );
        assert!(sql.find_last.contains("LIMIT ?1"), "{}", sql.find_last);
        assert_eq!(sql.count, "SELECT count(*) FROM \"t\"");
    }

    #[test]
    fn count_after_a_checkpoint_starts_at_the_key() {
        let sql = render(
            Dialect::Sqlite,
            "t",
            &["a".into(), "b".into()],
            &[],
            &[("c".into(), "1".into())],
            Some("c IS NULL"),
            true,
        );
        assert_eq!(
            sql.count,
            "SELECT count(*) FROM \"t\" WHERE (\"a\", \"b\") > (?1, ?2) AND (c IS NULL)"
        );
    }
}
