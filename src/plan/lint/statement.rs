//! The statements of a parsed text: where each starts and its tokens, trivia left out, so a
//! rule matches keywords and never the inside of a comment, a string or a `$$` body.

use squawk_syntax::ast::AstNode;
use squawk_syntax::{Parse, SourceFile, SyntaxKind};

use super::line_col;

/// A shown statement is cut after this many characters.
const SHOWN: usize = 100;

/// One top-level statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// Byte offset of its first token, and its length up to the end of its last token.
    pub offset: usize,
    pub len: usize,
    pub line: u64,
    pub column: u64,
    /// Its text, from the first token to the last.
    pub text: String,
    /// Whether it runs inside a transaction block: the SQL runs in one (a transactional step),
    /// or an earlier `BEGIN` / `START TRANSACTION` has not been closed yet.
    pub in_transaction: bool,
    /// Its tokens as written, trivia left out (identifiers keep their case and quotes).
    pub raw: Vec<String>,
    /// Its tokens, trivia left out, keywords and identifiers upper-cased; a string literal or a
    /// dollar-quoted body is one token.
    pub words: Vec<String>,
}

impl Statement {
    /// Whether `seq` occurs in the statement's words, in order and adjacent.
    pub fn has(&self, seq: &[&str]) -> bool {
        !seq.is_empty()
            && self
                .words
                .windows(seq.len())
                .any(|w| w.iter().zip(seq).all(|(a, b)| a == b))
    }

    /// Whether the statement starts with `seq`.
    pub fn starts(&self, seq: &[&str]) -> bool {
        self.words.len() >= seq.len() && self.words.iter().zip(seq).all(|(a, b)| a == b)
    }

    /// The relation named at word `at` (`name`, `"Name"`, `schema.name`), as PostgreSQL
    /// resolves it: unquoted parts folded to lower case, quoted ones kept with their quotes
    /// (so `to_regclass` finds them).
    pub fn name_at(&self, at: usize) -> Option<String> {
        let part = |i: usize| -> Option<String> {
            let raw = self.raw.get(i)?;
            if raw.starts_with('"') {
                return Some(raw.clone());
            }
            let first = raw.chars().next()?;
            (first.is_alphabetic() || first == '_').then(|| raw.to_lowercase())
        };
        let first = part(at)?;
        if self.raw.get(at + 1).map(String::as_str) == Some(".") {
            return Some(format!("{first}.{}", part(at + 2)?));
        }
        Some(first)
    }

    /// The word index after `start` once the optional keyword runs in `options` (such as
    /// `IF EXISTS`, `ONLY`) are skipped, in any order.
    pub fn after_options(&self, start: usize, options: &[&[&str]]) -> Option<usize> {
        let mut at = start;
        'skip: loop {
            for option in options {
                let fits = option
                    .iter()
                    .enumerate()
                    .all(|(k, word)| self.words.get(at + k).is_some_and(|w| w == word));
                if fits {
                    at += option.len();
                    continue 'skip;
                }
            }
            break;
        }
        (at < self.words.len()).then_some(at)
    }

    /// The comma-separated relation names from word `at` on (`TRUNCATE a, b`).
    pub fn name_list(&self, mut at: usize) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(name) = self.name_at(at) {
            out.push(name);
            at += if self.raw.get(at + 1).map(String::as_str) == Some(".") {
                3
            } else {
                1
            };
            if self.raw.get(at).map(String::as_str) != Some(",") {
                break;
            }
            at += 1;
        }
        out
    }

    /// The statement on one line, cut to a readable length.
    pub fn display(&self) -> String {
        let one_line = self.text.split_whitespace().collect::<Vec<_>>().join(" ");
        if one_line.chars().count() > SHOWN {
            let cut: String = one_line.chars().take(SHOWN).collect();
            format!("{cut}…")
        } else {
            one_line
        }
    }

    /// The table an `ALTER TABLE` statement changes, as written.
    pub fn altered_table(&self) -> Option<&str> {
        if !self.starts(&["ALTER", "TABLE"]) {
            return None;
        }
        let mut rest = self.words.iter().skip(2).map(String::as_str);
        let mut next = rest.next()?;
        if next == "IF" {
            rest.next()?;
            next = rest.next()?;
        }
        if next == "ONLY" {
            next = rest.next()?;
        }
        Some(next)
    }
}

/// The top-level statements of `sql`, in order; `transactional` when the whole text runs in
/// one transaction.
pub fn statements(sql: &str, parse: &Parse<SourceFile>, transactional: bool) -> Vec<Statement> {
    let mut in_transaction = transactional;
    let mut out: Vec<Statement> = parse
        .tree()
        .stmts()
        .filter_map(|stmt| {
            let tokens: Vec<_> = stmt
                .syntax()
                .descendants_with_tokens()
                .filter_map(|e| e.into_token())
                .filter(|t| !t.kind().is_trivia() && t.kind() != SyntaxKind::SEMICOLON)
                .collect();
            let first = tokens.first()?;
            let last = tokens.last()?;
            let offset = usize::from(first.text_range().start());
            let end = usize::from(last.text_range().end());
            let (line, column) = line_col(sql, offset);
            let raw = tokens.iter().map(|t| t.text().to_string()).collect();
            let words = tokens
                .iter()
                .map(|t| {
                    let text = t.text();
                    if text.starts_with('\'') || text.starts_with('$') || text.starts_with('"') {
                        text.to_string()
                    } else {
                        text.to_uppercase()
                    }
                })
                .collect();
            Some(Statement {
                offset,
                len: end.saturating_sub(offset),
                line,
                column,
                text: sql.get(offset..end).unwrap_or("").to_string(),
                in_transaction: false,
                raw,
                words,
            })
        })
        .collect();
    for stmt in &mut out {
        stmt.in_transaction = in_transaction;
        if stmt.starts(&["BEGIN"]) || stmt.starts(&["START", "TRANSACTION"]) {
            in_transaction = true;
        } else if ["COMMIT", "END", "ROLLBACK", "ABORT"]
            .iter()
            .any(|k| stmt.starts(&[k]))
        {
            in_transaction = transactional;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(sql: &str) -> Vec<Statement> {
        statements(sql, &SourceFile::parse(sql), false)
    }

    #[test]
    fn comments_strings_and_bodies_are_not_words() {
        let sql = "-- DROP TABLE x;\nSELECT 'DROP TABLE y';\nCREATE FUNCTION f() RETURNS int AS $$ BEGIN DROP TABLE z; RETURN 1; END $$ LANGUAGE plpgsql;";
        let stmts = parse(sql);
        assert_eq!(stmts.len(), 2);
        assert!(stmts.iter().all(|s| !s.has(&["DROP", "TABLE"])));
        assert_eq!((stmts[0].line, stmts[0].column), (2, 1));
    }

    #[test]
    fn finds_the_altered_table() {
        let stmts = parse("ALTER TABLE IF EXISTS ONLY accounts ADD COLUMN c text;");
        assert_eq!(stmts[0].altered_table(), Some("ACCOUNTS"));
    }
}
