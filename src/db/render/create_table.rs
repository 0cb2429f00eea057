//! `create_table`: a new table. Takes no lock other sessions can be waiting on (the table is new).

use super::{ident, ident_list, Dialect, Unit};
use crate::plan::CreateTable;

pub fn render(step: &CreateTable, _dialect: Dialect) -> Vec<Unit> {
    let keys: Vec<String> = step
        .columns
        .iter()
        .filter(|c| c.primary_key)
        .map(|c| c.name.clone())
        .collect();
    let mut defs: Vec<String> = step
        .columns
        .iter()
        .map(|c| {
            let mut def = format!("{} {}", ident(&c.name), c.ty);
            if keys.len() == 1 && c.primary_key {
                def.push_str(" PRIMARY KEY");
            } else if !c.nullable {
                def.push_str(" NOT NULL");
            }
            if c.unique {
                def.push_str(" UNIQUE");
            }
            if let Some(default) = &c.default {
                def.push_str(&format!(" DEFAULT {default}"));
            }
            def
        })
        .collect();
    if keys.len() > 1 {
        defs.push(format!("PRIMARY KEY ({})", ident_list(&keys)));
    }
    vec![Unit::Transaction(vec![format!(
        "CREATE TABLE {} (\n  {}\n)",
        ident(&step.name),
        defs.join(",\n  ")
    )])]
}

/// The inverse: drop the table (it is new, so nothing else is lost). ACCESS EXCLUSIVE, briefly.
pub fn render_down(step: &CreateTable, _dialect: Dialect) -> Vec<Unit> {
    vec![Unit::Transaction(vec![format!(
        "DROP TABLE IF EXISTS {}",
        ident(&step.name)
    )])]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Column;

    fn col(name: &str, ty: &str, pk: bool) -> Column {
        Column {
            name: name.into(),
            ty: ty.into(),
            nullable: true,
            primary_key: pk,
            unique: false,
            default: None,
        }
    }

    #[test]
    fn single_and_composite_keys() {
        let single = CreateTable {
            name: "t".into(),
            columns: vec![col("id", "bigint", true), col("v", "text", false)],
            lock_timeout: None,
        };
        assert_eq!(
            render(&single, Dialect::Postgres),
            vec![Unit::Transaction(vec![
                "CREATE TABLE \"t\" (\n  \"id\" bigint PRIMARY KEY,\n  \"v\" text\n)".into()
            ])]
        );
        let composite = CreateTable {
            name: "t".into(),
            columns: vec![col("a", "int", true), col("b", "int", true)],
            lock_timeout: None,
        };
        let Unit::Transaction(sql) = &render(&composite, Dialect::Sqlite)[0] else {
            panic!("expected a transaction");
        };
        assert!(sql[0].contains("PRIMARY KEY (\"a\", \"b\")"), "{}", sql[0]);
    }
}
