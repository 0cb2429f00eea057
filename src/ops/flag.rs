//! `flag`: sets a feature flag in `phased.flags` (`phased_flags` on SQLite), the table
//! applications read, in the same transaction that records the step done. The engine runs it
//! (it remembers the value it replaces, for rollback).
//!
//! Resumes: one transaction, so a crash leaves the old value or the new one with the step done.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::{engine_driven, Dialect, Inverse, InverseContext, Operation, RenderError, Unit};
use crate::plan::PhaseKind;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Flag {
    pub name: String,
    pub value: FlagValue,
}

impl Operation for Flag {
    fn kind(&self) -> &'static str {
        "flag"
    }

    fn subject(&self) -> String {
        format!("{} = {}", self.name, self.value)
    }

    fn allowed_in(&self) -> &'static [PhaseKind] {
        &[PhaseKind::SwitchFlag]
    }

    fn units(&self, _dialect: Dialect) -> Result<Vec<Unit>, RenderError> {
        Err(engine_driven(self.kind()))
    }

    /// Put the flag back to the value it had; a flag step that did not finish changed nothing.
    fn inverse(&self, _ctx: &InverseContext<'_>, done: bool, _dialect: Dialect) -> Inverse {
        if !done {
            return Inverse::Nothing("its transaction never committed".to_string());
        }
        Inverse::Flag {
            name: self.name.clone(),
        }
    }
}

/// A flag value: stored as text, written in plans as a scalar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagValue(pub String);

impl fmt::Display for FlagValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for FlagValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for FlagValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FlagVisitor;
        impl Visitor<'_> for FlagVisitor {
            type Value = FlagValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a flag value: true, false, a number or a string")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<FlagValue, E> {
                Ok(FlagValue(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<FlagValue, E> {
                Ok(FlagValue(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<FlagValue, E> {
                Ok(FlagValue(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<FlagValue, E> {
                Ok(FlagValue(v.to_string()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FlagValue, E> {
                Ok(FlagValue(v.to_string()))
            }
        }
        deserializer.deserialize_any(FlagVisitor)
    }
}
