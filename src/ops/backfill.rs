//! `backfill`: fills columns of existing rows in batches, walking the table by its key (keyset
//! pagination, never OFFSET), each batch committed with its checkpoint. Row locks only, on the
//! batch's rows, under lock_timeout: no table lock anyone queues behind. The engine drives it
//! (pace, throttling, pauses); this file holds its fields, its rules and its batch SQL.
//!
//! Resumes: from the checkpoint (the last key of the last committed batch), which is written in
//! the batch's own transaction, so no batch is done twice or skipped.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::assignments::Assignments;
use super::name::{ident, ident_list, quote, Name, TableName};
use super::{engine_driven, Dialect, Inverse, InverseContext, Operation, RenderError, Unit};
use crate::plan::{PhaseKind, PlanDuration};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Backfill {
    pub table: TableName,
    /// column → SQL expression over the row.
    pub set: Assignments,
    #[serde(default, rename = "where")]
    pub predicate: Option<String>,
    /// The key to walk; the primary key when left out.
    #[serde(default)]
    pub key: Vec<Name>,
    #[serde(default)]
    pub batch_size: BatchSize,
    /// `auto` (the default when no fixed knob is set): the pace follows the workload's health
    /// (`engine::pace`); `fixed`: `target_batch_time`, `pause` and `max_rows_per_second`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<ThrottleMode>,
    /// `throttle: auto`'s budget: how much the probe's latency may grow (`1.5x`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_latency_impact: Option<LatencyImpact>,
    /// A fixed knob: what `batch_size: auto` aims at (default 2ms under `throttle: fixed`).
    /// Written out as the old default when left out, so the legacy checksum of older state
    /// stays what it was.
    #[serde(default, serialize_with = "legacy_target_batch_time")]
    pub target_batch_time: Option<PlanDuration>,
    /// A fixed knob: sleep between batches (default 28ms under `throttle: fixed`: with 2ms
    /// batches, the backfill works about a fifteenth of the time).
    #[serde(default, serialize_with = "legacy_pause")]
    pub pause: Option<PlanDuration>,
    /// A fixed knob: at most this many rows a second (0: no cap).
    #[serde(default, serialize_with = "legacy_rate")]
    pub max_rows_per_second: Option<u64>,
    #[serde(default)]
    pub max_replica_lag: Option<PlanDuration>,
    /// How rollback undoes a backfill into pre-existing columns: a reverse walk (`{ set, where }`,
    /// in batches like the backfill itself), or one SQL statement.
    #[serde(default)]
    pub down: Option<BackfillDown>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<PlanDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement_timeout: Option<PlanDuration>,
}

/// Short, frequent batches are what keep the application's latency flat under a fixed pace:
/// on a busy server a batch is a burst of CPU and WAL that every application write queues
/// behind, and the shorter the burst, the shorter the queue (docs/benchmarks.md: 10ms batches
/// cost the application's p99 2.6×, 2ms batches at the same share of time about 1.5×).
pub const FIXED_TARGET_BATCH_TIME: PlanDuration = PlanDuration::from_millis(2);
pub const FIXED_PAUSE: PlanDuration = PlanDuration::from_millis(28);
/// `throttle: auto`'s budget when the step states none: the probe's p90 may grow to 1.5× its
/// baseline.
pub const DEFAULT_MAX_LATENCY_IMPACT: f64 = 1.5;

fn legacy_target_batch_time<S: serde::Serializer>(
    v: &Option<PlanDuration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    v.unwrap_or(FIXED_TARGET_BATCH_TIME).serialize(s)
}

fn legacy_pause<S: serde::Serializer>(v: &Option<PlanDuration>, s: S) -> Result<S::Ok, S::Error> {
    v.unwrap_or(FIXED_PAUSE).serialize(s)
}

fn legacy_rate<S: serde::Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    v.unwrap_or(0).serialize(s)
}

/// `throttle:` — who sets the pace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ThrottleMode {
    Auto,
    Fixed,
}

/// `max_latency_impact: 1.5x`: a factor of at least 1, written with its `x`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyImpact(pub f64);

impl LatencyImpact {
    pub fn parse(text: &str) -> Result<Self, String> {
        let expected = "write a factor of at least 1 followed by `x`, e.g. `1.5x`";
        let number = text
            .trim()
            .strip_suffix('x')
            .ok_or_else(|| format!("max_latency_impact `{text}` has no `x`: {expected}"))?;
        let value: f64 = number
            .parse()
            .map_err(|_| format!("max_latency_impact `{text}` is not a factor: {expected}"))?;
        if !value.is_finite() || !(1.0..=100.0).contains(&value) {
            return Err(format!(
                "max_latency_impact `{text}` is out of range: {expected} (at most `100x`)"
            ));
        }
        Ok(Self(value))
    }
}

impl Serialize for LatencyImpact {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}x", self.0))
    }
}

impl<'de> Deserialize<'de> for LatencyImpact {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ImpactVisitor;
        impl Visitor<'_> for ImpactVisitor {
            type Value = LatencyImpact;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a factor followed by `x`, e.g. `1.5x`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LatencyImpact, E> {
                LatencyImpact::parse(v).map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<LatencyImpact, E> {
                Err(E::custom(format!(
                    "max_latency_impact `{v}` has no `x`: write e.g. `{v}x`"
                )))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<LatencyImpact, E> {
                self.visit_f64(v as f64)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<LatencyImpact, E> {
                self.visit_f64(v as f64)
            }
        }
        deserializer.deserialize_any(ImpactVisitor)
    }
}

/// How a backfill step is paced, its knobs resolved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Throttle {
    /// Set by the workload's health; the budget is the allowed growth of the probe's latency.
    Auto { max_latency_impact: f64 },
    /// The plan's knobs (their defaults where left out).
    Fixed {
        target_batch_time: std::time::Duration,
        pause: std::time::Duration,
        max_rows_per_second: u64,
    },
}

impl Backfill {
    /// The fixed knobs the step sets (`throttle: auto` refuses them).
    pub fn fixed_knobs(&self) -> Vec<&'static str> {
        let mut knobs = Vec::new();
        if self.target_batch_time.is_some() {
            knobs.push("target_batch_time");
        }
        if self.pause.is_some() {
            knobs.push("pause");
        }
        if self.max_rows_per_second.is_some() {
            knobs.push("max_rows_per_second");
        }
        knobs
    }

    /// Auto unless the step says `throttle: fixed` or sets a fixed knob: the knobs override.
    pub fn throttle(&self) -> Throttle {
        let fixed = self.throttle == Some(ThrottleMode::Fixed)
            || (self.throttle.is_none() && !self.fixed_knobs().is_empty());
        if fixed {
            Throttle::Fixed {
                target_batch_time: self.target_batch_time.unwrap_or(FIXED_TARGET_BATCH_TIME).0,
                pause: self.pause.unwrap_or(FIXED_PAUSE).0,
                max_rows_per_second: self.max_rows_per_second.unwrap_or(0),
            }
        } else {
            Throttle::Auto {
                max_latency_impact: self
                    .max_latency_impact
                    .map_or(DEFAULT_MAX_LATENCY_IMPACT, |l| l.0),
            }
        }
    }
}

/// `auto` (tuned toward `target_batch_time`) or a fixed number of rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BatchSize {
    #[default]
    Auto,
    Fixed(u64),
}

impl Serialize for BatchSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            BatchSize::Auto => s.serialize_str("auto"),
            BatchSize::Fixed(n) => s.serialize_u64(*n),
        }
    }
}

impl<'de> Deserialize<'de> for BatchSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BatchVisitor;
        impl Visitor<'_> for BatchVisitor {
            type Value = BatchSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`auto` or a positive number of rows")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<BatchSize, E> {
                if v == "auto" {
                    Ok(BatchSize::Auto)
                } else {
                    Err(E::custom(format!(
                        "batch_size `{v}` is not `auto` or a positive number of rows"
                    )))
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<BatchSize, E> {
                if v == 0 {
                    Err(E::custom("batch_size must be at least 1"))
                } else {
                    Ok(BatchSize::Fixed(v))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<BatchSize, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom("batch_size must be at least 1"))
                    .and_then(|v| self.visit_u64(v))
            }
        }
        deserializer.deserialize_any(BatchVisitor)
    }
}

impl Operation for Backfill {
    fn kind(&self) -> &'static str {
        "backfill"
    }

    fn subject(&self) -> String {
        format!(
            "{} ({})",
            self.table,
            self.set
                .keys()
                .map(Name::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    fn allowed_in(&self) -> &'static [PhaseKind] {
        &[PhaseKind::Migrate]
    }

    fn table(&self) -> Option<&TableName> {
        Some(&self.table)
    }

    // No locks to look for: row locks (ROW EXCLUSIVE on the table) queue no application query.

    fn lock_timeout(&self) -> Option<PlanDuration> {
        self.lock_timeout
    }

    fn statement_timeout(&self) -> Option<PlanDuration> {
        self.statement_timeout
    }

    fn units(&self, _dialect: Dialect) -> Result<Vec<Unit>, RenderError> {
        Err(engine_driven(self.kind()))
    }

    /// Nothing when it filled columns (or a table) this plan adds: they go with their
    /// `add_column`. Else its `down` SQL, else no inverse.
    fn inverse(&self, ctx: &InverseContext<'_>, _done: bool, _dialect: Dialect) -> Inverse {
        if self.set.keys().all(|c| ctx.adds_column(&self.table, c)) {
            return Inverse::Nothing(
                "it filled columns this plan added, which go with their add_column".to_string(),
            );
        }
        match (&self.down, self.down_walk()) {
            (_, Some(walk)) => Inverse::Backfill(Box::new(walk)),
            (Some(BackfillDown::Sql(sql)), None) => {
                Inverse::Units(vec![Unit::Transaction(vec![sql.clone()])])
            }
            (None, None) | (Some(BackfillDown::Walk { .. }), None) => Inverse::Irreversible(
                "it changed pre-existing columns and has no `down` SQL to restore them".to_string(),
            ),
        }
    }
}

/// A backfill's `down`.
#[derive(Debug, Clone, PartialEq)]
pub enum BackfillDown {
    /// One statement, in one transaction: on a large table it holds its row locks until it
    /// commits, so the walk form is the one to prefer.
    Sql(String),
    /// A reverse backfill: `set` on the rows `where` selects, walked by the same key, in
    /// batches, with the same pace and checkpoints as the backfill (`rollback` resumes it).
    Walk {
        set: Assignments,
        predicate: Option<String>,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WalkFields {
    set: Assignments,
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    predicate: Option<String>,
}

impl Serialize for BackfillDown {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            // As a string, exactly as before: checksums of recorded steps stay the same.
            BackfillDown::Sql(sql) => s.serialize_str(sql),
            BackfillDown::Walk { set, predicate } => WalkFields {
                set: set.clone(),
                predicate: predicate.clone(),
            }
            .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for BackfillDown {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DownVisitor;
        impl<'de> Visitor<'de> for DownVisitor {
            type Value = BackfillDown;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`{ set: { column: expression }, where: condition }` or a SQL string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<BackfillDown, E> {
                Ok(BackfillDown::Sql(v.to_string()))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<BackfillDown, A::Error> {
                let f = WalkFields::deserialize(de::value::MapAccessDeserializer::new(map))?;
                if f.set.is_empty() {
                    return Err(de::Error::custom("`down.set` needs at least one column"));
                }
                Ok(BackfillDown::Walk {
                    set: f.set,
                    predicate: f.predicate,
                })
            }
        }
        deserializer.deserialize_any(DownVisitor)
    }
}

impl Backfill {
    /// The reverse walk of a `down: { set, where }`: the same table, key and pace.
    pub fn down_walk(&self) -> Option<Backfill> {
        match &self.down {
            Some(BackfillDown::Walk { set, predicate }) => Some(Backfill {
                set: set.clone(),
                predicate: predicate.clone(),
                down: None,
                ..self.clone()
            }),
            _ => None,
        }
    }

    /// The key as the plan knows it, for a dry run that cannot look it up: `key:`, else the
    /// primary key of a table the plan creates, else `id`; with the declared types where the
    /// plan has them (`text` where not).
    pub fn key_from_plan(&self, plan: &crate::plan::Plan) -> (Vec<String>, Vec<String>) {
        use crate::plan::Step;
        let created = plan.phases().flat_map(|p| p.steps()).find_map(|s| match s {
            Step::CreateTable(t) if t.name == self.table => Some(t),
            _ => None,
        });
        let columns: Vec<String> = if !self.key.is_empty() {
            self.key.iter().map(ToString::to_string).collect()
        } else {
            created
                .map(|t| {
                    t.columns
                        .iter()
                        .filter(|c| c.primary_key)
                        .map(|c| c.name.to_string())
                        .collect::<Vec<_>>()
                })
                .filter(|k| !k.is_empty())
                .unwrap_or_else(|| vec!["id".to_string()])
        };
        let types = columns
            .iter()
            .map(|c| {
                created
                    .and_then(|t| t.columns.iter().find(|col| col.name.as_str() == c))
                    .map(|col| col.ty.clone())
                    .unwrap_or_else(|| "text".to_string())
            })
            .collect();
        (columns, types)
    }
}

/// The SQL of one batch, with its placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSql {
    /// Returns the last key of the next batch (one row, one text column per key column), or nothing.
    pub find_last: String,
    /// Updates the rows after the previous key up to and including the batch's last key.
    pub update: String,
    /// Counts the rows still to visit: after the previous key (when any) and matching the
    /// predicate. Run once per attempt, for the progress total; never per batch.
    pub count: String,
    /// The same rows, selected (what the planner's estimate of them is asked about).
    pub rows: String,
}

/// ` WHERE a AND b` of `conditions`, or nothing without any.
pub fn where_clause(conditions: &[String]) -> String {
    if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    }
}

/// `batch."a" DESC, batch."b" DESC`: the order that puts a batch's last key first.
pub fn order_desc(key: &[String]) -> String {
    key.iter()
        .map(|k| format!("batch.{} DESC", quote(k)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `"c" = expression, …`: a step's `set`, as an UPDATE's SET list.
pub fn assignments(set: &[(String, String)]) -> String {
    set.iter()
        .map(|(c, e)| format!("{} = {e}", quote(c)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The SQL of one batch, per dialect: keyset pagination by `key`, never OFFSET, so each batch
/// costs the same however far into the table it is. `table`, `key` and `set` come from the
/// engine as text (the key may be read from the catalog); `key_types` are the PostgreSQL types
/// of the key columns (for casting bound text values).
pub fn render(
    dialect: Dialect,
    table: &str,
    key: &[String],
    key_types: &[String],
    set: &[(String, String)],
    predicate: Option<&str>,
    has_lower_bound: bool,
) -> BatchSql {
    let n = key.len();
    let keys = ident_list(key);
    // Parameter `number` (1-based) holds key column `column`'s value, bound as text on
    // PostgreSQL and cast to the column's type.
    let param = |number: usize, column: usize| match dialect {
        Dialect::Postgres => {
            let ty = key_types.get(column).map(String::as_str).unwrap_or("text");
            format!("${number}::text::{ty}")
        }
        Dialect::Sqlite => format!("?{number}"),
    };
    let tuple = |offset: usize| {
        (0..n)
            .map(|i| param(offset + i + 1, i))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let limit_index = if has_lower_bound { n + 1 } else { 1 };
    let limit_param = match dialect {
        Dialect::Postgres => format!("${limit_index}"),
        Dialect::Sqlite => format!("?{limit_index}"),
    };
    let mut conditions = Vec::new();
    if has_lower_bound {
        conditions.push(format!("({keys}) > ({})", tuple(0)));
    }
    if let Some(p) = predicate {
        conditions.push(format!("({p})"));
    }
    let where_clause = where_clause(&conditions);
    let order_asc = key.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ");
    let order_desc = order_desc(key);
    let select_keys = match dialect {
        Dialect::Postgres => key
            .iter()
            .map(|k| format!("batch.{}::text", quote(k)))
            .collect::<Vec<_>>()
            .join(", "),
        Dialect::Sqlite => key
            .iter()
            .map(|k| format!("batch.{}", quote(k)))
            .collect::<Vec<_>>()
            .join(", "),
    };
    let find_last = format!(
        "SELECT {select_keys} FROM (SELECT {keys} FROM {t}{where_clause} ORDER BY {order_asc} LIMIT {limit_param}) AS batch ORDER BY {order_desc} LIMIT 1",
        t = ident(table)
    );

    // The update covers (previous key, last key]: parameters 1..n the previous key (when any),
    // then n+1..2n (or 1..n) the last key.
    let upper_offset = if has_lower_bound { n } else { 0 };
    let mut upd_conditions = Vec::new();
    if has_lower_bound {
        upd_conditions.push(format!("({keys}) > ({})", tuple(0)));
    }
    upd_conditions.push(format!("({keys}) <= ({})", tuple(upper_offset)));
    if let Some(p) = predicate {
        upd_conditions.push(format!("({p})"));
    }
    let assignments = assignments(set);
    let update = format!(
        "UPDATE {} SET {assignments} WHERE {}",
        ident(table),
        upd_conditions.join(" AND ")
    );
    let count = format!("SELECT count(*) FROM {}{where_clause}", ident(table));
    let rows = format!("SELECT 1 FROM {}{where_clause}", ident(table));
    BatchSql {
        find_last,
        update,
        count,
        rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(extra: &str) -> Backfill {
        serde_saphyr::from_str(&format!("{{ table: t, set: {{ c: \"1\" }}{extra} }}"))
            .unwrap_or_else(|e| panic!("{extra}: {e}"))
    }

    #[test]
    fn auto_is_the_default_and_fixed_knobs_override_it() {
        assert_eq!(
            step("").throttle(),
            Throttle::Auto {
                max_latency_impact: DEFAULT_MAX_LATENCY_IMPACT
            }
        );
        assert_eq!(
            step(", max_latency_impact: 2.5x").throttle(),
            Throttle::Auto {
                max_latency_impact: 2.5
            }
        );
        let ms = std::time::Duration::from_millis;
        assert_eq!(
            step(", pause: 5ms").throttle(),
            Throttle::Fixed {
                target_batch_time: ms(2),
                pause: ms(5),
                max_rows_per_second: 0
            }
        );
        assert_eq!(
            step(", max_rows_per_second: 100").throttle(),
            Throttle::Fixed {
                target_batch_time: ms(2),
                pause: ms(28),
                max_rows_per_second: 100
            }
        );
        assert_eq!(
            step(", throttle: fixed").throttle(),
            Throttle::Fixed {
                target_batch_time: ms(2),
                pause: ms(28),
                max_rows_per_second: 0
            }
        );
        assert_eq!(
            step(", target_batch_time: 50ms").fixed_knobs(),
            ["target_batch_time"]
        );
    }

    #[test]
    fn latency_impact_is_a_factor_with_its_x() {
        assert_eq!(LatencyImpact::parse("1.5x"), Ok(LatencyImpact(1.5)));
        assert_eq!(LatencyImpact::parse("2x"), Ok(LatencyImpact(2.0)));
        assert_eq!(LatencyImpact::parse("1x"), Ok(LatencyImpact(1.0)));
        for bad in [
            "1.5", "x", "0.5x", "-2x", "abcx", "infx", "NaNx", "101x", "1.5 x",
        ] {
            assert!(LatencyImpact::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn the_legacy_form_writes_the_old_defaults() {
        // State written before `throttle: auto` holds checksums of the model serialized with
        // its defaults; leaving the fixed knobs out must serialize the same.
        let json = serde_json::to_value(step("")).expect("serialize");
        assert_eq!(json["pause"], "28ms");
        assert_eq!(json["target_batch_time"], "2ms");
        assert_eq!(json["max_rows_per_second"], 0);
        assert!(json.get("throttle").is_none() && json.get("max_latency_impact").is_none());
    }

    #[test]
    fn postgres_batch_casts_bound_text() {
        let sql = render(
            Dialect::Postgres,
            "accounts",
            &["id".into()],
            &["bigint".into()],
            &[("email_lower".into(), "lower(email)".into())],
            Some("email_lower IS NULL"),
            true,
        );
        assert_eq!(
            sql.find_last,
            "SELECT batch.\"id\"::text FROM (SELECT \"id\" FROM \"accounts\" WHERE (\"id\") > ($1::text::bigint) AND (email_lower IS NULL) ORDER BY \"id\" LIMIT $2) AS batch ORDER BY batch.\"id\" DESC LIMIT 1"
        );
        assert_eq!(
            sql.update,
            "UPDATE \"accounts\" SET \"email_lower\" = lower(email) WHERE (\"id\") > ($1::text::bigint) AND (\"id\") <= ($2::text::bigint) AND (email_lower IS NULL)"
        );
    }

    #[test]
    fn sqlite_first_batch_has_no_lower_bound() {
        let sql = render(
            Dialect::Sqlite,
            "t",
            &["a".into(), "b".into()],
            &[],
            &[("c".into(), "1".into())],
            None,
            false,
        );
        assert_eq!(
            sql.update,
            "UPDATE \"t\" SET \"c\" = 1 WHERE (\"a\", \"b\") <= (?1, ?2)"
        );
        assert!(sql.find_last.contains("LIMIT ?1"), "{}", sql.find_last);
        assert_eq!(sql.count, "SELECT count(*) FROM \"t\"");
    }

    #[test]
    fn count_after_a_checkpoint_starts_at_the_key() {
        let sql = render(
            Dialect::Sqlite,
            "t",
            &["a".into(), "b".into()],
            &[],
            &[("c".into(), "1".into())],
            Some("c IS NULL"),
            true,
        );
        assert_eq!(
            sql.count,
            "SELECT count(*) FROM \"t\" WHERE (\"a\", \"b\") > (?1, ?2) AND (c IS NULL)"
        );
    }
}
