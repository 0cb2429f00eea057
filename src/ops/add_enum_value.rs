//! `add_enum_value`: `ALTER TYPE … ADD VALUE IF NOT EXISTS` on PostgreSQL (a lock on the type,
//! not on any table; no rewrite). The new value cannot be used in the transaction that adds it,
//! so the step's transaction holds nothing else (a later step may use it). PostgreSQL cannot
//! remove an enum value: rollback stops here and says so, unless the plan's own `create_enum`
//! made the type (its rollback drops the type, value and all). SQLite has no enum types.
//!
//! Resumes: `IF NOT EXISTS`.

use serde::{Deserialize, Serialize};

use super::create_enum::postgres_only;
use super::name::{literal, TableName};
use super::{Dialect, Inverse, InverseContext, Operation, RenderError, Unit};
use crate::plan::{PhaseKind, PlanDuration};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AddEnumValue {
    /// The enum type: `type` or `schema.type`.
    #[serde(rename = "enum")]
    pub ty: TableName,
    pub value: String,
    /// Place it before this value (at most one of `before` and `after`; neither: at the end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// Place it after this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
}

impl Operation for AddEnumValue {
    fn kind(&self) -> &'static str {
        "add_enum_value"
    }

    fn subject(&self) -> String {
        format!("{}.{}", self.ty, self.value)
    }

    fn allowed_in(&self) -> &'static [PhaseKind] {
        &[PhaseKind::Expand, PhaseKind::Contract]
    }

    // No table locks: ALTER TYPE … ADD VALUE locks the type only.

    fn lock_timeout(&self) -> Option<PlanDuration> {
        self.lock_timeout
    }

    fn unsupported_on(&self, dialect: Dialect) -> Option<String> {
        (dialect == Dialect::Sqlite).then(|| postgres_only(self.kind()).0)
    }

    fn units(&self, dialect: Dialect) -> Result<Vec<Unit>, RenderError> {
        if dialect == Dialect::Sqlite {
            return Err(postgres_only(self.kind()));
        }
        let place = match (&self.before, &self.after) {
            (Some(before), _) => format!(" BEFORE {}", literal(before)),
            (None, Some(after)) => format!(" AFTER {}", literal(after)),
            (None, None) => String::new(),
        };
        Ok(vec![Unit::Transaction(vec![format!(
            "ALTER TYPE {} ADD VALUE IF NOT EXISTS {}{place}",
            self.ty.quoted(),
            literal(&self.value)
        )])])
    }

    fn inverse(&self, ctx: &InverseContext<'_>, _done: bool, dialect: Dialect) -> Inverse {
        if dialect == Dialect::Sqlite {
            return Inverse::Irreversible(postgres_only(self.kind()).0);
        }
        if ctx.creates_enum(&self.ty) {
            return Inverse::Nothing(format!(
                "the plan's `create_enum` made `{}`; undoing it drops the type, value and all",
                self.ty
            ));
        }
        Inverse::Irreversible(format!(
            "PostgreSQL cannot remove a value from an enum: `{}` keeps `{}`, so rollback stops \
             here; only a backup taken before it (`phased restore`) removes the value",
            self.ty, self.value
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::parse_step;

    #[test]
    fn adds_if_not_exists_and_cannot_be_removed() {
        let step = parse_step("add_enum_value: { enum: status, value: refunded, after: paid }");
        assert_eq!(
            step.op().units(Dialect::Postgres).ok(),
            Some(vec![Unit::Transaction(vec![
                "ALTER TYPE \"status\" ADD VALUE IF NOT EXISTS 'refunded' AFTER 'paid'".into()
            ])])
        );
        assert!(matches!(
            step.op().inverse(&InverseContext::default(), true, Dialect::Postgres),
            Inverse::Irreversible(why) if why.contains("cannot remove a value")
        ));
    }
}
