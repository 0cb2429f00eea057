//! What of a file is PostgreSQL SQL to lint, with its lines kept where they are: a phased
//! migration file (`-- migrate:up` sections) keeps its `up` sections for PostgreSQL (plain or
//! `postgres`), and blanks the rest; any other file is linted whole.

/// A file's text as the linter sees it, and whether it runs in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LintSource {
    pub text: String,
    pub transactional: bool,
}

/// The PostgreSQL `up` SQL of `text`, other sections blanked (newlines kept, so line and
/// column stay those of the file). A plain file runs as written: not in a transaction unless it
/// says `BEGIN` itself.
pub fn postgres_up(text: &str) -> LintSource {
    let is_migration = text.lines().any(|l| section(l).is_some());
    if !is_migration {
        return LintSource {
            text: text.to_string(),
            transactional: false,
        };
    }
    let mut transactional = true;
    let mut keep = false;
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        if let Some((up, dialect)) = section(line) {
            keep = up && matches!(dialect, "" | "postgres");
        } else if !keep {
            if let Some(value) = line
                .trim()
                .strip_prefix("--")
                .map(str::trim)
                .and_then(|c| c.strip_prefix("transactional:"))
            {
                transactional = value.trim() != "false";
            }
        }
        if keep {
            out.push_str(line);
        } else if line.ends_with('\n') {
            out.push('\n');
        }
    }
    LintSource {
        text: out,
        transactional,
    }
}

/// `(is_up, dialect)` for a `-- migrate:up|down [dialect]` line.
fn section(line: &str) -> Option<(bool, &str)> {
    let rest = line
        .trim()
        .strip_prefix("--")?
        .trim()
        .strip_prefix("migrate:")?;
    let (kind, dialect) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    match kind {
        "up" => Some((true, dialect.trim())),
        "down" => Some((false, dialect.trim())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_postgres_up_sections_in_place() {
        let text = "-- revision: a\n-- transactional: false\n\n-- migrate:up postgres\nCREATE INDEX CONCURRENTLY i ON t (c);\n\n-- migrate:up sqlite\nCREATE INDEX i ON t (c);\n-- migrate:down\nDROP INDEX i;\n";
        let source = postgres_up(text);
        assert!(!source.transactional);
        assert_eq!(source.text.lines().count(), text.lines().count());
        assert_eq!(
            source.text.lines().nth(4),
            Some("CREATE INDEX CONCURRENTLY i ON t (c);")
        );
        assert!(!source.text.contains("DROP"));
        assert!(!source.text.contains("INDEX i ON"));
    }

    #[test]
    fn a_plain_file_is_linted_whole() {
        let source = postgres_up("DROP TABLE t;\n");
        assert_eq!(source.text, "DROP TABLE t;\n");
        assert!(!source.transactional);
    }
}
