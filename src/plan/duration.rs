//! Human durations in plans (`250ms`, `2s`, `1m`, `1h`), parsed strictly so a typo is an error.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A plan duration. `0` (or `0s`) means "none" where the field allows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlanDuration(pub Duration);

impl PlanDuration {
    pub const fn from_millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }

    pub fn as_millis(&self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }

    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }

    /// Parses `250ms`, `2s`, `1.5s`, `1m`, `1h`, or a bare `0`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "0" {
            return Ok(Self(Duration::ZERO));
        }
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| {
                format!("`{text}` has no unit: write e.g. `250ms`, `2s`, `1m` or `1h`")
            })?;
        let (number, unit) = text.split_at(split);
        let value: f64 = number.parse().map_err(|_| {
            format!("`{text}` is not a duration: expected a number then a unit, e.g. `2s`")
        })?;
        let millis_per_unit = match unit.trim() {
            "ms" => 1.0,
            "s" => 1_000.0,
            "m" | "min" => 60_000.0,
            "h" => 3_600_000.0,
            other => {
                return Err(format!(
                    "unknown duration unit `{other}` in `{text}`: use ms, s, m or h"
                ))
            }
        };
        let millis = value * millis_per_unit;
        if !millis.is_finite() || !(0.0..=1e12).contains(&millis) {
            return Err(format!("duration `{text}` is out of range"));
        }
        Ok(Self(
            Duration::from_micros((millis * 1000.0).round() as u64),
        ))
    }
}

impl fmt::Display for PlanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            write!(f, "0s")
        } else if ms % 3_600_000 == 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms % 60_000 == 0 {
            write!(f, "{}m", ms / 60_000)
        } else if ms % 1000 == 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for PlanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for PlanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = PlanDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as `250ms`, `2s`, `1m` or `1h`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PlanDuration, E> {
                PlanDuration::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PlanDuration, E> {
                if v == 0 {
                    Ok(PlanDuration(Duration::ZERO))
                } else {
                    Err(E::custom(format!(
                        "`{v}` has no unit: write e.g. `{v}ms` or `{v}s`"
                    )))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PlanDuration, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom("a duration cannot be negative")),
                }
            }
        }
        deserializer.deserialize_any(DurationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(PlanDuration::parse("250ms").unwrap().as_millis(), 250);
        assert_eq!(PlanDuration::parse("2s").unwrap().as_millis(), 2000);
        assert_eq!(PlanDuration::parse("1.5s").unwrap().as_millis(), 1500);
        assert_eq!(PlanDuration::parse("1m").unwrap().as_millis(), 60_000);
        assert_eq!(PlanDuration::parse("1h").unwrap().as_millis(), 3_600_000);
        assert_eq!(PlanDuration::parse("0").unwrap().as_millis(), 0);
    }

    #[test]
    fn rejects_bad_text() {
        assert!(PlanDuration::parse("2").is_err());
        assert!(PlanDuration::parse("2 parsecs").is_err());
        assert!(PlanDuration::parse("s").is_err());
        assert!(PlanDuration::parse("2d").is_err());
    }

    #[test]
    fn displays_compactly() {
        assert_eq!(PlanDuration::from_millis(250).to_string(), "250ms");
        assert_eq!(PlanDuration::from_millis(2000).to_string(), "2s");
        assert_eq!(PlanDuration::from_millis(120_000).to_string(), "2m");
    }
}
