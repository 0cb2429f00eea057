//! `conversion-may-fail` (phased's own, a warning): a `change_type` whose conversion, or an
//! `add_column` whose `up` casts explicitly, to a type that refuses some values. Until contract
//! the sync trigger computes `up` inside the old application's INSERT and UPDATE, so a value it
//! cannot convert fails that write with the database's error, and the backfill stops on the
//! first such row. Offline the column's present type is rarely known (only when the plan itself
//! makes the column), so the warning says what the target type refuses; `phased verify`
//! evaluates `up` over the target's rows. Pure: the plan in, warnings out.
//!
//! The table of conversions that may fail, by type family (PostgreSQL; SQLite's `CAST` never
//! fails):
//!
//! | to | fails for |
//! |---|---|
//! | `smallint`, `integer`, `bigint` | text that is not an integer; a wider integer, a numeric or a float out of range (no failure from a narrower integer, or from `boolean` to `integer`) |
//! | `numeric(p,s)` | text that is not a number; a number with more than p−s integer digits |
//! | `numeric`, `real`, `double precision` | text that is not a number (no failure from a number) |
//! | `boolean` | text other than true/false/yes/no/on/off/1/0 and their prefixes |
//! | `date`, `timestamp`, `timestamptz`, `time`, `interval` | text that is not one (no failure from another date/time type) |
//! | `uuid`, `json`, `jsonb` | text that is not one (no failure from `json` to `jsonb`) |
//! | `varchar(n)`, `char(n)` | an explicit `CAST` truncates silently; assigning a longer value fails |
//! | `text`, `varchar` | nothing: every value has a text form |
//!
//! A type this table does not know (an enum, a domain, an array) gets no warning: phased cannot
//! tell what it accepts.

use std::collections::HashMap;

use crate::plan::{Finding, Plan, Step};

/// A family of types that convert alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// `text`, `varchar(n)`, `char(n)`: the length limit, if any.
    Text(Option<u32>),
    /// Integers, by byte width.
    Int(u8),
    /// `numeric(p, s)`: the integer digits allowed (p − s), when limited.
    Numeric(Option<u32>),
    Float,
    Bool,
    Date,
    Timestamp,
    Time,
    Interval,
    Uuid,
    Json,
}

/// The family of a type as SQL spells it; None for what phased cannot tell (enums, domains,
/// arrays).
fn family(ty: &str) -> Option<Family> {
    let lower = ty.trim().to_ascii_lowercase();
    if lower.ends_with(']') {
        return None;
    }
    let (base, args) = match lower.split_once('(') {
        Some((b, rest)) => (b.trim(), rest.split(')').next().unwrap_or("")),
        None => (lower.as_str(), ""),
    };
    let base: String = base.split_whitespace().collect::<Vec<_>>().join(" ");
    let first_arg = || {
        args.split(',')
            .next()
            .and_then(|a| a.trim().parse::<u32>().ok())
    };
    let f = match base.as_str() {
        "text" | "citext" | "name" => Family::Text(None),
        "varchar" | "character varying" => Family::Text(first_arg()),
        // `char` without a length is char(1).
        "char" | "character" | "bpchar" => Family::Text(Some(first_arg().unwrap_or(1))),
        "smallint" | "int2" | "smallserial" | "serial2" => Family::Int(2),
        "integer" | "int" | "int4" | "serial" | "serial4" => Family::Int(4),
        "bigint" | "int8" | "bigserial" | "serial8" => Family::Int(8),
        "numeric" | "decimal" => {
            let mut parts = args.split(',').map(|a| a.trim().parse::<u32>().ok());
            match (parts.next().flatten(), parts.next().flatten()) {
                (Some(p), s) => Family::Numeric(Some(p.saturating_sub(s.unwrap_or(0)))),
                _ => Family::Numeric(None),
            }
        }
        "real" | "float4" | "float8" | "double precision" | "float" => Family::Float,
        "boolean" | "bool" => Family::Bool,
        "date" => Family::Date,
        "timestamp"
        | "timestamptz"
        | "timestamp with time zone"
        | "timestamp without time zone" => Family::Timestamp,
        "time" | "timetz" | "time with time zone" | "time without time zone" => Family::Time,
        "interval" => Family::Interval,
        "uuid" => Family::Uuid,
        "json" | "jsonb" => Family::Json,
        _ => return None,
    };
    Some(f)
}

/// What converting a value of `from` (None: not known offline) to `to` fails for, or None when it cannot fail on a value.
fn fails_for(from: Option<Family>, to: Family) -> Option<String> {
    use Family::*;
    let not_a = |what: &str| format!("a text value that is not {what}");
    let text_like = matches!(from, None | Some(Text(_)));
    let why = match to {
        Text(None) => return None,
        Text(Some(n)) => match from {
            Some(Text(Some(m))) if m <= n => return None,
            Some(Int(_)) | Some(Bool) | Some(Uuid) | Some(Date) if n >= 36 => return None,
            _ => format!("a value longer than {n} characters"),
        },
        Int(width) => {
            let range = match width {
                2 => "-32768 to 32767",
                4 => "-2147483648 to 2147483647",
                _ => "-9223372036854775808 to 9223372036854775807",
            };
            match from {
                Some(Int(w)) if w <= width => return None,
                Some(Bool) if width >= 4 => return None,
                Some(Int(_)) | Some(Numeric(_)) | Some(Float) => {
                    format!("a value outside {range}")
                }
                _ if text_like => {
                    format!("{}, or a number outside {range}", not_a("an integer"))
                }
                _ => return None,
            }
        }
        Numeric(limit) => match (from, limit) {
            (Some(Int(_)) | Some(Numeric(_)) | Some(Float), Some(digits)) => {
                format!("a number with more than {digits} digit(s) before the decimal point")
            }
            (_, Some(digits)) if text_like => format!(
                "{}, or a number with more than {digits} digit(s) before the decimal point",
                not_a("a number")
            ),
            (_, None) if text_like => not_a("a number"),
            _ => return None,
        },
        Float if text_like => not_a("a number"),
        Bool if text_like => not_a("true/false, yes/no, on/off or 1/0"),
        Date if text_like => not_a("a date"),
        Timestamp if text_like => not_a("a timestamp"),
        Time if text_like => not_a("a time of day"),
        Interval if text_like => not_a("an interval"),
        Uuid if text_like => not_a("a UUID"),
        Json if text_like => not_a("JSON"),
        _ => return None,
    };
    Some(why)
}

/// The explicit casts an expression makes (`x::integer`, `CAST(x AS integer)`), as the type
/// each names, in order.
fn explicit_casts(expr: &str) -> Vec<String> {
    let lower = expr.to_ascii_lowercase();
    let mut out = Vec::new();
    // `::type`
    let mut rest = lower.as_str();
    while let Some(at) = rest.find("::") {
        rest = &rest[at + 2..];
        out.push(type_at(rest));
    }
    // `CAST(x AS type)`: the type runs from ` as ` at the call's own depth to its `)`.
    let mut from = 0;
    while let Some(at) = lower[from..].find("cast") {
        let start = from + at;
        from = start + 4;
        let word_before = lower[..start]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        let after = lower[from..].trim_start();
        if word_before || !after.starts_with('(') {
            continue;
        }
        let open = from + (lower[from..].len() - after.len());
        let mut depth = 0i32;
        let mut as_at = None;
        for (i, c) in lower[open..].char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        if let Some(a) = as_at {
                            out.push(lower[a..open + i].trim().to_string());
                        }
                        break;
                    }
                }
                _ if depth == 1 && as_at.is_none() => {
                    let tail = &lower[open + i..];
                    if tail.starts_with(" as ")
                        || tail.starts_with("\tas ")
                        || tail.starts_with("\nas ")
                    {
                        as_at = Some(open + i + 4);
                    }
                }
                _ => {}
            }
        }
    }
    out.retain(|t| !t.is_empty());
    out
}

/// The type name at the start of `text` (after `::`): words that make one type
/// (`double precision`, `timestamp with time zone`) and a parenthesised modifier.
fn type_at(text: &str) -> String {
    const MULTI: [&str; 6] = [
        "double precision",
        "character varying",
        "timestamp with time zone",
        "timestamp without time zone",
        "time with time zone",
        "time without time zone",
    ];
    let text = text.trim_start();
    let word_end = |s: &str| {
        s.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(s.len())
    };
    let mut end = word_end(text);
    for multi in MULTI {
        let normalized: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if normalized.starts_with(multi) {
            // Walk the words of `multi` in `text`.
            let mut pos = 0;
            for _ in multi.split(' ') {
                let rest = &text[pos..];
                let skip = rest.len() - rest.trim_start().len();
                pos += skip + word_end(&rest[skip..]);
            }
            end = pos;
            break;
        }
    }
    let mut ty = text[..end].to_string();
    let after = &text[end..];
    if after.trim_start().starts_with('(') {
        let after = after.trim_start();
        if let Some(close) = after.find(')') {
            ty.push_str(&after[..=close]);
        }
    }
    ty
}

/// The columns the plan itself makes, by `table.column`, with their types: the only present
/// types phased knows offline.
fn plan_columns(plan: &Plan) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for phase in &plan.phases.value {
        for step in &phase.value.steps.value {
            match &step.value {
                Step::CreateTable(t) => {
                    for c in &t.columns {
                        out.insert(format!("{}.{}", t.name, c.name), c.ty.clone());
                    }
                }
                Step::AddColumn(c) => {
                    out.insert(format!("{}.{}", c.table, c.name), c.ty.clone());
                }
                _ => {}
            }
        }
    }
    out
}

/// What the consequence is, and what to do: the help line of every such warning.
const HELP: &str = "from the end of expand until contract the trigger computes `up` inside each INSERT and \
UPDATE of the old application, so a write of such a value fails with the database's error, and the \
backfill stops on the first such row already stored. `phased verify` evaluates `up` over the target's \
rows and names the first one it cannot convert; or write an `up` that handles every value \
(`CASE WHEN … THEN … END`). (On SQLite CAST does not fail: 'abc' becomes 0)";

/// The warnings of every `change_type` and every `add_column` with `up` in the plan.
pub fn check(plan: &Plan) -> Vec<Finding> {
    let known = plan_columns(plan);
    let mut out = Vec::new();
    for phase in &plan.phases.value {
        for step in &phase.value.steps.value {
            match &step.value {
                Step::ChangeType(c) => {
                    let label = step.value.op().label();
                    let from = known
                        .get(&format!("{}.{}", c.table, c.column))
                        .and_then(|t| family(t));
                    match &c.up {
                        None => {
                            let Some(to) = family(&c.ty) else { continue };
                            let Some(why) = fails_for(from, to) else {
                                continue;
                            };
                            let what = match (to, from) {
                                (Family::Text(Some(_)), _) => format!(
                                    "the default `up`, `CAST({} AS {})`, truncates {why} to its first characters, without an error (an explicit cast to a length-limited type cuts the value)",
                                    c.column, c.ty
                                ),
                                (_, None) => format!(
                                    "converting `{}` to `{}` fails for {why} (phased cannot see the column's present type offline; from a type that holds no such value nothing fails)",
                                    c.column, c.ty
                                ),
                                (_, Some(_)) => format!(
                                    "converting `{}` to `{}` fails for {why}",
                                    c.column, c.ty
                                ),
                            };
                            let help = match to {
                                Family::Text(Some(n)) => format!(
                                    "nothing fails, so nothing stops: the shadow column keeps the first {n} characters and, after contract, that is all `{}` holds. Find such values first (`SELECT count(*) FROM {} WHERE length({}) > {n}`), or write an `up` that decides what to do with them",
                                    c.column, c.table, c.column
                                ),
                                _ => HELP.to_string(),
                            };
                            out.push(
                                Finding::warning(step.referenced, format!("`{label}`: {what}"))
                                    .with_help(help),
                            );
                        }
                        Some(up) => out.extend(cast_warnings(step.referenced, &label, up)),
                    }
                }
                Step::AddColumn(c) => {
                    if let Some(up) = &c.up {
                        let label = step.value.op().label();
                        out.extend(cast_warnings(step.referenced, &label, up));
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// An `up` written in the plan: a warning for each explicit cast to a type that refuses some
/// values, unless the expression guards itself with `CASE` (then phased cannot tell which
/// values reach the cast).
fn cast_warnings(at: serde_saphyr::Location, label: &str, up: &str) -> Vec<Finding> {
    let guarded = up
        .to_ascii_lowercase()
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .any(|w| w == "case");
    if guarded {
        return Vec::new();
    }
    let mut out = Vec::new();
    for ty in explicit_casts(up) {
        let Some(to) = family(&ty) else { continue };
        if matches!(to, Family::Text(_)) {
            continue; // an explicit cast to text never fails
        }
        let Some(why) = fails_for(None, to) else {
            continue;
        };
        out.push(
            Finding::warning(
                at,
                format!("`{label}`: its `up` (`{up}`) casts to `{ty}`, which fails for {why}"),
            )
            .with_help(HELP),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families() {
        assert_eq!(family("integer"), Some(Family::Int(4)));
        assert_eq!(family("BIGINT"), Some(Family::Int(8)));
        assert_eq!(family("varchar(20)"), Some(Family::Text(Some(20))));
        assert_eq!(
            family("character  varying (5)"),
            Some(Family::Text(Some(5)))
        );
        assert_eq!(family("numeric(12,2)"), Some(Family::Numeric(Some(10))));
        assert_eq!(family("numeric"), Some(Family::Numeric(None)));
        assert_eq!(family("timestamp with time zone"), Some(Family::Timestamp));
        assert_eq!(family("mood"), None);
        assert_eq!(family("integer[]"), None);
    }

    #[test]
    fn what_may_fail() {
        let f = |from: Option<&str>, to: &str| {
            fails_for(from.and_then(family), family(to).expect("known"))
        };
        // Widening and lossy-but-total conversions cannot fail.
        assert_eq!(f(Some("integer"), "bigint"), None);
        assert_eq!(f(Some("smallint"), "integer"), None);
        assert_eq!(f(Some("timestamptz"), "date"), None);
        assert_eq!(f(Some("integer"), "text"), None);
        assert_eq!(f(None, "text"), None);
        assert_eq!(f(Some("integer"), "numeric"), None);
        assert_eq!(f(Some("varchar(10)"), "varchar(20)"), None);
        // Narrowing and parsing can.
        assert!(f(Some("bigint"), "integer").is_some_and(|w| w.contains("2147483647")));
        assert!(f(Some("integer"), "smallint").is_some());
        assert!(f(Some("numeric"), "integer").is_some());
        assert!(f(Some("numeric"), "numeric(5,2)").is_some_and(|w| w.contains("3 digit")));
        assert!(f(Some("text"), "integer").is_some_and(|w| w.contains("not an integer")));
        assert!(f(None, "uuid").is_some());
        assert!(f(None, "jsonb").is_some());
        assert!(f(None, "date").is_some());
        assert!(f(Some("varchar(20)"), "varchar(10)").is_some());
    }

    #[test]
    fn finds_explicit_casts() {
        assert_eq!(explicit_casts("total_text::integer + 1"), vec!["integer"]);
        assert_eq!(
            explicit_casts("CAST(trim(a) AS numeric(10, 2))"),
            vec!["numeric(10, 2)"]
        );
        assert_eq!(
            explicit_casts("x::double precision"),
            vec!["double precision"]
        );
        assert_eq!(explicit_casts("payload::jsonb ->> 'id'"), vec!["jsonb"]);
        assert!(explicit_casts("lower(email)").is_empty());
        assert!(explicit_casts("broadcast(x)").is_empty());
    }
}
