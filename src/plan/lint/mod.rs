//! Lints raw SQL — a `sql` step's `up`, a versioned migration, a plain `.sql` file — with
//! squawk's PostgreSQL parser and rules, plus phased's own rules that know the phase a statement
//! runs in. Pure: text in, findings out.
//!
//! One rule per file: `squawk_rules.rs` (squawk's rules, with phased's severity and the phased
//! step kind that does the same thing safely), `destructive_outside_contract.rs` and
//! `table_rewrite.rs`, `concurrently_in_transaction.rs` (phased's own). Suppression lives in `suppress.rs`.

pub mod add_column;
mod concurrently_in_transaction;
pub mod conversion;
mod destructive_outside_contract;
pub mod locks;
pub mod migrations;
mod plan;
mod source;
mod squawk_rules;
mod statement;
mod suppress;
mod table_rewrite;

use squawk_syntax::SourceFile;

pub use plan::{lint_plan, suppressed_in_plan};
pub use source::{postgres_up, LintSource};
pub use statement::Statement;

use super::{PhaseKind, Severity};

/// Where the SQL runs: what phased knows and a plain linter does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Context {
    /// The kind of the phase the SQL runs in; `None` for a plain file (`phased lint` without
    /// `--phase`), where the phase rules stay silent.
    pub phase: Option<PhaseKind>,
    /// Whether the SQL runs inside one transaction (a transactional `sql` step or migration).
    pub transactional: bool,
}

/// One finding in a piece of SQL, located in that SQL's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlFinding {
    /// The rule's name (squawk's name where the rule is squawk's).
    pub rule: &'static str,
    pub severity: Severity,
    /// 1-based line and column of the statement's first token in the linted text.
    pub line: u64,
    pub column: u64,
    /// Byte offset and length of the statement in the linted text.
    pub offset: usize,
    pub len: usize,
    /// The statement, whitespace collapsed and cut to a readable length.
    pub statement: String,
    /// What is wrong, and why it hurts.
    pub message: String,
    /// The safe way, naming the phased step kind that does it.
    pub help: String,
}

/// A rule's name, its default severity and what it is about (for `--format json` and docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleInfo {
    pub name: &'static str,
    pub severity: Severity,
}

/// Every rule phased runs, squawk's first.
pub fn rules() -> Vec<RuleInfo> {
    let mut all: Vec<RuleInfo> = squawk_rules::RULES
        .iter()
        .map(|r| RuleInfo {
            name: r.name,
            severity: r.severity,
        })
        .collect();
    all.push(concurrently_in_transaction::INFO);
    all.push(destructive_outside_contract::INFO);
    all.push(table_rewrite::INFO);
    all
}

/// Whether `name` is a rule phased knows (for `allow:` lists and suppression comments).
pub fn is_rule(name: &str) -> bool {
    rules().iter().any(|r| r.name == name)
}

/// Lints `sql`, run in `ctx`, leaving out the rules named in `allow` and those a comment on the
/// statement suppresses. A text the parser cannot read yields no finding: PostgreSQL itself
/// reports syntax errors, and SQLite-only text is not phased's to judge.
pub fn lint_sql(sql: &str, ctx: &Context, allow: &[String]) -> Vec<SqlFinding> {
    lint(sql, ctx, allow).findings
}

/// A finding someone suppressed on purpose, and how: shown by the dry run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppressed {
    pub finding: SqlFinding,
    /// The comment as written (`phased: allow rule — reason`), or "`allow:` on the step".
    pub by: String,
}

/// What linting a text found: the findings that stand, and the ones suppressed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Linted {
    pub findings: Vec<SqlFinding>,
    pub suppressed: Vec<Suppressed>,
}

/// Lints `sql` like [`lint_sql`], keeping the suppressed findings apart with what suppressed them.
pub fn lint(sql: &str, ctx: &Context, allow: &[String]) -> Linted {
    let parse = SourceFile::parse(sql);
    let statements = statement::statements(sql, &parse, ctx.transactional);
    let mut all = squawk_rules::check(sql, &parse, ctx, &statements);
    for stmt in &statements {
        all.extend(concurrently_in_transaction::check(stmt, ctx));
        all.extend(destructive_outside_contract::check(stmt, &statements, ctx));
        all.extend(table_rewrite::check(stmt, ctx));
    }
    all.sort_by_key(|f| (f.offset, f.rule));
    all.dedup_by(|a, b| a.offset == b.offset && a.rule == b.rule);
    let mut linted = Linted::default();
    for f in all {
        let by = if allow.iter().any(|a| a == f.rule) {
            Some("`allow:` on the step".to_string())
        } else {
            suppress::suppression(sql, f.offset, f.rule)
        };
        match by {
            Some(by) => linted.suppressed.push(Suppressed { finding: f, by }),
            None => linted.findings.push(f),
        }
    }
    linted
}

/// Lints a file's text as `phased lint` and `phased validate` read it — a phased migration
/// keeps its PostgreSQL `up` sections, and runs in one transaction unless its header says
/// otherwise — in `phase`; `transactional` forces one transaction.
pub fn lint_file_text(text: &str, phase: Option<PhaseKind>, transactional: bool) -> Linted {
    let source = postgres_up(text);
    let ctx = Context {
        phase,
        transactional: transactional || source.transactional,
    };
    lint(&source.text, &ctx, &[])
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (u64, u64) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or("");
    let line = before.matches('\n').count() as u64 + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) as u64 + 1;
    (line, column)
}

impl SqlFinding {
    fn new(
        rule: &'static str,
        severity: Severity,
        stmt: &Statement,
        message: impl Into<String>,
        help: impl Into<String>,
    ) -> Self {
        Self {
            rule,
            severity,
            line: stmt.line,
            column: stmt.column,
            offset: stmt.offset,
            len: stmt.len,
            statement: stmt.display(),
            message: message.into(),
            help: help.into(),
        }
    }

    /// `rule: message` followed by the statement, as one headline.
    pub fn headline(&self) -> String {
        format!("{}: {} — `{}`", self.rule, self.message, self.statement)
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// Renders findings as `line:col rule [severity]` with message and help, for snapshots.
    pub fn render(sql: &str, ctx: Context) -> String {
        let mut out = String::new();
        for f in lint_sql(sql, &ctx, &[]) {
            out.push_str(&format!(
                "{}:{} {} [{:?}]\n  statement: {}\n  why: {}\n  safe way: {}\n",
                f.line, f.column, f.rule, f.severity, f.statement, f.message, f.help
            ));
        }
        out
    }

    pub fn rules_hit(sql: &str, ctx: Context) -> Vec<&'static str> {
        lint_sql(sql, &ctx, &[])
            .into_iter()
            .map(|f| f.rule)
            .collect()
    }

    pub const EXPAND: Context = Context {
        phase: Some(PhaseKind::Expand),
        transactional: true,
    };
    pub const CONTRACT: Context = Context {
        phase: Some(PhaseKind::Contract),
        transactional: true,
    };
    pub const SCRIPT: Context = Context {
        phase: Some(PhaseKind::Expand),
        transactional: false,
    };
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    #[test]
    fn line_and_column_count_characters() {
        assert_eq!(line_col("ab\ncé d", 7), (2, 4));
        assert_eq!(line_col("x", 0), (1, 1));
    }

    #[test]
    fn clean_sql_has_no_findings() {
        let sql = "CREATE TABLE t (id bigint PRIMARY KEY, note text);\n\
                   ALTER TABLE accounts ADD COLUMN email_lower text;\n";
        assert!(lint_sql(sql, &EXPAND, &[]).is_empty());
    }

    #[test]
    fn unparsable_text_yields_no_panic() {
        let _ = lint_sql("SELEC 1 FROM;;; $$ unterminated", &EXPAND, &[]);
        let _ = lint_sql("", &EXPAND, &[]);
    }

    #[test]
    fn allow_list_drops_a_rule() {
        let sql = "DROP TABLE old_accounts;";
        assert!(rules_hit(sql, EXPAND).contains(&"destructive-outside-contract"));
        let allowed = lint_sql(sql, &EXPAND, &["destructive-outside-contract".into()]);
        assert!(allowed
            .iter()
            .all(|f| f.rule != "destructive-outside-contract"));
    }

    #[test]
    fn every_rule_name_is_unique() {
        let names: Vec<_> = rules().iter().map(|r| r.name).collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(names.len(), sorted.len());
    }
}
