//! `create_index`: PostgreSQL builds it `CONCURRENTLY` (SHARE UPDATE EXCLUSIVE: reads and writes go
//! on), outside any transaction; SQLite builds it in a transaction under busy_timeout.

use super::{ident, ident_list, Dialect, Unit};
use crate::plan::CreateIndex;

pub fn render(step: &CreateIndex, dialect: Dialect) -> Vec<Unit> {
    let unique = if step.unique { "UNIQUE " } else { "" };
    let mut tail = String::new();
    if let Some(using) = step.using.filter(|_| dialect == Dialect::Postgres) {
        tail.push_str(&format!(" USING {}", using.as_sql()));
    }
    tail.push_str(&format!(" ({})", ident_list(&step.columns)));
    if !step.include.is_empty() && dialect == Dialect::Postgres {
        tail.push_str(&format!(" INCLUDE ({})", ident_list(&step.include)));
    }
    if let Some(predicate) = &step.predicate {
        tail.push_str(&format!(" WHERE {predicate}"));
    }
    match dialect {
        Dialect::Postgres => vec![Unit::ConcurrentIndex {
            name: step.name.clone(),
            create: format!(
                "CREATE {unique}INDEX CONCURRENTLY {} ON {}{tail}",
                ident(super::base_name(&step.name)),
                ident(&step.table)
            ),
        }],
        Dialect::Sqlite => vec![Unit::Transaction(vec![format!(
            "CREATE {unique}INDEX {} ON {}{tail}",
            ident(&step.name),
            ident(&step.table)
        )])],
    }
}

/// The inverse: drop the index, `CONCURRENTLY` on PostgreSQL (outside a transaction, no ACCESS
/// EXCLUSIVE on the table); it also removes an INVALID leftover of a failed build.
pub fn render_down(step: &CreateIndex, dialect: Dialect) -> Vec<Unit> {
    match dialect {
        Dialect::Postgres => vec![Unit::Standalone(format!(
            "DROP INDEX CONCURRENTLY IF EXISTS {}",
            ident(&step.name)
        ))],
        Dialect::Sqlite => vec![Unit::Transaction(vec![format!(
            "DROP INDEX IF EXISTS {}",
            ident(&step.name)
        )])],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::IndexMethod;

    #[test]
    fn postgres_is_concurrent_with_options() {
        let step = CreateIndex {
            table: "t".into(),
            name: "t_c_idx".into(),
            columns: vec!["c".into()],
            unique: true,
            predicate: Some("c IS NOT NULL".into()),
            using: Some(IndexMethod::Btree),
            include: vec!["d".into()],
            lock_timeout: None,
            statement_timeout: None,
        };
        assert_eq!(
            render(&step, Dialect::Postgres),
            vec![Unit::ConcurrentIndex {
                name: "t_c_idx".into(),
                create: "CREATE UNIQUE INDEX CONCURRENTLY \"t_c_idx\" ON \"t\" USING btree (\"c\") INCLUDE (\"d\") WHERE c IS NOT NULL".into()
            }]
        );
        assert_eq!(
            render(&step, Dialect::Sqlite),
            vec![Unit::Transaction(vec![
                "CREATE UNIQUE INDEX \"t_c_idx\" ON \"t\" (\"c\") WHERE c IS NOT NULL".into()
            ])]
        );
    }
}
