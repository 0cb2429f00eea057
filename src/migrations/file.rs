//! One migration file: a header of `-- key: value` comments, then `-- migrate:up` and
//! `-- migrate:down` sections, optionally per dialect (`-- migrate:up postgres`).
//!
//! The format is plain SQL so that reviewers read the statements exactly as they will run; the
//! header is what Alembic keeps in `revision` / `down_revision` variables. See docs/migrations.md.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::destructive::Rule;
use super::MigrationError;
use crate::db::Dialect;

/// The SQL of one direction: a portable section and/or one section per dialect. A dialect's
/// own section wins over the portable one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Script {
    pub portable: Option<String>,
    pub postgres: Option<String>,
    pub sqlite: Option<String>,
}

impl Script {
    /// The SQL to run on `dialect`, if the file has any for it.
    pub fn for_dialect(&self, dialect: Dialect) -> Option<&str> {
        let own = match dialect {
            Dialect::Postgres => self.postgres.as_deref(),
            Dialect::Sqlite => self.sqlite.as_deref(),
        };
        own.or(self.portable.as_deref())
    }

    fn is_empty(&self) -> bool {
        self.portable.is_none() && self.postgres.is_none() && self.sqlite.is_none()
    }

    fn slot(&mut self, dialect: Option<Dialect>) -> &mut Option<String> {
        match dialect {
            None => &mut self.portable,
            Some(Dialect::Postgres) => &mut self.postgres,
            Some(Dialect::Sqlite) => &mut self.sqlite,
        }
    }
}

/// One revision, as declared by its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub revision: String,
    /// The revisions this one revises: none for a base, two or more for a merge.
    pub revises: Vec<String>,
    pub message: String,
    /// RFC 3339, as written in the file.
    pub created: Option<String>,
    /// False when the SQL must run outside a transaction (`CREATE INDEX CONCURRENTLY`).
    pub transactional: bool,
    pub up: Script,
    /// None when the file has no `-- migrate:down` section: the revision cannot be undone.
    pub down: Option<Script>,
    pub path: PathBuf,
    /// sha256 of the file with line endings normalised to `\n`.
    pub checksum: String,
    /// The destructive rules the revision opts into (`-- destructive: drop-column`), so that
    /// startup mode applies it (see [`super::destructive`]).
    pub destructive: Vec<Rule>,
}

impl Migration {
    /// A merge revision: it joins two or more branches.
    pub fn is_merge(&self) -> bool {
        self.revises.len() > 1
    }
}

/// The checksum recorded when a migration is applied: sha256 of the text with CRLF and CR
/// turned into LF, so a checkout on Windows is not mistaken for an edit.
pub fn checksum(text: &str) -> String {
    let normalised = text.replace("\r\n", "\n").replace('\r', "\n");
    let digest = Sha256::digest(normalised.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

const KEYS: &[&str] = &[
    "revision",
    "revises",
    "message",
    "created",
    "transactional",
    "destructive",
];

/// A usable revision id: letters, digits and `_`, not one of the reserved target words.
pub fn valid_revision_id(id: &str) -> bool {
    !id.is_empty()
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !matches!(id, "head" | "heads" | "base" | "none")
}

/// Parses a migration file's text.
pub fn parse(path: &Path, text: &str) -> Result<Migration, MigrationError> {
    let err = |line: usize, message: String| MigrationError::Parse {
        file: path.to_path_buf(),
        line,
        message,
    };
    let mut revision: Option<String> = None;
    let mut revises: Option<Vec<String>> = None;
    let mut message: Option<String> = None;
    let mut created: Option<String> = None;
    let mut transactional = true;
    let mut destructive: Vec<Rule> = Vec::new();
    let mut up = Script::default();
    let mut down: Option<Script> = None;
    // The section being read: (is_up, dialect), with its lines.
    let mut section: Option<(bool, Option<Dialect>, usize)> = None;
    let mut body: Vec<&str> = Vec::new();
    // Lines of sections PostgreSQL would run that build or drop something CONCURRENTLY.
    let mut concurrent: Vec<usize> = Vec::new();

    let normalised = text.replace("\r\n", "\n").replace('\r', "\n");
    let flush = |section: Option<(bool, Option<Dialect>, usize)>,
                 body: &mut Vec<&str>,
                 up: &mut Script,
                 down: &mut Option<Script>,
                 concurrent: &mut Vec<usize>|
     -> Result<(), MigrationError> {
        let Some((is_up, dialect, line)) = section else {
            return Ok(());
        };
        let script = if is_up {
            up
        } else {
            down.get_or_insert_with(Script::default)
        };
        let slot = script.slot(dialect);
        if slot.is_some() {
            return Err(err(
                line,
                format!(
                    "a second `-- migrate:{}{}` section",
                    if is_up { "up" } else { "down" },
                    dialect
                        .map(|d| format!(" {}", d.as_str()))
                        .unwrap_or_default()
                ),
            ));
        }
        let sql = body.join("\n").trim().to_string();
        if dialect != Some(Dialect::Sqlite) && mentions_concurrently(&sql) {
            concurrent.push(line);
        }
        *slot = Some(sql);
        body.clear();
        Ok(())
    };

    for (i, raw) in normalised.lines().enumerate() {
        let line_no = i + 1;
        let trimmed = raw.trim();
        if let Some(marker) = trimmed
            .strip_prefix("--")
            .map(str::trim)
            .and_then(|c| c.strip_prefix("migrate:"))
        {
            flush(
                section.take(),
                &mut body,
                &mut up,
                &mut down,
                &mut concurrent,
            )?;
            let mut words = marker.split_whitespace();
            let is_up = match words.next() {
                Some("up") => true,
                Some("down") => false,
                other => {
                    return Err(err(
                        line_no,
                        format!(
                            "unknown section `migrate:{}`: expected `-- migrate:up` or `-- migrate:down`, optionally followed by `postgres` or `sqlite`",
                            other.unwrap_or("")
                        ),
                    ))
                }
            };
            let dialect = match words.next() {
                None => None,
                Some("postgres") => Some(Dialect::Postgres),
                Some("sqlite") => Some(Dialect::Sqlite),
                Some(other) => {
                    return Err(err(
                        line_no,
                        format!("unknown dialect `{other}`: expected `postgres` or `sqlite`"),
                    ))
                }
            };
            if let Some(extra) = words.next() {
                return Err(err(
                    line_no,
                    format!("unexpected `{extra}` after the section marker"),
                ));
            }
            section = Some((is_up, dialect, line_no));
            continue;
        }
        if section.is_some() {
            body.push(raw);
            continue;
        }
        // Still in the header.
        if trimmed.is_empty() {
            continue;
        }
        let Some(comment) = trimmed.strip_prefix("--").map(str::trim) else {
            return Err(err(
                line_no,
                "SQL before the first `-- migrate:up` section; the header holds only `-- key: value` comments".to_string(),
            ));
        };
        let Some((key, value)) = comment.split_once(':') else {
            continue; // free text
        };
        let key = key.trim();
        let value = value.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            continue; // free text such as "-- Note: …"
        }
        match key {
            "revision" => {
                if !valid_revision_id(value) {
                    return Err(err(
                        line_no,
                        format!("`{value}` is not a usable revision id: use letters, digits and `_` (and not head, heads, base or none)"),
                    ));
                }
                revision = Some(value.to_string());
            }
            "revises" => {
                let ids: Vec<String> = value
                    .split([',', ' '])
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
                if ids.is_empty() {
                    return Err(err(
                        line_no,
                        "`revises` needs a revision id, or `none` for the first migration"
                            .to_string(),
                    ));
                }
                if ids.len() == 1 && ids[0] == "none" {
                    revises = Some(Vec::new());
                } else {
                    if let Some(bad) = ids.iter().find(|id| !valid_revision_id(id)) {
                        return Err(err(line_no, format!("`{bad}` is not a usable revision id")));
                    }
                    revises = Some(ids);
                }
            }
            "message" => message = Some(value.to_string()),
            "created" => created = Some(value.to_string()),
            "transactional" => {
                transactional = match value {
                    "true" => true,
                    "false" => false,
                    other => {
                        return Err(err(
                            line_no,
                            format!("`transactional` is `true` or `false`, not `{other}`"),
                        ))
                    }
                }
            }
            "destructive" => {
                for name in value
                    .split([',', ' '])
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                {
                    let rule = Rule::parse(name).ok_or_else(|| {
                        err(
                            line_no,
                            format!(
                                "unknown rule `{name}` in `destructive`; the rules are {}",
                                Rule::ALL.map(Rule::name).join(", ")
                            ),
                        )
                    })?;
                    if !destructive.contains(&rule) {
                        destructive.push(rule);
                    }
                }
                if destructive.is_empty() {
                    return Err(err(
                        line_no,
                        format!(
                            "`destructive` names the rules this revision breaks on purpose: one or more of {}",
                            Rule::ALL.map(Rule::name).join(", ")
                        ),
                    ));
                }
            }
            other => {
                return Err(err(
                    line_no,
                    format!(
                        "unknown header key `{other}`; the keys are {}",
                        KEYS.join(", ")
                    ),
                ))
            }
        }
    }
    flush(
        section.take(),
        &mut body,
        &mut up,
        &mut down,
        &mut concurrent,
    )?;

    let last = normalised.lines().count().max(1);
    let revision =
        revision.ok_or_else(|| err(1, "missing `-- revision: ID` header".to_string()))?;
    let revises = revises.ok_or_else(|| {
        err(
            1,
            "missing `-- revises: ID` header (`none` for the first migration)".to_string(),
        )
    })?;
    if revises.contains(&revision) {
        return Err(err(1, format!("revision {revision} revises itself")));
    }
    if up.is_empty() {
        return Err(err(last, "missing `-- migrate:up` section".to_string()));
    }
    if let (true, Some(&line)) = (transactional, concurrent.first()) {
        return Err(err(
            line,
            "this section runs CONCURRENTLY, which PostgreSQL refuses inside a transaction: add `-- transactional: false` to the header".to_string(),
        ));
    }
    Ok(Migration {
        revision,
        revises,
        message: message.unwrap_or_default(),
        created,
        transactional,
        up,
        down,
        path: path.to_path_buf(),
        checksum: checksum(text),
        destructive,
    })
}

/// Does the SQL (outside comments) use `CONCURRENTLY`?
fn mentions_concurrently(sql: &str) -> bool {
    super::statements::split(sql).iter().any(|statement| {
        statement
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .any(|l| l.to_ascii_uppercase().contains("CONCURRENTLY"))
    })
}

/// The text of a new migration file (for `phased db new` and `phased db merge`).
pub fn template(revision: &str, revises: &[String], message: &str, created: &str) -> String {
    let message = message.replace(['\r', '\n'], " ");
    let revises = if revises.is_empty() {
        "none".to_string()
    } else {
        revises.join(", ")
    };
    let (up, down) = if revises.contains(',') {
        (
            "-- A merge point: nothing to run, it joins the branches.\n",
            "-- Nothing to undo.\n",
        )
    } else {
        ("\n", "\n")
    };
    format!(
        "-- revision: {revision}\n-- revises: {revises}\n-- message: {message}\n-- created: {created}\n-- transactional: true\n\n-- migrate:up\n{up}\n-- migrate:down\n{down}"
    )
}

/// The file name of a new migration: `20261125_1200_<revision>_<slug>.sql`.
pub fn file_name(stamp: &str, revision: &str, message: &str) -> String {
    let mut slug = String::new();
    for c in message.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('_') && !slug.is_empty() {
            slug.push('_');
        }
    }
    let mut slug: String = slug.trim_end_matches('_').chars().take(40).collect();
    slug = slug.trim_end_matches('_').to_string();
    if slug.is_empty() {
        format!("{stamp}_{revision}.sql")
    } else {
        format!("{stamp}_{revision}_{slug}.sql")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Migration, MigrationError> {
        parse(Path::new("m.sql"), text)
    }

    #[test]
    fn parses_header_and_sections() {
        let m = p("-- revision: a1\n-- revises: none\n-- message: first one\n-- created: 2026-11-25T12:00:00Z\n\n-- migrate:up\nCREATE TABLE t (id int);\n\n-- migrate:down\nDROP TABLE t;\n").unwrap();
        assert_eq!(m.revision, "a1");
        assert!(m.revises.is_empty());
        assert_eq!(m.message, "first one");
        assert_eq!(m.created.as_deref(), Some("2026-11-25T12:00:00Z"));
        assert!(m.transactional);
        assert_eq!(
            m.up.for_dialect(Dialect::Sqlite),
            Some("CREATE TABLE t (id int);")
        );
        assert_eq!(
            m.down
                .as_ref()
                .and_then(|d| d.for_dialect(Dialect::Postgres)),
            Some("DROP TABLE t;")
        );
    }

    #[test]
    fn dialect_sections_win_over_portable_ones() {
        let m = p("-- revision: b2\n-- revises: a1, c3\n-- message: m\n-- transactional: false\n-- migrate:up\nX;\n-- migrate:up postgres\nY;\n").unwrap();
        assert_eq!(m.revises, vec!["a1", "c3"]);
        assert!(m.is_merge());
        assert!(!m.transactional);
        assert_eq!(m.up.for_dialect(Dialect::Postgres), Some("Y;"));
        assert_eq!(m.up.for_dialect(Dialect::Sqlite), Some("X;"));
        assert!(m.down.is_none());
    }

    #[test]
    fn errors_point_at_the_line() {
        let e = p("-- revision: a1\n-- revises: none\n-- transactionl: false\n-- migrate:up\n")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "m.sql:3: unknown header key `transactionl`; the keys are revision, revises, message, created, transactional, destructive"
        );
        let e = p("-- revision: a1\nSELECT 1;\n").unwrap_err();
        assert!(e.to_string().starts_with("m.sql:2: SQL before"), "{e}");
        let e = p("-- revision: a1\n-- revises: none\n-- migrate:up\n-- migrate:up\n").unwrap_err();
        assert_eq!(e.to_string(), "m.sql:4: a second `-- migrate:up` section");
        let e = p("-- revision: a1\n-- revises: none\n-- migrate:sideways\n").unwrap_err();
        assert!(e.to_string().contains("unknown section"), "{e}");
        let e = p("-- revision: head\n").unwrap_err();
        assert!(e.to_string().contains("not a usable revision id"), "{e}");
        let e = p("-- revises: none\n-- migrate:up\n").unwrap_err();
        assert!(e.to_string().contains("missing `-- revision: ID`"), "{e}");
        let e = p("-- revision: a1\n-- revises: none\n").unwrap_err();
        assert!(e.to_string().contains("missing `-- migrate:up`"), "{e}");
    }

    #[test]
    fn concurrently_needs_transactional_false() {
        let text = "-- revision: a1\n-- revises: none\n-- migrate:up\n-- not CONCURRENTLY in a comment\nSELECT 1;\n-- migrate:up postgres\nCREATE INDEX CONCURRENTLY i ON t (x);\n";
        let e = p(text).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("m.sql:6: this section runs CONCURRENTLY"),
            "{e}"
        );
        let ok = text.replace(
            "-- revises: none\n",
            "-- revises: none\n-- transactional: false\n",
        );
        assert!(!p(&ok).unwrap().transactional);
        // A comment alone does not count.
        assert!(p(
            "-- revision: a1\n-- revises: none\n-- migrate:up\n-- CONCURRENTLY later\nSELECT 1;\n"
        )
        .is_ok());
    }

    #[test]
    fn destructive_names_the_rules_a_revision_opts_into() {
        let m = p("-- revision: a1\n-- revises: none\n-- destructive: drop-column, rename\n-- migrate:up\nSELECT 1;\n").unwrap();
        assert_eq!(m.destructive, vec![Rule::DropColumn, Rule::Rename]);
        assert!(p("-- revision: a1\n-- revises: none\n-- migrate:up\n")
            .unwrap()
            .destructive
            .is_empty());
        let e = p("-- revision: a1\n-- revises: none\n-- destructive: drop-colum\n-- migrate:up\n")
            .unwrap_err();
        assert!(e.to_string().starts_with("m.sql:3: unknown rule `drop-colum` in `destructive`; the rules are drop-table, drop-column"), "{e}");
        let e =
            p("-- revision: a1\n-- revises: none\n-- destructive:\n-- migrate:up\n").unwrap_err();
        assert!(e.to_string().contains("names the rules"), "{e}");
    }

    #[test]
    fn free_text_in_the_header_is_allowed() {
        let m = p("-- Note: reviewed by ops\n-- Adds things.\n-- revision: a1\n-- revises: none\n-- migrate:up\nSELECT 1;\n").unwrap();
        assert_eq!(m.revision, "a1");
    }

    #[test]
    fn checksum_ignores_line_endings_only() {
        let unix = "-- revision: a1\n-- revises: none\n-- migrate:up\nSELECT 1;\n";
        let windows = unix.replace('\n', "\r\n");
        assert_eq!(checksum(unix), checksum(&windows));
        assert_eq!(p(unix).unwrap().checksum, p(&windows).unwrap().checksum);
        assert_ne!(checksum(unix), checksum(&unix.replace("1;", "2;")));
    }

    #[test]
    fn template_round_trips() {
        let text = template(
            "abc123",
            &["p1".into(), "p2".into()],
            "merge\nheads",
            "2026-11-25T12:00:00Z",
        );
        let m = p(&text).unwrap();
        assert_eq!(m.revision, "abc123");
        assert_eq!(m.revises, vec!["p1", "p2"]);
        assert_eq!(m.message, "merge heads");
        assert!(m.down.is_some());
        let first = p(&template("abc124", &[], "first", "x")).unwrap();
        assert!(first.revises.is_empty());
        assert_eq!(first.up.for_dialect(Dialect::Sqlite), Some(""));
    }

    #[test]
    fn file_names_carry_a_slug() {
        assert_eq!(
            file_name("20261125_1200", "a1b2", "Add orders: table & index!"),
            "20261125_1200_a1b2_add_orders_table_index.sql"
        );
        assert_eq!(
            file_name("20261125_1200", "a1b2", "!!"),
            "20261125_1200_a1b2.sql"
        );
    }
}
