//! The startup safety rule: which statements of a revision phased calls destructive, so that an
//! application migrating itself on boot never drops a column because a file was merged too
//! early. A revision opts in with a header line naming the rules it breaks on purpose
//! (`-- destructive: drop-column`).
//!
//! This is a statement-level check, not a SQL parser: each statement (split like
//! non-transactional scripts are, quotes, `$tag$` bodies and comments skipped) is read as a list
//! of words. It recognises what the plan model already treats as destructive (`drop_table`,
//! `drop_column`, `drop_index`, `set_not_null`, …) plus renames, type changes and `TRUNCATE`.
//! It does not look into function bodies or strings run with `EXECUTE`; the bodies of `DO`
//! blocks are read. Pure.

use std::collections::BTreeSet;
use std::fmt;

/// A kind of destructive statement, named as the opt-in header writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// `DROP TABLE`: the data is gone, old code fails.
    DropTable,
    /// `ALTER TABLE … DROP [COLUMN]`.
    DropColumn,
    /// `DROP INDEX`, unless the same revision creates the index again (a rebuild).
    DropIndex,
    /// `DROP` of any other object: view, schema, type, trigger, function, sequence, …
    /// (a view, trigger or function the same revision creates again is a re-creation).
    DropObject,
    /// `TRUNCATE`.
    Truncate,
    /// `ALTER TABLE|VIEW … RENAME …` (tables, columns): old code still uses the old name.
    Rename,
    /// `ALTER COLUMN … TYPE` / `SET DATA TYPE`: a rewrite under ACCESS EXCLUSIVE, and old code
    /// may write values the new type refuses.
    ChangeType,
    /// `ALTER COLUMN … SET NOT NULL` without a `CHECK (col IS NOT NULL)` validated earlier in
    /// the same revision: a full scan under ACCESS EXCLUSIVE, and old code writing NULLs fails.
    SetNotNull,
}

impl Rule {
    pub const ALL: [Rule; 8] = [
        Rule::DropTable,
        Rule::DropColumn,
        Rule::DropIndex,
        Rule::DropObject,
        Rule::Truncate,
        Rule::Rename,
        Rule::ChangeType,
        Rule::SetNotNull,
    ];

    /// The name used in the `-- destructive:` header and in errors.
    pub fn name(self) -> &'static str {
        match self {
            Rule::DropTable => "drop-table",
            Rule::DropColumn => "drop-column",
            Rule::DropIndex => "drop-index",
            Rule::DropObject => "drop-object",
            Rule::Truncate => "truncate",
            Rule::Rename => "rename",
            Rule::ChangeType => "change-type",
            Rule::SetNotNull => "set-not-null",
        }
    }

    pub fn parse(name: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.name() == name)
    }

    /// Why it is refused at startup.
    pub fn why(self) -> &'static str {
        match self {
            Rule::DropTable => "it deletes a table and its data, and the application version still running uses it",
            Rule::DropColumn => "it deletes a column and its data, and the application version still running may read or write it",
            Rule::DropIndex => "queries of the running application may depend on the index",
            Rule::DropObject => "the application version still running may use what it removes",
            Rule::Truncate => "it deletes every row of the table",
            Rule::Rename => "the application version still running uses the old name",
            Rule::ChangeType => "it rewrites the table under an ACCESS EXCLUSIVE lock, and the running application may write values the new type refuses",
            Rule::SetNotNull => "without a validated CHECK (column IS NOT NULL) it scans the table under an ACCESS EXCLUSIVE lock, and the running application may still write NULLs",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One destructive statement found in a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub rule: Rule,
    /// The statement, comments removed and whitespace collapsed.
    pub statement: String,
}

/// The destructive statements of a script, in order.
pub fn check(sql: &str) -> Vec<Finding> {
    check_script(sql, false)
}

/// `block`: a `DO` block's PL/pgSQL body, whose statements may follow `BEGIN`, `THEN`, `LOOP`…
/// in the same piece: each is read from its first `DROP`, `TRUNCATE` or `ALTER`.
fn check_script(sql: &str, block: bool) -> Vec<Finding> {
    let statements: Vec<Vec<Token>> = super::statements::split(sql)
        .iter()
        .map(|s| {
            let mut t = tokens(s);
            if block {
                let first = t
                    .iter()
                    .position(|t| {
                        matches!(t, Token::Word(w) if ["DROP", "TRUNCATE", "ALTER", "CREATE"]
                            .iter()
                            .any(|k| w.eq_ignore_ascii_case(k)))
                    })
                    .unwrap_or(t.len());
                t.drain(..first);
            }
            t
        })
        .collect();
    let mut recreated = BTreeSet::new();
    for tokens in &statements {
        if let Some(name) = created_name(tokens) {
            recreated.insert(name);
        }
    }
    let mut validated = Vec::new();
    let mut out = Vec::new();
    for tokens in &statements {
        check_statement(tokens, &recreated, &mut validated, &mut out);
    }
    out
}

fn check_statement(
    tokens: &[Token],
    recreated: &BTreeSet<(String, String)>,
    validated: &mut Vec<ValidatedCheck>,
    out: &mut Vec<Finding>,
) {
    let found = |rule| Finding {
        rule,
        statement: shown(tokens),
    };
    match words_upper(tokens, 2).as_slice() {
        [first, ..] if first == "DO" => {
            for token in tokens {
                if let Token::Body(body) = token {
                    out.extend(check_script(body, true));
                }
            }
        }
        [first, ..] if first == "TRUNCATE" => out.push(found(Rule::Truncate)),
        [first, second] if first == "DROP" => {
            let object = second.as_str();
            let rule = match object {
                "TABLE" => Rule::DropTable,
                "INDEX" => Rule::DropIndex,
                _ => Rule::DropObject,
            };
            let kind = match object {
                "INDEX" | "VIEW" | "TRIGGER" | "FUNCTION" => Some(object.to_string()),
                _ => None,
            };
            let again = kind.is_some_and(|kind| {
                dropped_names(tokens)
                    .into_iter()
                    .all(|name| recreated.contains(&(kind.clone(), name)))
            });
            if !again {
                out.push(found(rule));
            }
        }
        [first, second] if first == "ALTER" && (second == "TABLE" || second == "VIEW") => {
            alter_table(tokens, validated, out)
        }
        [first, second]
            if first == "ALTER" && second == "MATERIALIZED" && has_word(tokens, "RENAME") =>
        {
            out.push(found(Rule::Rename))
        }
        _ => {}
    }
}

/// A `CHECK (column IS NOT NULL)` constraint on a table, and whether it is validated yet.
struct ValidatedCheck {
    table: String,
    constraint: String,
    column: String,
    valid: bool,
}

/// `ALTER TABLE [IF EXISTS] [ONLY] name [*] action [, action…]`.
fn alter_table(tokens: &[Token], checks: &mut Vec<ValidatedCheck>, out: &mut Vec<Finding>) {
    let mut i = 2;
    while word_at(tokens, i).is_some_and(|w| w == "IF" || w == "EXISTS" || w == "ONLY") {
        i += 1;
    }
    let Some(table) = name_at(tokens, i) else {
        return;
    };
    i += 1;
    let found = |rule| Finding {
        rule,
        statement: shown(tokens),
    };
    if matches!(tokens.get(i), Some(Token::Other(star)) if star == "*") {
        i += 1; // `ALTER TABLE t *`: t and its descendants
    }
    for action in split_actions(&tokens[i.min(tokens.len())..]) {
        let first = word_at(action, 0);
        let on_constraint = word_at(action, 1).as_deref() == Some("CONSTRAINT");
        match first.as_deref() {
            Some("DROP") if !on_constraint => out.push(found(Rule::DropColumn)),
            Some("RENAME") if !on_constraint => out.push(found(Rule::Rename)),
            Some("ALTER") => {
                let mut j = 1;
                if word_at(action, j).as_deref() == Some("COLUMN") {
                    j += 1;
                }
                let column = name_at(action, j).unwrap_or_default();
                let rest: Vec<String> = (j + 1..action.len())
                    .filter_map(|k| word_at(action, k))
                    .collect();
                let starts = |words: &[&str]| {
                    rest.len() >= words.len() && rest.iter().zip(words).all(|(a, b)| a == b)
                };
                if starts(&["TYPE"]) || starts(&["SET", "DATA", "TYPE"]) {
                    out.push(found(Rule::ChangeType));
                } else if starts(&["SET", "NOT", "NULL"]) {
                    let covered = checks
                        .iter()
                        .any(|c| c.valid && c.table == table && c.column == column);
                    if !covered {
                        out.push(found(Rule::SetNotNull));
                    }
                }
            }
            Some("ADD") => {
                if let Some(check) = not_null_check(&table, action) {
                    checks.push(check);
                }
            }
            Some("VALIDATE") => {
                if let Some(name) = name_at(action, 2) {
                    for c in checks.iter_mut() {
                        if c.table == table && c.constraint == name {
                            c.valid = true;
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// `ADD CONSTRAINT name CHECK (column IS NOT NULL) [NOT VALID]`.
fn not_null_check(table: &str, action: &[Token]) -> Option<ValidatedCheck> {
    if word_at(action, 1).as_deref() != Some("CONSTRAINT")
        || word_at(action, 3).as_deref() != Some("CHECK")
    {
        return None;
    }
    let constraint = name_at(action, 2)?;
    let inner: Vec<&Token> = action[4..]
        .iter()
        .filter(|t| !matches!(t, Token::Open | Token::Close))
        .collect();
    let column = match inner.first()? {
        Token::Word(w) => w.to_lowercase(),
        Token::Quoted(q) => q.clone(),
        _ => return None,
    };
    let words: Vec<String> = inner[1..]
        .iter()
        .filter_map(|t| match t {
            Token::Word(w) => Some(w.to_uppercase()),
            _ => None,
        })
        .collect();
    if words.len() < 3 || words[..3] != ["IS", "NOT", "NULL"] {
        return None;
    }
    let not_valid = words[3..].windows(2).any(|w| w == ["NOT", "VALID"]);
    Some(ValidatedCheck {
        table: table.to_string(),
        constraint,
        column,
        valid: !not_valid,
    })
}

/// The actions of an `ALTER TABLE`, split at top-level commas.
fn split_actions(tokens: &[Token]) -> Vec<&[Token]> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, t) in tokens.iter().enumerate() {
        match t {
            Token::Open => depth += 1,
            Token::Close => depth = depth.saturating_sub(1),
            Token::Comma if depth == 0 => {
                out.push(&tokens[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&tokens[start..]);
    out
}

/// `(kind, name)` of what a `CREATE [UNIQUE] INDEX|VIEW|TRIGGER|FUNCTION …` statement creates.
fn created_name(tokens: &[Token]) -> Option<(String, String)> {
    if word_at(tokens, 0).as_deref() != Some("CREATE") {
        return None;
    }
    let mut i = 1;
    while word_at(tokens, i).is_some_and(|w| {
        matches!(
            w.as_str(),
            "UNIQUE" | "OR" | "REPLACE" | "TEMP" | "TEMPORARY"
        )
    }) {
        i += 1;
    }
    let kind = word_at(tokens, i)?;
    if !matches!(kind.as_str(), "INDEX" | "VIEW" | "TRIGGER" | "FUNCTION") {
        return None;
    }
    i += 1;
    while word_at(tokens, i)
        .is_some_and(|w| matches!(w.as_str(), "CONCURRENTLY" | "IF" | "NOT" | "EXISTS"))
    {
        i += 1;
    }
    Some((kind, name_at(tokens, i)?))
}

/// The names a `DROP <kind> [CONCURRENTLY] [IF EXISTS] a, b …` statement drops.
fn dropped_names(tokens: &[Token]) -> Vec<String> {
    let mut i = 2;
    while word_at(tokens, i).is_some_and(|w| matches!(w.as_str(), "CONCURRENTLY" | "IF" | "EXISTS"))
    {
        i += 1;
    }
    let mut names = Vec::new();
    let mut depth = 0usize;
    let mut expect_name = true;
    while i < tokens.len() {
        match &tokens[i] {
            Token::Open => depth += 1,
            Token::Close => depth = depth.saturating_sub(1),
            Token::Comma if depth == 0 => expect_name = true,
            _ if depth == 0 && expect_name => {
                if let Some(name) = name_at(tokens, i) {
                    names.push(name);
                }
                expect_name = false;
            }
            _ => {}
        }
        i += 1;
    }
    names
}

/// A piece of a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// A keyword or unquoted identifier (possibly dotted: `app.orders`), as written.
    Word(String),
    /// A `"quoted"` identifier, without its quotes.
    Quoted(String),
    /// The body of a `$tag$ … $tag$` string.
    Body(String),
    Open,
    Close,
    Comma,
    /// Anything else: a string literal, a number, an operator.
    Other(String),
}

fn tokens(sql: &str) -> Vec<Token> {
    let chars: Vec<char> = sql.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '-' && chars.get(i + 1) == Some(&'-') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && chars.get(i + 1) == Some(&'*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == '\'' || c == '"' {
            let start = i;
            i += 1;
            let mut text = String::new();
            while i < chars.len() {
                if chars[i] == c {
                    if chars.get(i + 1) == Some(&c) {
                        text.push(c);
                        i += 2;
                        continue;
                    }
                    break;
                }
                text.push(chars[i]);
                i += 1;
            }
            i += 1;
            out.push(if c == '"' {
                Token::Quoted(text)
            } else {
                Token::Other(chars[start..i.min(chars.len())].iter().collect())
            });
        } else if c == '$' {
            // A dollar-quote tag: $$ or $name$ (a name does not start with a digit).
            let mut end = i + 1;
            while end < chars.len() && (chars[end].is_alphanumeric() || chars[end] == '_') {
                end += 1;
            }
            let is_tag = end < chars.len()
                && chars[end] == '$'
                && !chars.get(i + 1).is_some_and(|d| d.is_ascii_digit());
            if is_tag {
                let tag: String = chars[i..=end].iter().collect();
                let rest: String = chars[end + 1..].iter().collect();
                match rest.find(&tag) {
                    Some(close) => {
                        out.push(Token::Body(rest[..close].to_string()));
                        i = end + 1 + rest[..close].chars().count() + tag.chars().count();
                    }
                    None => {
                        out.push(Token::Body(rest));
                        i = chars.len();
                    }
                }
            } else {
                out.push(Token::Other("$".to_string()));
                i += 1;
            }
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '.')
            {
                i += 1;
            }
            out.push(Token::Word(chars[start..i].iter().collect()));
        } else {
            out.push(match c {
                '(' => Token::Open,
                ')' => Token::Close,
                ',' => Token::Comma,
                other => Token::Other(other.to_string()),
            });
            i += 1;
        }
    }
    out
}

/// The first `n` tokens, upper-cased, while they are words.
fn words_upper(tokens: &[Token], n: usize) -> Vec<String> {
    tokens
        .iter()
        .take(n)
        .map_while(|t| match t {
            Token::Word(w) => Some(w.to_uppercase()),
            _ => None,
        })
        .collect()
}

fn word_at(tokens: &[Token], i: usize) -> Option<String> {
    match tokens.get(i)? {
        Token::Word(w) => Some(w.to_uppercase()),
        _ => None,
    }
}

fn has_word(tokens: &[Token], word: &str) -> bool {
    tokens
        .iter()
        .any(|t| matches!(t, Token::Word(w) if w.eq_ignore_ascii_case(word)))
}

/// A name as PostgreSQL compares it: unquoted words fold to lower case.
fn name_at(tokens: &[Token], i: usize) -> Option<String> {
    match tokens.get(i)? {
        Token::Word(w) => Some(w.to_lowercase()),
        Token::Quoted(q) => Some(q.clone()),
        _ => None,
    }
}

/// The statement as shown in an error: one line, comments gone, cut when long.
fn shown(tokens: &[Token]) -> String {
    let mut out = String::new();
    for t in tokens {
        let piece = match t {
            Token::Word(w) => w.clone(),
            Token::Quoted(q) => format!("\"{}\"", q.replace('"', "\"\"")),
            Token::Body(_) => "$$…$$".to_string(),
            Token::Open => "(".to_string(),
            Token::Close => ")".to_string(),
            Token::Comma => ",".to_string(),
            Token::Other(o) => o.clone(),
        };
        let glue =
            !out.is_empty() && !out.ends_with('(') && !matches!(t, Token::Close | Token::Comma);
        if glue {
            out.push(' ');
        }
        out.push_str(&piece);
    }
    const MAX: usize = 200;
    if out.chars().count() > MAX {
        out = out.chars().take(MAX).collect::<String>() + "…";
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(sql: &str) -> Vec<&'static str> {
        check(sql).iter().map(|f| f.rule.name()).collect()
    }

    #[test]
    fn additive_statements_are_not_destructive() {
        assert!(rules(
            "CREATE TABLE t (id bigint PRIMARY KEY, note text NOT NULL DEFAULT '');
             ALTER TABLE t ADD COLUMN email text;
             CREATE INDEX CONCURRENTLY t_email_idx ON t (email);
             ALTER TABLE t ADD CONSTRAINT t_email_check CHECK (email <> '') NOT VALID;
             ALTER TABLE t VALIDATE CONSTRAINT t_email_check;
             ALTER TABLE t ALTER COLUMN note DROP NOT NULL, ALTER COLUMN note SET DEFAULT 'x';
             ALTER TABLE t DROP CONSTRAINT t_email_check;
             UPDATE t SET note = 'DROP TABLE t';
             INSERT INTO t (id, note) VALUES (1, 'ALTER TABLE t DROP COLUMN x');"
        )
        .is_empty());
    }

    #[test]
    fn each_rule_is_recognised() {
        assert_eq!(rules("DROP TABLE IF EXISTS orders"), ["drop-table"]);
        assert_eq!(
            rules("alter table orders drop column note"),
            ["drop-column"]
        );
        assert_eq!(rules("ALTER TABLE orders DROP note"), ["drop-column"]);
        assert_eq!(
            rules("ALTER TABLE ONLY app.orders DROP COLUMN IF EXISTS note CASCADE"),
            ["drop-column"]
        );
        assert_eq!(rules("DROP INDEX CONCURRENTLY orders_idx"), ["drop-index"]);
        assert_eq!(
            rules("DROP VIEW v; DROP SCHEMA s CASCADE; DROP TYPE e"),
            ["drop-object"; 3]
        );
        assert_eq!(rules("TRUNCATE orders"), ["truncate"]);
        assert_eq!(rules("ALTER TABLE customers RENAME TO clients"), ["rename"]);
        assert_eq!(
            rules("ALTER TABLE customers RENAME COLUMN email TO email_address"),
            ["rename"]
        );
        assert_eq!(rules("ALTER VIEW v RENAME TO w"), ["rename"]);
        assert_eq!(
            rules("ALTER TABLE orders ALTER COLUMN total TYPE bigint"),
            ["change-type"]
        );
        assert_eq!(
            rules("ALTER TABLE orders ALTER total SET DATA TYPE bigint USING total::bigint"),
            ["change-type"]
        );
        assert_eq!(
            rules("ALTER TABLE orders ALTER COLUMN note SET NOT NULL"),
            ["set-not-null"]
        );
        assert_eq!(
            rules("ALTER TABLE t ADD COLUMN a int, DROP COLUMN b, ALTER COLUMN c TYPE text"),
            ["drop-column", "change-type"]
        );
    }

    #[test]
    fn comments_and_quoted_names_are_read_as_written() {
        assert_eq!(
            rules("-- DROP TABLE x\n/* DROP TABLE y */ SELECT 1"),
            Vec::<&str>::new()
        );
        assert_eq!(
            rules("ALTER TABLE \"Orders\" DROP COLUMN \"Note\""),
            ["drop-column"]
        );
        let f = check("-- why\nALTER TABLE orders\n    DROP COLUMN note;");
        assert_eq!(f[0].statement, "ALTER TABLE orders DROP COLUMN note");
        // A column called `type` is not a type change.
        assert!(rules("ALTER TABLE t ALTER COLUMN type DROP DEFAULT").is_empty());
        assert_eq!(
            rules("ALTER TABLE t ALTER COLUMN type SET NOT NULL"),
            ["set-not-null"]
        );
    }

    #[test]
    fn a_rebuilt_index_or_recreated_view_is_not_a_drop() {
        // The shipped history's pattern: a failed concurrent build leaves an INVALID index.
        assert!(rules(
            "DROP INDEX CONCURRENTLY IF EXISTS orders_customer_id_idx;
             CREATE INDEX CONCURRENTLY orders_customer_id_idx ON orders (customer_id);"
        )
        .is_empty());
        assert!(rules("DROP VIEW IF EXISTS v; CREATE OR REPLACE VIEW v AS SELECT 1").is_empty());
        assert_eq!(
            rules("DROP INDEX a_idx, b_idx; CREATE INDEX a_idx ON t (a)"),
            ["drop-index"]
        );
        // A table dropped and created again has lost its rows.
        assert_eq!(
            rules("DROP TABLE t; CREATE TABLE t (id int)"),
            ["drop-table"]
        );
    }

    #[test]
    fn set_not_null_after_a_validated_check_in_the_same_revision_is_allowed() {
        let safe =
            "ALTER TABLE orders ADD CONSTRAINT orders_note_nn CHECK (note IS NOT NULL) NOT VALID;
                    ALTER TABLE orders VALIDATE CONSTRAINT orders_note_nn;
                    ALTER TABLE orders ALTER COLUMN note SET NOT NULL;";
        assert!(rules(safe).is_empty());
        let unvalidated =
            "ALTER TABLE orders ADD CONSTRAINT orders_note_nn CHECK (note IS NOT NULL) NOT VALID;
                           ALTER TABLE orders ALTER COLUMN note SET NOT NULL;";
        assert_eq!(rules(unvalidated), ["set-not-null"]);
        let other_column = "ALTER TABLE orders ADD CONSTRAINT c CHECK (total IS NOT NULL);
                            ALTER TABLE orders ALTER COLUMN note SET NOT NULL;";
        assert_eq!(rules(other_column), ["set-not-null"]);
    }

    #[test]
    fn do_blocks_are_read() {
        assert_eq!(
            rules("DO $$ BEGIN IF true THEN DROP TABLE old_orders; END IF; END $$;"),
            ["drop-table"]
        );
        // A function body is not run by the migration.
        assert!(rules(
            "CREATE FUNCTION f() RETURNS void AS $body$ DELETE FROM t; $body$ LANGUAGE sql"
        )
        .is_empty());
    }

    #[test]
    fn rules_round_trip_by_name() {
        for rule in Rule::ALL {
            assert_eq!(Rule::parse(rule.name()), Some(rule));
        }
        assert_eq!(Rule::parse("drop"), None);
    }
}
