//! `add_column`: a catalog-only change (no rewrite: defaults are constants), but it needs ACCESS
//! EXCLUSIVE for a moment, so it runs under lock_timeout.

use super::{ident, Dialect, Unit};
use crate::plan::AddColumn;

pub fn render(step: &AddColumn, _dialect: Dialect) -> Vec<Unit> {
    let mut sql = format!(
        "ALTER TABLE {} ADD COLUMN {} {}",
        ident(&step.table),
        ident(&step.name),
        step.ty
    );
    if let Some(default) = &step.default {
        sql.push_str(&format!(" DEFAULT {default}"));
    }
    if !step.nullable {
        sql.push_str(" NOT NULL");
    }
    vec![Unit::Transaction(vec![sql])]
}

/// The inverse: drop the column (catalog-only on PostgreSQL, ACCESS EXCLUSIVE for a moment).
/// SQLite has no `IF EXISTS` here and refuses while an index or trigger still uses the column,
/// which rollback's newest-first order takes care of.
pub fn render_down(step: &AddColumn, dialect: Dialect) -> Vec<Unit> {
    let if_exists = match dialect {
        Dialect::Postgres => "IF EXISTS ",
        Dialect::Sqlite => "",
    };
    vec![Unit::Transaction(vec![format!(
        "ALTER TABLE {} DROP COLUMN {if_exists}{}",
        ident(&step.table),
        ident(&step.name)
    )])]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_default_and_not_null() {
        let step = AddColumn {
            table: "accounts".into(),
            name: "score".into(),
            ty: "integer".into(),
            nullable: false,
            default: Some("0".into()),
            lock_timeout: None,
        };
        assert_eq!(
            render(&step, Dialect::Postgres),
            vec![Unit::Transaction(vec![
                "ALTER TABLE \"accounts\" ADD COLUMN \"score\" integer DEFAULT 0 NOT NULL".into()
            ])]
        );
    }
}
