//! What an operation needs to know about a table as it is when the step runs: its columns,
//! indexes and constraints, and the foreign keys of other tables that point at it. The target
//! reads them (`Catalog::table_facts`, a look-up: a dry run sends it too); operations whose SQL
//! depends on them (a renamed column takes its type, default, indexes and constraints along)
//! render from them ([`super::Operation::units_with`]). Pure data.

use serde::{Deserialize, Serialize};

/// A table as the catalog describes it. An absent table has no columns (`exists` false).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableFacts {
    pub exists: bool,
    pub columns: Vec<ColumnFacts>,
    pub indexes: Vec<IndexFacts>,
    pub constraints: Vec<ConstraintFacts>,
    /// Foreign keys of other tables (or of this one) that reference this table.
    pub referenced_by: Vec<ReferenceFacts>,
    /// SQLite: the table's `CREATE TABLE` statement; PostgreSQL: empty.
    pub sql: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnFacts {
    pub name: String,
    /// The type as the database spells it (`format_type` on PostgreSQL, the declared type on
    /// SQLite).
    pub ty: String,
    pub not_null: bool,
    /// The default expression, as the database prints it.
    pub default: Option<String>,
    /// Part of the primary key.
    pub primary_key: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexFacts {
    pub name: String,
    /// `CREATE [UNIQUE] INDEX name ON table USING … (…)` as the database prints it (SQLite:
    /// the statement it stored; empty for the indexes SQLite makes itself).
    pub definition: String,
    pub unique: bool,
    pub primary: bool,
    /// The columns the index involves: its keys, and those in its expressions or predicate.
    pub columns: Vec<String>,
    /// The constraint the index backs (a primary key, unique or exclusion constraint).
    pub constraint: Option<String>,
    pub valid: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConstraintFacts {
    pub name: String,
    /// `c` check, `f` foreign key, `u` unique, `p` primary key, `x` exclusion.
    pub kind: char,
    /// `CHECK (…)`, `FOREIGN KEY (…) REFERENCES …` as `pg_get_constraintdef` prints it.
    pub definition: String,
    pub columns: Vec<String>,
    pub validated: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferenceFacts {
    pub name: String,
    /// The referencing table, schema-qualified and quoted as the database prints it.
    pub table: String,
    pub definition: String,
    /// The referenced columns of this table.
    pub columns: Vec<String>,
}

impl TableFacts {
    pub fn column(&self, name: &str) -> Option<&ColumnFacts> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The indexes that involve `column` and back no constraint.
    pub fn indexes_on<'a>(&'a self, column: &'a str) -> impl Iterator<Item = &'a IndexFacts> {
        self.indexes
            .iter()
            .filter(move |i| i.constraint.is_none() && i.columns.iter().any(|c| c == column))
    }

    /// The constraints that involve `column`.
    pub fn constraints_on<'a>(
        &'a self,
        column: &'a str,
    ) -> impl Iterator<Item = &'a ConstraintFacts> {
        self.constraints
            .iter()
            .filter(move |k| k.columns.iter().any(|c| c == column))
    }
}

/// `text` with each whole identifier `from` (bare or double-quoted) replaced by `to` (quoted):
/// how a definition the catalog printed for one column is made for another. Strings, quoted
/// identifiers of other names and longer words are left alone.
pub fn replace_identifier(text: &str, from: &str, to: &str) -> String {
    let quoted_to = super::name::quote(to);
    let mut out = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            // A string literal, '' escapes included.
            let start = i;
            i += 1;
            while i < chars.len() {
                if chars[i] == '\'' {
                    if chars.get(i + 1) == Some(&'\'') {
                        i += 2;
                        continue;
                    }
                    break;
                }
                i += 1;
            }
            i = (i + 1).min(chars.len());
            out.extend(&chars[start..i]);
        } else if c == '"' {
            let start = i;
            let mut name = String::new();
            i += 1;
            while i < chars.len() {
                if chars[i] == '"' {
                    if chars.get(i + 1) == Some(&'"') {
                        name.push('"');
                        i += 2;
                        continue;
                    }
                    break;
                }
                name.push(chars[i]);
                i += 1;
            }
            i = (i + 1).min(chars.len());
            if name == from {
                out.push_str(&quoted_to);
            } else {
                out.extend(&chars[start..i]);
            }
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            // A bare identifier is folded to lower case; a following `(` makes it a function.
            let is_call = chars[i..].iter().find(|c| !c.is_whitespace()) == Some(&'(');
            let after_dot = start > 0 && chars[start - 1] == '.';
            if word.to_lowercase() == from && !is_call && !after_dot {
                out.push_str(&quoted_to);
            } else {
                out.push_str(&word);
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_identifiers_only() {
        assert_eq!(
            replace_identifier(
                "CREATE INDEX i ON public.users USING btree (lower(email), email_x) WHERE (email <> 'email'::text)",
                "email",
                "email_address"
            ),
            "CREATE INDEX i ON public.users USING btree (lower(\"email_address\"), email_x) WHERE (\"email_address\" <> 'email'::text)"
        );
        assert_eq!(
            replace_identifier("CHECK ((\"Total\" > 0))", "Total", "total_v2"),
            "CHECK ((\"total_v2\" > 0))"
        );
        assert_eq!(
            replace_identifier("CHECK (total > 0) -- it's", "total", "t2"),
            "CHECK (\"t2\" > 0) -- it's"
        );
        // A function of the same name is not the column.
        assert_eq!(replace_identifier("total(x)", "total", "t2"), "total(x)");
    }
}
