//! Splitting a script into statements at top-level `;`, for scripts that run outside a
//! transaction: PostgreSQL refuses `CREATE INDEX CONCURRENTLY` inside a multi-statement string.
//! The cuts come from squawk's PostgreSQL parser, so quotes, `$tag$` bodies, comments and
//! `BEGIN ATOMIC … END` function bodies are never cut; a text the parser cannot read whole
//! (SQLite's own syntax, such as `CREATE TRIGGER … BEGIN … END`) is cut by the scanner below,
//! which skips quotes, `$tag$` bodies and comments. Comment-only pieces are dropped.

use squawk_syntax::{SourceFile, SyntaxKind, SyntaxNode};

/// The statements of `sql`, trimmed, without their final `;`.
pub fn split(sql: &str) -> Vec<String> {
    let parse = SourceFile::parse(sql);
    if !parse.errors().is_empty() {
        return split_by_scanning(sql);
    }
    let root = parse.syntax_node();
    let mut out = Vec::new();
    let mut start = 0;
    let mut has_code = false;
    for token in root
        .descendants_with_tokens()
        .filter_map(|e| e.into_token())
    {
        if token.kind().is_trivia() {
            continue;
        }
        if token.kind() == SyntaxKind::SEMICOLON && top_level(&root, &token) {
            let at = usize::from(token.text_range().start());
            if has_code {
                out.push(sql.get(start..at).unwrap_or("").trim().to_string());
            }
            start = usize::from(token.text_range().end());
            has_code = false;
        } else {
            has_code = true;
        }
    }
    if has_code {
        let rest = sql.get(start..).unwrap_or("").trim();
        if !rest.is_empty() {
            out.push(rest.to_string());
        }
    }
    out
}

/// Whether a `;` ends a top-level statement: a child of the file, or the last token of a
/// statement that is one (never a `;` inside a function body).
fn top_level(root: &SyntaxNode, token: &squawk_syntax::SyntaxToken) -> bool {
    let Some(parent) = token.parent() else {
        return false;
    };
    if parent == *root {
        return true;
    }
    parent.parent().as_ref() == Some(root)
        && parent
            .last_token()
            .is_some_and(|last| last.text_range() == token.text_range())
}

/// The scanner the parser's cuts replaced, kept for text the parser cannot read whole.
fn split_by_scanning(sql: &str) -> Vec<String> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut has_code = false;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'\'' | b'"' => {
                has_code = true;
                i += 1;
                while i < bytes.len() {
                    if bytes[i] == c {
                        if i + 1 < bytes.len() && bytes[i + 1] == c {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < bytes.len() {
                    if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'$' => {
                has_code = true;
                // A dollar-quote tag: $$ or $name$ (a name does not start with a digit).
                let tag_end = bytes[i + 1..]
                    .iter()
                    .position(|&b| !(b.is_ascii_alphanumeric() || b == b'_'))
                    .map(|p| i + 1 + p);
                match tag_end {
                    Some(end)
                        if bytes[end] == b'$'
                            && !bytes.get(i + 1).is_some_and(|b| b.is_ascii_digit()) =>
                    {
                        let tag = &sql[i..=end];
                        match sql[end + 1..].find(tag) {
                            Some(close) => i = end + 1 + close + tag.len(),
                            None => i = bytes.len(),
                        }
                    }
                    _ => i += 1,
                }
            }
            b';' => {
                if has_code {
                    out.push(sql[start..i].trim().to_string());
                }
                start = i + 1;
                has_code = false;
                i += 1;
            }
            c if c.is_ascii_whitespace() => i += 1,
            _ => {
                has_code = true;
                i += 1;
            }
        }
    }
    if has_code {
        let rest = sql[start..].trim();
        if !rest.is_empty() {
            out.push(rest.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::split;
    use squawk_syntax::SourceFile;

    #[test]
    fn splits_at_top_level_semicolons() {
        assert_eq!(
            split("CREATE INDEX CONCURRENTLY a ON t (x);\n-- why\nDROP INDEX b;"),
            vec![
                "CREATE INDEX CONCURRENTLY a ON t (x)",
                "-- why\nDROP INDEX b"
            ]
        );
    }

    #[test]
    fn skips_quotes_comments_and_dollar_bodies() {
        let sql = "INSERT INTO t VALUES ('a;b', \"c;d\"); /* x; /* y; */ */ SELECT 1;\n\
                   CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;\n\
                   DO $$ BEGIN PERFORM 1; END $$; SELECT $1";
        assert!(
            SourceFile::parse(sql).errors().is_empty(),
            "the parser reads it, so its cuts are used"
        );
        let parts = split(sql);
        assert_eq!(parts.len(), 5, "{parts:#?}");
        assert_eq!(parts[0], "INSERT INTO t VALUES ('a;b', \"c;d\")");
        assert!(parts[2].ends_with("LANGUAGE sql"));
        assert_eq!(parts[4], "SELECT $1");
    }

    #[test]
    fn begin_atomic_bodies_are_not_cut() {
        let sql = "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END;\nSELECT 3;";
        let parts = split(sql);
        assert_eq!(parts.len(), 2, "{parts:#?}");
        assert!(parts[0].ends_with("END"), "{parts:#?}");
        assert_eq!(parts[1], "SELECT 3");
    }

    #[test]
    fn text_the_parser_cannot_read_is_scanned() {
        let parts = split("SELEC oops; SELECT 2;");
        assert_eq!(parts, vec!["SELEC oops", "SELECT 2"]);
    }

    #[test]
    fn comment_only_pieces_are_dropped() {
        assert!(split("-- nothing to run\n").is_empty());
        assert!(split("  ;  ; /* x */ ;").is_empty());
        assert_eq!(split("SELECT 'it''s'"), vec!["SELECT 'it''s'"]);
    }
}
