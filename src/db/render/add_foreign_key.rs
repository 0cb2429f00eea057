//! `add_foreign_key`: PostgreSQL adds it `NOT VALID` (SHARE ROW EXCLUSIVE on both tables, briefly),
//! then validates separately (SHARE UPDATE EXCLUSIVE / ROW SHARE: writes go on). SQLite rebuilds.

use super::{
    add_not_valid_then_validate, ident, ident_list, Dialect, RenderError, TableChange, Unit,
};
use crate::plan::AddForeignKey;

/// `FOREIGN KEY (…) REFERENCES t (…) [ON DELETE …] [ON UPDATE …]`
pub fn definition(step: &AddForeignKey) -> String {
    let mut def = format!(
        "FOREIGN KEY ({}) REFERENCES {} ({})",
        ident_list(&step.columns),
        ident(&step.references.table),
        ident_list(&step.references.columns)
    );
    if let Some(action) = step.on_delete {
        def.push_str(&format!(" ON DELETE {}", action.as_sql()));
    }
    if let Some(action) = step.on_update {
        def.push_str(&format!(" ON UPDATE {}", action.as_sql()));
    }
    def
}

pub fn render(step: &AddForeignKey, dialect: Dialect) -> Vec<Unit> {
    match dialect {
        Dialect::Postgres => {
            add_not_valid_then_validate(&step.table, &step.name, &definition(step))
        }
        Dialect::Sqlite => vec![Unit::RebuildTable {
            table: step.table.clone(),
            change: TableChange::AddForeignKey {
                name: step.name.clone(),
                definition: definition(step),
            },
        }],
    }
}

/// The inverse: drop the constraint (SHARE ROW EXCLUSIVE on both tables, briefly, on
/// PostgreSQL); on SQLite, a rebuild without it.
pub fn render_down(step: &AddForeignKey, dialect: Dialect) -> Result<Vec<Unit>, RenderError> {
    match dialect {
        Dialect::Postgres => Ok(vec![Unit::Transaction(vec![format!(
            "ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}",
            ident(&step.table),
            ident(&step.name)
        )])]),
        Dialect::Sqlite => Ok(vec![Unit::RebuildTable {
            table: step.table.clone(),
            change: TableChange::DropConstraint {
                name: step.name.clone(),
            },
        }]),
    }
}
