//! Suppressing a finding with a comment on its statement: squawk's `-- squawk-ignore rule`
//! (and `-- squawk-ignore-file rule` anywhere in the text), or phased's own
//! `-- phased: allow rule — reason`. The comment stands on the lines right above the statement
//! or at the end of its first line; several rules are separated by commas.

/// Whether a comment suppresses `rule` for the statement starting at byte `offset` of `sql`.
#[cfg(test)]
pub fn is_suppressed(sql: &str, offset: usize, rule: &str) -> bool {
    suppression(sql, offset, rule).is_some()
}

/// The comment that suppresses `rule` for the statement starting at byte `offset` of `sql`, as
/// written (trimmed: `phased: allow rule — reason`), or None.
pub fn suppression(sql: &str, offset: usize, rule: &str) -> Option<String> {
    let file_wide = sql
        .lines()
        .filter_map(comment)
        .find(|c| names(c, "squawk-ignore-file").is_some_and(|n| n.contains(&rule)));
    if let Some(c) = file_wide {
        return Some(c.trim().to_string());
    }
    let before = sql.get(..offset.min(sql.len())).unwrap_or("");
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let first_line = sql
        .get(line_start..)
        .and_then(|rest| rest.lines().next())
        .unwrap_or("");
    let above = sql
        .get(..line_start)
        .unwrap_or("")
        .lines()
        .rev()
        .take_while(|l| l.trim_start().starts_with("--") || l.trim_start().starts_with("/*"));
    std::iter::once(first_line)
        .chain(above)
        .filter_map(comment)
        .find(|c| suppresses(c, rule))
        .map(|c| c.trim().trim_end_matches("*/").trim_end().to_string())
}

/// The text of the `--` or `/* */` comment on `line`, if any (a `--` inside a string on the same
/// line is taken for a comment too: the worst case is a suppression nobody wrote).
fn comment(line: &str) -> Option<&str> {
    if let Some(i) = line.find("--") {
        return line.get(i + 2..);
    }
    let i = line.find("/*")?;
    let body = line.get(i + 2..)?;
    Some(body.split("*/").next().unwrap_or(body))
}

fn suppresses(comment: &str, rule: &str) -> bool {
    ["squawk-ignore", "phased: allow", "phased:allow"]
        .iter()
        .filter_map(|prefix| names(comment, prefix))
        .any(|n| n.contains(&rule))
}

/// The rule names after `prefix` at the start of `comment`, up to a reason (`—`, `--`, `:`).
fn names<'a>(comment: &'a str, prefix: &str) -> Option<Vec<&'a str>> {
    let rest = comment.trim_start().strip_prefix(prefix)?;
    if prefix == "squawk-ignore" && rest.starts_with("-file") {
        return None;
    }
    let rest = rest.split(['—', ':']).next().unwrap_or(rest);
    let rest = rest.split("--").next().unwrap_or(rest);
    Some(
        rest.split([',', ' ', '\t'])
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squawk_ignore_on_the_line_above() {
        let sql = "-- squawk-ignore ban-drop-column, renaming-column\nALTER TABLE t DROP COLUMN c;";
        let at = sql.find("ALTER").unwrap_or(0);
        assert!(is_suppressed(sql, at, "ban-drop-column"));
        assert!(is_suppressed(sql, at, "renaming-column"));
        assert!(!is_suppressed(sql, at, "destructive-outside-contract"));
    }

    #[test]
    fn phased_allow_with_a_reason_at_the_end_of_the_line() {
        let sql = "SELECT 1;\nDROP TABLE t; -- phased: allow destructive-outside-contract — t was never used\n";
        let at = sql.find("DROP").unwrap_or(0);
        assert!(is_suppressed(sql, at, "destructive-outside-contract"));
        assert!(!is_suppressed(sql, 0, "destructive-outside-contract"));
    }

    #[test]
    fn a_comment_above_a_blank_line_does_not_count() {
        let sql = "-- phased: allow table-rewrite\n\nCLUSTER t;";
        let at = sql.find("CLUSTER").unwrap_or(0);
        assert!(!is_suppressed(sql, at, "table-rewrite"));
    }

    #[test]
    fn the_suppressing_comment_is_returned_with_its_reason() {
        let sql = "-- phased: allow table-rewrite — maintenance window\nCLUSTER t;";
        let at = sql.find("CLUSTER").unwrap_or(0);
        assert_eq!(
            suppression(sql, at, "table-rewrite").as_deref(),
            Some("phased: allow table-rewrite — maintenance window")
        );
    }

    #[test]
    fn file_wide_ignore() {
        let sql = "-- squawk-ignore-file table-rewrite\nCLUSTER t;\nVACUUM FULL t;";
        let at = sql.find("VACUUM").unwrap_or(0);
        assert!(is_suppressed(sql, at, "table-rewrite"));
    }
}
