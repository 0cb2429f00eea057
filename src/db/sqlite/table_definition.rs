//! A table's `CREATE TABLE` text as SQLite stores it in `sqlite_schema`, split into its column
//! and constraint definitions so the copy-table recipe can change one and write the rest back
//! exactly as they were. Pure text work: quotes, brackets and comments are respected.

/// `CREATE TABLE name (` … items … `) tail`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDefinition {
    /// Column definitions and table constraints, as written (trimmed).
    pub items: Vec<String>,
    /// What follows the closing parenthesis (`WITHOUT ROWID`, `STRICT`), as written.
    pub tail: String,
}

/// Why a stored definition cannot be rebuilt.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the definition of table `{table}`: {reason}")]
pub struct DefinitionError {
    pub table: String,
    pub reason: String,
}

/// Byte ranges of the text outside quotes and comments, with the parenthesis depth at each byte.
fn scan(sql: &str, mut visit: impl FnMut(usize, char, usize) -> bool) {
    let bytes: Vec<(usize, char)> = sql.char_indices().collect();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        let (at, c) = bytes[i];
        let next = bytes.get(i + 1).map(|&(_, c)| c);
        match c {
            '\'' | '"' | '`' | '[' => {
                let close = if c == '[' { ']' } else { c };
                i += 1;
                while i < bytes.len() {
                    if bytes[i].1 == close {
                        // A doubled quote is an escaped one (not for brackets).
                        if close != ']' && bytes.get(i + 1).map(|&(_, c)| c) == Some(close) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
            }
            '-' if next == Some('-') => {
                while i < bytes.len() && bytes[i].1 != '\n' {
                    i += 1;
                }
            }
            '/' if next == Some('*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i].1 == '*' && bytes[i + 1].1 == '/') {
                    i += 1;
                }
                i += 1;
            }
            '(' => {
                if !visit(at, c, depth) {
                    return;
                }
                depth += 1;
            }
            ')' => {
                depth = depth.saturating_sub(1);
                if !visit(at, c, depth) {
                    return;
                }
            }
            _ => {
                if !visit(at, c, depth) {
                    return;
                }
            }
        }
        i += 1;
    }
}

impl TableDefinition {
    /// Splits a stored `CREATE TABLE` statement.
    pub fn parse(table: &str, sql: &str) -> Result<Self, DefinitionError> {
        let error = |reason: &str| DefinitionError {
            table: table.to_string(),
            reason: reason.to_string(),
        };
        let mut open = None;
        let mut close = None;
        let mut commas = Vec::new();
        scan(sql, |at, c, depth| {
            match (c, depth) {
                ('(', 0) if open.is_none() => open = Some(at),
                (')', 0) if open.is_some() => {
                    close = Some(at);
                    return false;
                }
                (',', 1) if open.is_some() => commas.push(at),
                _ => {}
            }
            true
        });
        let (Some(open), Some(close)) = (open, close) else {
            return Err(error(
                "no parenthesised column list (is it `CREATE TABLE … AS SELECT`?)",
            ));
        };
        let mut items = Vec::new();
        let mut start = open + 1;
        for comma in commas.into_iter().chain(std::iter::once(close)) {
            let item = sql[start..comma].trim();
            if item.is_empty() {
                return Err(error("an empty column definition"));
            }
            items.push(item.to_string());
            start = comma + 1;
        }
        Ok(Self {
            items,
            tail: sql[close + 1..].trim().to_string(),
        })
    }

    /// `CREATE TABLE <name> (…) tail` with the items as they now are.
    pub fn render(&self, quoted_name: &str) -> String {
        let mut sql = format!(
            "CREATE TABLE {quoted_name} (\n  {}\n)",
            self.items.join(",\n  ")
        );
        if !self.tail.is_empty() {
            sql.push(' ');
            sql.push_str(&self.tail);
        }
        sql
    }

    /// Is the table stored without rowids?
    pub fn without_rowid(&self) -> bool {
        let tail = self.tail.to_ascii_uppercase();
        tail.split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .windows(2)
            .any(|w| w == ["WITHOUT", "ROWID"])
    }

    /// The column definition of `column` (names compare as SQLite does: ASCII case-insensitive).
    pub fn column_mut(&mut self, column: &str) -> Option<&mut String> {
        self.items
            .iter_mut()
            .find(|item| first_name(item).is_some_and(|n| n.eq_ignore_ascii_case(column)))
    }

    /// Removes the table constraint `CONSTRAINT <name> …`; false when there is none.
    pub fn remove_constraint(&mut self, name: &str) -> bool {
        let before = self.items.len();
        self.items
            .retain(|item| !constraint_name(item).is_some_and(|n| n.eq_ignore_ascii_case(name)));
        self.items.len() != before
    }

    /// The table constraints (items that are not columns), as written.
    pub fn table_constraints(&self) -> Vec<&str> {
        self.items
            .iter()
            .filter(|item| first_name(item).is_none())
            .map(|item| skip_comments(item))
            .collect()
    }

    /// The table constraint `CONSTRAINT <name> …` as written (leading comments left out).
    pub fn constraint(&self, name: &str) -> Option<&str> {
        self.items
            .iter()
            .find(|item| constraint_name(item).is_some_and(|n| n.eq_ignore_ascii_case(name)))
            .map(|item| skip_comments(item))
    }

    /// Renames the table constraint `from` to `to` (quoted); false when there is none.
    pub fn rename_constraint(&mut self, from: &str, to: &str) -> bool {
        for item in self.items.iter_mut() {
            if !constraint_name(item).is_some_and(|n| n.eq_ignore_ascii_case(from)) {
                continue;
            }
            let body = skip_comments(item);
            let rest = body[10..].trim_start();
            let Some(end) = name_len(rest) else {
                return false;
            };
            let tail = rest[end..].to_string();
            *item = format!("CONSTRAINT {}{tail}", written_like(rest, to));
            return true;
        }
        false
    }
}

/// The name of a table constraint item `CONSTRAINT <name> …`; None for anything else.
fn constraint_name(item: &str) -> Option<String> {
    let item = skip_comments(item);
    item.get(..10)
        .filter(|k| k.eq_ignore_ascii_case("CONSTRAINT"))
        .and_then(|_| item.get(10..))
        .filter(|rest| rest.starts_with(char::is_whitespace))
        .and_then(|rest| read_name(rest.trim_start()))
}

/// `name` written the way the name `old` starts with was: bare stays bare when `name` can be
/// (so a rename and its rename back leave the stored SQL as it was), quoted otherwise.
pub fn written_like(old: &str, name: &str) -> String {
    let bare = !old.starts_with(['"', '`', '['])
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if bare {
        name.to_string()
    } else {
        crate::ops::name::quote(name)
    }
}

/// The byte length of the name `text` starts with, as [`read_name`] reads it.
pub fn name_len(text: &str) -> Option<usize> {
    let first = text.chars().next()?;
    if let '"' | '`' | '[' = first {
        let close = if first == '[' { ']' } else { first };
        let bytes: Vec<(usize, char)> = text.char_indices().skip(1).collect();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i].1 == close {
                if close != ']' && bytes.get(i + 1).map(|&(_, c)| c) == Some(close) {
                    i += 2;
                    continue;
                }
                return Some(bytes[i].0 + close.len_utf8());
            }
            i += 1;
        }
        return None;
    }
    Some(
        text.find(|c: char| c.is_whitespace() || c == '(')
            .unwrap_or(text.len()),
    )
}

/// Removes the `DEFAULT …` clause from a column definition (outside quotes, comments and
/// parentheses); false when it had none. The value is a parenthesised expression, a quoted
/// literal (`'…'`, `X'…'`), a signed number or a single word (`CURRENT_TIMESTAMP`, `NULL`).
pub fn drop_default(column: &mut String) -> bool {
    let mut at = None;
    let mut prev_is_word = false;
    scan(column, |i, c, depth| {
        let word = c.is_ascii_alphanumeric() || c == '_';
        if depth == 0
            && !prev_is_word
            && column
                .get(i..i + 7)
                .is_some_and(|w| w.eq_ignore_ascii_case("DEFAULT"))
            && !column[i + 7..]
                .chars()
                .next()
                .is_some_and(|n| n.is_ascii_alphanumeric() || n == '_')
        {
            at = Some(i);
            return false;
        }
        prev_is_word = word;
        true
    });
    let Some(start) = at else {
        return false;
    };
    let value = column[start + 7..].trim_start();
    let value_at = column.len() - value.len();
    let mut chars = value.char_indices().peekable();
    let end = match chars.peek().map(|&(_, c)| c) {
        Some('(') => {
            let mut depth = 0usize;
            let mut end = value.len();
            let mut quote: Option<char> = None;
            for (i, c) in value.char_indices() {
                match (quote, c) {
                    (Some(q), c) if c == q => quote = None,
                    (Some(_), _) => {}
                    (None, '\'' | '"') => quote = Some(c),
                    (None, '(') => depth += 1,
                    (None, ')') => {
                        depth -= 1;
                        if depth == 0 {
                            end = i + 1;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            end
        }
        Some(first) => {
            let literal_start = match first {
                '\'' => Some(0),
                'x' | 'X' if value[1..].starts_with('\'') => Some(1),
                _ => None,
            };
            match literal_start {
                Some(open) => {
                    let body: Vec<(usize, char)> = value.char_indices().skip(open + 1).collect();
                    let mut i = 0;
                    let mut end = value.len();
                    while i < body.len() {
                        if body[i].1 == '\'' {
                            if body.get(i + 1).map(|&(_, c)| c) == Some('\'') {
                                i += 2;
                                continue;
                            }
                            end = body[i].0 + 1;
                            break;
                        }
                        i += 1;
                    }
                    end
                }
                None => {
                    let signed = usize::from(matches!(first, '+' | '-'));
                    value[signed..]
                        .find(|c: char| c.is_whitespace() || c == ',' || c == ')')
                        .map(|e| e + signed)
                        .unwrap_or(value.len())
                }
            }
        }
        None => 0,
    };
    let cut_from = column[..start].trim_end().len();
    column.replace_range(cut_from..value_at + end, "");
    true
}

/// Removes every `NOT NULL` (with an `ON CONFLICT <action>` after it) from a column definition,
/// outside quotes, comments and parentheses; false when it had none.
pub fn drop_not_null(column: &mut String) -> bool {
    // The words outside quotes, comments and parentheses, with their byte ranges.
    let mut words: Vec<(usize, usize)> = Vec::new();
    let mut current: Option<usize> = None;
    let mut end = 0;
    scan(column, |at, c, depth| {
        let word_char = depth == 0 && (c.is_ascii_alphanumeric() || c == '_');
        match (word_char, current) {
            (true, None) => current = Some(at),
            (false, Some(start)) => {
                words.push((start, end));
                current = None;
            }
            _ => {}
        }
        end = at + c.len_utf8();
        true
    });
    if let Some(start) = current {
        words.push((start, end));
    }
    let word = |i: usize| -> &str { words.get(i).map(|&(s, e)| &column[s..e]).unwrap_or("") };
    let mut cuts = Vec::new();
    let mut i = 0;
    while i + 1 < words.len() {
        if word(i).eq_ignore_ascii_case("NOT") && word(i + 1).eq_ignore_ascii_case("NULL") {
            let mut last = i + 1;
            if word(i + 2).eq_ignore_ascii_case("ON")
                && word(i + 3).eq_ignore_ascii_case("CONFLICT")
            {
                last = i + 4;
            }
            cuts.push((words[i].0, words[last.min(words.len() - 1)].1));
            i = last + 1;
        } else {
            i += 1;
        }
    }
    for &(start, end) in cuts.iter().rev() {
        // Take the whitespace before the words with them.
        let start = column[..start].trim_end().len();
        column.replace_range(start..end, "");
    }
    !cuts.is_empty()
}

/// The text after any leading comments.
fn skip_comments(item: &str) -> &str {
    let mut item = item.trim_start();
    loop {
        if let Some(rest) = item.strip_prefix("--") {
            item = rest
                .split_once('\n')
                .map(|(_, r)| r)
                .unwrap_or("")
                .trim_start();
        } else if let Some(rest) = item.strip_prefix("/*") {
            item = rest
                .split_once("*/")
                .map(|(_, r)| r)
                .unwrap_or("")
                .trim_start();
        } else {
            return item;
        }
    }
}

/// The name `text` starts with: quoted (`"…"`, `` `…` ``, `[…]`) or a bare word.
fn read_name(text: &str) -> Option<String> {
    let first = text.chars().next()?;
    if let '"' | '`' | '[' = first {
        let close = if first == '[' { ']' } else { first };
        let mut name = String::new();
        let mut chars = text[1..].chars().peekable();
        while let Some(c) = chars.next() {
            if c == close {
                if close != ']' && chars.peek() == Some(&close) {
                    chars.next();
                    name.push(c);
                    continue;
                }
                return Some(name);
            }
            name.push(c);
        }
        return None;
    }
    Some(
        text.split(|c: char| c.is_whitespace() || c == '(')
            .next()
            .unwrap_or("")
            .to_string(),
    )
}

/// The column name an item starts with; None for table constraints.
fn first_name(item: &str) -> Option<String> {
    let item = skip_comments(item);
    let quoted = matches!(item.chars().next()?, '"' | '`' | '[');
    let name = read_name(item)?;
    // A quoted name is a column, whatever it spells.
    let keyword = !quoted
        && ["CONSTRAINT", "PRIMARY", "UNIQUE", "CHECK", "FOREIGN"]
            .iter()
            .any(|k| name.eq_ignore_ascii_case(k));
    (!keyword).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_columns_and_constraints_respecting_quotes_and_parentheses() {
        let sql = "CREATE TABLE \"we(ird\" (id INTEGER PRIMARY KEY, \"a,b\" TEXT DEFAULT 'x,)', \
                   n NUMERIC(10, 2) CHECK (n > 0), -- a comment, with (parens\n \
                   CONSTRAINT u UNIQUE (\"a,b\", n)) WITHOUT ROWID";
        let def = TableDefinition::parse("we(ird", sql).expect("parses");
        assert_eq!(
            def.items,
            vec![
                "id INTEGER PRIMARY KEY",
                "\"a,b\" TEXT DEFAULT 'x,)'",
                "n NUMERIC(10, 2) CHECK (n > 0)",
                "-- a comment, with (parens\n CONSTRAINT u UNIQUE (\"a,b\", n)",
            ]
        );
        assert_eq!(def.tail, "WITHOUT ROWID");
        assert!(def.without_rowid());
        let mut def = def;
        assert_eq!(
            def.column_mut("a,b").map(|c| c.clone()),
            Some("\"a,b\" TEXT DEFAULT 'x,)'".into())
        );
        assert_eq!(
            def.column_mut("u"),
            None,
            "a commented constraint is not a column"
        );
    }

    #[test]
    fn finds_columns_by_name_not_constraints() {
        let mut def = TableDefinition::parse(
            "t",
            "CREATE TABLE t (\"Email\" TEXT, check (length(email) > 0), [score] INT, \"check\" INT)",
        )
        .expect("parses");
        assert_eq!(
            def.column_mut("email").map(|c| c.clone()),
            Some("\"Email\" TEXT".into())
        );
        assert_eq!(
            def.column_mut("score").map(|c| c.clone()),
            Some("[score] INT".into())
        );
        assert_eq!(
            def.column_mut("check").map(|c| c.clone()),
            Some("\"check\" INT".into()),
            "a quoted name is a column, even when it spells a keyword"
        );
        assert!(!def.without_rowid());
        assert_eq!(
            def.render("\"t2\""),
            "CREATE TABLE \"t2\" (\n  \"Email\" TEXT,\n  check (length(email) > 0),\n  [score] INT,\n  \"check\" INT\n)"
        );
    }

    #[test]
    fn rejects_create_table_as_select() {
        assert!(TableDefinition::parse("t", "CREATE TABLE t AS SELECT 1").is_err());
    }

    #[test]
    fn removes_a_named_constraint_only() {
        let mut def = TableDefinition::parse(
            "t",
            "CREATE TABLE t (id INTEGER PRIMARY KEY, c TEXT, CONSTRAINT \"t_c\" CHECK (c <> ''), \
             /* x */ constraint t_fk FOREIGN KEY (c) REFERENCES p (c), CONSTRAINT other CHECK (1))",
        )
        .unwrap();
        assert!(def.remove_constraint("T_C"));
        assert!(def.remove_constraint("t_fk"));
        assert!(!def.remove_constraint("t_fk"), "already gone");
        assert_eq!(
            def.items,
            [
                "id INTEGER PRIMARY KEY",
                "c TEXT",
                "CONSTRAINT other CHECK (1)"
            ]
        );
    }

    #[test]
    fn drops_not_null_outside_quotes_and_parentheses() {
        let mut column = "\"c\" TEXT NOT NULL DEFAULT 'NOT NULL' CHECK (c IS NOT NULL)".to_string();
        assert!(drop_not_null(&mut column));
        assert_eq!(
            column,
            "\"c\" TEXT DEFAULT 'NOT NULL' CHECK (c IS NOT NULL)"
        );
        assert!(!drop_not_null(&mut column), "nothing left to drop");
        let mut column = "c integer not null on conflict replace unique".to_string();
        assert!(drop_not_null(&mut column));
        assert_eq!(column, "c integer unique");
    }

    #[test]
    fn drops_every_form_of_default() {
        for (written, left) in [
            ("status text DEFAULT 'old' NOT NULL", "status text NOT NULL"),
            (
                "s text default 'it''s, (x)' check (s <> '')",
                "s text check (s <> '')",
            ),
            ("n integer DEFAULT -1", "n integer"),
            (
                "n integer DEFAULT (abs(-1) + 2) NOT NULL",
                "n integer NOT NULL",
            ),
            ("t text DEFAULT CURRENT_TIMESTAMP", "t text"),
            ("b blob DEFAULT x'00ff' UNIQUE", "b blob UNIQUE"),
            ("\"default\" text DEFAULT NULL", "\"default\" text"),
        ] {
            let mut column = written.to_string();
            assert!(drop_default(&mut column), "{written}");
            assert_eq!(column, left, "{written}");
        }
        let mut plain = "c text NOT NULL".to_string();
        assert!(!drop_default(&mut plain));
        let mut named = "defaults text".to_string();
        assert!(!drop_default(&mut named));
    }

    #[test]
    fn finds_renames_and_lists_constraints() {
        let sql = "CREATE TABLE t (id INTEGER PRIMARY KEY, q INTEGER, \
                   CONSTRAINT q_pos CHECK (q > 0), CONSTRAINT \"q u\" UNIQUE (q))";
        let mut def = TableDefinition::parse("t", sql).expect("parses");
        assert_eq!(
            def.constraint("Q_POS"),
            Some("CONSTRAINT q_pos CHECK (q > 0)")
        );
        assert_eq!(def.table_constraints().len(), 2);
        assert!(def.rename_constraint("q_pos", "q_positive"));
        assert_eq!(
            def.constraint("q_positive"),
            Some("CONSTRAINT q_positive CHECK (q > 0)")
        );
        assert!(def.rename_constraint("q u", "q_unique"));
        assert_eq!(
            def.constraint("q_unique"),
            Some("CONSTRAINT \"q_unique\" UNIQUE (q)")
        );
        assert!(!def.rename_constraint("absent", "x"));
    }
}
