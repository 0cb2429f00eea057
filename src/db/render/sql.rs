//! `sql`: the plan's own SQL, in a transaction unless it says `transactional: false`.

use super::{RenderError, Unit};
use crate::plan::SqlStep;

pub fn render(step: &SqlStep) -> Result<Vec<Unit>, RenderError> {
    let sql = step
        .up_sql()
        .ok_or_else(|| RenderError("the sql step has no SQL to run".to_string()))?;
    Ok(vec![if step.transactional {
        Unit::Transaction(vec![sql.to_string()])
    } else {
        Unit::Script(sql.to_string())
    }])
}

/// The inverse: the step's own `down`, run the same way as its `up`.
pub fn render_down(step: &SqlStep) -> Result<Vec<Unit>, RenderError> {
    let sql = step.down_sql().ok_or_else(|| {
        RenderError("the sql step has no `down` (or `down_file`) to undo it".to_string())
    })?;
    Ok(vec![if step.transactional {
        Unit::Transaction(vec![sql.to_string()])
    } else {
        Unit::Script(sql.to_string())
    }])
}
