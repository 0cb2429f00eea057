//! `set: { column: expression, … }` of `dual_write` and `backfill`, in the order the plan wrote
//! it: a `dual_write` trigger assigns `NEW.a`, then `NEW.b`, so an expression may read a column
//! assigned before it. (A map in the plan used to come back sorted by column name.)

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::name::Name;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Assignments(Vec<(Name, String)>);

impl Assignments {
    /// The assignments in written order.
    pub fn iter(&self) -> impl Iterator<Item = (&Name, &String)> {
        self.0.iter().map(|(c, e)| (c, e))
    }

    pub fn keys(&self) -> impl Iterator<Item = &Name> {
        self.0.iter().map(|(c, _)| c)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl FromIterator<(Name, String)> for Assignments {
    fn from_iter<I: IntoIterator<Item = (Name, String)>>(iter: I) -> Self {
        Assignments(iter.into_iter().collect())
    }
}

/// Serialized sorted by column, exactly as the map it replaces was: step checksums of earlier
/// releases hash this serialization, and users' databases hold them.
impl Serialize for Assignments {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut sorted: Vec<&(Name, String)> = self.0.iter().collect();
        sorted.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        let mut map = s.serialize_map(Some(sorted.len()))?;
        for (column, expression) in sorted {
            map.serialize_entry(column, expression)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Assignments {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AssignmentsVisitor;
        impl<'de> Visitor<'de> for AssignmentsVisitor {
            type Value = Assignments;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of column: SQL expression")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Assignments, A::Error> {
                let mut out: Vec<(Name, String)> = Vec::new();
                while let Some((column, expression)) = map.next_entry::<Name, String>()? {
                    if out.iter().any(|(c, _)| *c == column) {
                        return Err(de::Error::custom(format!("column `{column}` is set twice")));
                    }
                    out.push((column, expression));
                }
                Ok(Assignments(out))
            }
        }
        deserializer.deserialize_map(AssignmentsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_written_order_and_serializes_sorted() {
        let set: Assignments =
            serde_saphyr::from_str("{ b: \"x\", a: \"y\" }").unwrap_or_else(|e| panic!("{e}"));
        let order: Vec<&str> = set.keys().map(Name::as_str).collect();
        assert_eq!(order, ["b", "a"]);
        assert_eq!(
            serde_json::to_string(&set).unwrap_or_default(),
            r#"{"a":"y","b":"x"}"#
        );
        let twice: Result<Assignments, _> = serde_saphyr::from_str("{ a: \"x\", a: \"y\" }");
        assert!(twice.is_err());
    }
}
