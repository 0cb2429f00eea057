//! Names as types: a plan's identifiers are checked once, when the plan is read (non-empty, at
//! most 63 bytes, PostgreSQL's NAMEDATALEN - 1, beyond which it cuts names silently), and quoted
//! in one place, here.
//!
//! They serialize as the plain strings they were written as: step checksums stored in users'
//! databases are computed from that serialization.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// The longest identifier PostgreSQL keeps whole, in bytes.
pub const MAX_NAME_BYTES: usize = 63;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// An empty string is no name.
    #[error("a name cannot be empty")]
    Empty,
    /// PostgreSQL would cut it silently, and two names could end up the same.
    #[error(
        "name `{name}` is {bytes} bytes long; PostgreSQL names are at most 63 bytes (longer ones are cut silently)"
    )]
    TooLong { name: String, bytes: usize },
    /// `a.b.c`: a table name is `table` or `schema.table`.
    #[error("`{0}` has more than one `.`; write `table` or `schema.table`")]
    TooManyParts(String),
}

/// One identifier: a column, index, constraint, trigger or (unqualified) table name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

impl Name {
    pub fn new(text: impl Into<String>) -> Result<Self, NameError> {
        let text = text.into();
        if text.is_empty() {
            return Err(NameError::Empty);
        }
        if text.len() > MAX_NAME_BYTES {
            return Err(NameError::TooLong {
                bytes: text.len(),
                name: text,
            });
        }
        Ok(Name(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `"name"`, ready for SQL.
    pub fn quoted(&self) -> String {
        quote(&self.0)
    }

    /// `'name'`, a string literal, for catalog lookups that cannot take bind parameters.
    pub fn literal(&self) -> String {
        literal(&self.0)
    }
}

impl Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Name::new(text).map_err(serde::de::Error::custom)
    }
}

/// A relation's name: `name` (found through the search path) or `schema.name`, each part a
/// valid [`Name`]. Tables, and indexes (which live in their table's schema), are named so.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableName {
    /// As written, which is also how it serializes.
    text: String,
    schema: Option<Name>,
    name: Name,
}

impl TableName {
    pub fn new(text: impl Into<String>) -> Result<Self, NameError> {
        let text = text.into();
        let (schema, name) = match text.split_once('.') {
            None => (None, Name::new(text.clone())?),
            Some((_, rest)) if rest.contains('.') => return Err(NameError::TooManyParts(text)),
            Some((schema, name)) => (Some(Name::new(schema)?), Name::new(name)?),
        };
        Ok(TableName { text, schema, name })
    }

    /// `name` in `schema` (or unqualified).
    pub fn in_schema(schema: Option<&Name>, name: &Name) -> Self {
        let text = match schema {
            Some(s) => format!("{s}.{name}"),
            None => name.to_string(),
        };
        TableName {
            text,
            schema: schema.cloned(),
            name: name.clone(),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn schema(&self) -> Option<&Name> {
        self.schema.as_ref()
    }

    /// The name without its schema.
    pub fn name(&self) -> &Name {
        &self.name
    }

    /// `"schema"."table"` (or `"table"`), ready for SQL.
    pub fn quoted(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{}.{}", schema.quoted(), self.name.quoted()),
            None => self.name.quoted(),
        }
    }

    /// `'"schema"."table"'`: the quoted name as a string literal, for `'…'::regclass`.
    pub fn literal(&self) -> String {
        literal(&self.quoted())
    }
}

impl Deref for TableName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl AsRef<str> for TableName {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl PartialEq<str> for TableName {
    fn eq(&self, other: &str) -> bool {
        self.text == other
    }
}

impl PartialEq<String> for TableName {
    fn eq(&self, other: &String) -> bool {
        &self.text == other
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for TableName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for TableName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        TableName::new(text).map_err(serde::de::Error::custom)
    }
}

/// A name phased makes up (a trigger, its function, a helper constraint): `parts` joined by `_`.
///
/// When that fits in 63 bytes it is used as is: deployments in flight have objects by these
/// names. When it does not, it is cut and `_` + 8 hex digits of a sha256 of the whole name
/// (schema included) are appended, so two long names that share their start stay apart:
/// cutting alone once gave two tables one trigger function.
pub fn derived_name(schema: Option<&Name>, parts: &[&str]) -> Name {
    let natural = parts.join("_");
    if natural.len() <= MAX_NAME_BYTES {
        return Name(natural);
    }
    let full = match schema {
        Some(schema) => format!("{schema}.{natural}"),
        None => natural.clone(),
    };
    let digest = Sha256::digest(full.as_bytes());
    let hash: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    let mut keep = MAX_NAME_BYTES - 1 - hash.len();
    while !natural.is_char_boundary(keep) {
        keep -= 1;
    }
    Name(format!("{}_{hash}", &natural[..keep]))
}

/// A name phased makes up that must be unique across schemas (a function in schema `phased`
/// made for a table in another schema): `parts` joined by `_`, then `_` + 8 hex digits of a
/// sha256 of `schema.` and the name, cut to fit 63 bytes.
pub fn derived_name_in_schema(schema: &Name, parts: &[&str]) -> Name {
    let natural = parts.join("_");
    let digest = Sha256::digest(format!("{schema}.{natural}").as_bytes());
    let hash: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    let mut keep = natural.len().min(MAX_NAME_BYTES - 1 - hash.len());
    while !natural.is_char_boundary(keep) {
        keep -= 1;
    }
    Name(format!("{}_{hash}", &natural[..keep]))
}

/// THE quoting rule: `"…"`, with embedded quotes doubled.
pub fn quote(part: &str) -> String {
    format!("\"{}\"", part.replace('"', "\"\""))
}

/// Quotes text from outside a plan (catalog rows, database and schema names) that may be
/// `schema.name`: part by part. Step fields are typed and use [`Name::quoted`] /
/// [`TableName::quoted`].
pub fn ident(name: &str) -> String {
    name.split('.').map(quote).collect::<Vec<_>>().join(".")
}

/// Quotes a list of column names, comma-separated.
pub fn ident_list<S: AsRef<str>>(names: &[S]) -> String {
    names
        .iter()
        .map(|n| quote(n.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A string literal (for catalog lookups that cannot take bind parameters, e.g. `regclass`).
pub fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The last part of a possibly schema-qualified name.
pub fn base_name(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> Name {
        match Name::new(text) {
            Ok(n) => n,
            Err(e) => panic!("{text}: {e}"),
        }
    }

    fn table(text: &str) -> TableName {
        match TableName::new(text) {
            Ok(t) => t,
            Err(e) => panic!("{text}: {e}"),
        }
    }

    #[test]
    fn quotes_identifiers() {
        assert_eq!(ident("accounts"), "\"accounts\"");
        assert_eq!(ident("public.accounts"), "\"public\".\"accounts\"");
        assert_eq!(ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(name("a.b").quoted(), "\"a.b\"");
        assert_eq!(table("app.accounts").quoted(), "\"app\".\"accounts\"");
        assert_eq!(table("app.accounts").literal(), "'\"app\".\"accounts\"'");
        assert_eq!(table("accounts").quoted(), "\"accounts\"");
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(Name::new(""), Err(NameError::Empty));
        assert!(Name::new("x".repeat(63)).is_ok());
        assert!(matches!(
            Name::new("x".repeat(64)),
            Err(NameError::TooLong { bytes: 64, .. })
        ));
        // Bytes, not characters: PostgreSQL counts bytes.
        assert!(Name::new("é".repeat(32)).is_err());
        assert!(matches!(
            TableName::new("a.b.c"),
            Err(NameError::TooManyParts(_))
        ));
        assert_eq!(TableName::new("app."), Err(NameError::Empty));
        let t = table("app.accounts");
        assert_eq!(t.schema().map(Name::as_str), Some("app"));
        assert_eq!(t.name().as_str(), "accounts");
        assert_eq!(
            TableName::in_schema(t.schema(), &name("idx")).quoted(),
            "\"app\".\"idx\""
        );
    }

    #[test]
    fn names_serialize_as_written() {
        assert_eq!(
            serde_json::to_string(&table("app.accounts")).ok(),
            Some("\"app.accounts\"".to_string())
        );
        assert_eq!(
            serde_json::to_string(&name("email")).ok(),
            Some("\"email\"".to_string())
        );
    }

    #[test]
    fn derived_names_that_fit_are_kept_as_they_were() {
        assert_eq!(
            derived_name(None, &["phased_dual_write", "accounts"]).as_str(),
            "phased_dual_write_accounts"
        );
        let exactly = "t".repeat(63 - "phased_dual_write_".len());
        assert_eq!(
            derived_name(None, &["phased_dual_write", &exactly]).as_str(),
            format!("phased_dual_write_{exactly}")
        );
    }

    #[test]
    fn long_derived_names_stay_apart() {
        let shared = "a".repeat(50);
        let one = derived_name(None, &["phased_dual_write", &format!("{shared}_one_xxxx")]);
        let two = derived_name(None, &["phased_dual_write", &format!("{shared}_two_xxxx")]);
        assert_ne!(one, two);
        assert_eq!(one.len(), 63);
        assert!(one.starts_with("phased_dual_write_aaaa"), "{one}");
        // The schema is part of what is hashed.
        let long = "b".repeat(60);
        assert_ne!(
            derived_name(Some(&name("app")), &["phased_dual_write", &long]),
            derived_name(Some(&name("web")), &["phased_dual_write", &long])
        );
        // Cut on a character boundary.
        let wide = derived_name(None, &["phased_dual_write", &"é".repeat(40)]);
        assert!(wide.len() <= 63, "{wide}");
    }
}
