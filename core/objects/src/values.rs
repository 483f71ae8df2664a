//! Attribute value types and their conversions.
//!
//! Values travel as JSON: strings, integers, booleans; `Binary` as base64; `Date` as
//! `YYYY-MM-DD`; `Timestamp` as RFC 3339 in UTC. Backends store text, in the form their
//! backend type prescribes (LDAP booleans `TRUE`/`FALSE`, generalized time, …).

use base64::Engine as _;
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use serde::Serialize;
use serde_json::Value;

/// The value types a description can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum ValueType {
    String,
    UnicodeString,
    Integer,
    Boolean,
    Binary,
    Date,
    Timestamp,
    AnyType,
}

impl std::str::FromStr for ValueType {
    type Err = String;
    fn from_str(s: &str) -> Result<ValueType, String> {
        Ok(match s {
            "String" => ValueType::String,
            "UnicodeString" => ValueType::UnicodeString,
            "Integer" => ValueType::Integer,
            "Boolean" => ValueType::Boolean,
            "Binary" => ValueType::Binary,
            "Date" => ValueType::Date,
            "Timestamp" => ValueType::Timestamp,
            "AnyType" => ValueType::AnyType,
            other => return Err(format!("unknown attribute type '{other}'")),
        })
    }
}

impl std::fmt::Display for ValueType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

const LDAP_TIME: &str = "%Y%m%d%H%M%SZ";

impl ValueType {
    /// Checks a value given by a user and brings it into canonical form
    /// (`"42"` → `42` for an Integer, a date-time with offset → UTC, …).
    pub fn accept(self, value: &Value) -> Result<Value, String> {
        match (self, value) {
            (ValueType::AnyType, v) => Ok(v.clone()),
            (ValueType::String | ValueType::UnicodeString, Value::String(s)) => Ok(Value::String(s.clone())),
            (ValueType::String | ValueType::UnicodeString, Value::Number(n)) => Ok(Value::String(n.to_string())),
            (ValueType::Integer, Value::Number(n)) => {
                n.as_i64().map(Value::from).ok_or_else(|| format!("{n} is not a whole number"))
            }
            (ValueType::Boolean, Value::Bool(b)) => Ok(Value::Bool(*b)),
            (_, Value::String(s)) => self.parse_text(s),
            (_, other) => Err(format!("expected {}, got {}", self.describe(), kind_of(other))),
        }
    }

    /// Reads a value written as text (a description's default, a method argument).
    pub fn parse_text(self, text: &str) -> Result<Value, String> {
        match self {
            ValueType::String | ValueType::UnicodeString => Ok(Value::String(text.to_owned())),
            ValueType::Integer => {
                text.trim().parse::<i64>().map(Value::from).map_err(|_| format!("'{text}' is not a whole number"))
            }
            ValueType::Boolean => match text.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => Ok(Value::Bool(true)),
                "false" | "0" | "no" => Ok(Value::Bool(false)),
                _ => Err(format!("'{text}' is not true or false")),
            },
            ValueType::Binary => base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map(|_| Value::String(text.trim().to_owned()))
                .map_err(|e| format!("not base64: {e}")),
            ValueType::Date => NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
                .map(|d| Value::String(d.format("%Y-%m-%d").to_string()))
                .map_err(|_| format!("'{text}' is not a date (YYYY-MM-DD)")),
            ValueType::Timestamp => parse_timestamp(text)
                .map(|t| Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)))
                .ok_or_else(|| format!("'{text}' is not a timestamp (RFC 3339, e.g. 2026-01-31T12:00:00Z)")),
            ValueType::AnyType => Ok(serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))),
        }
    }

    /// The text a backend stores for `value` (already canonical for this type).
    pub fn to_backend_text(self, value: &Value) -> String {
        match (self, value) {
            (ValueType::Boolean, Value::Bool(b)) => (if *b { "TRUE" } else { "FALSE" }).to_owned(),
            (ValueType::Timestamp, Value::String(s)) => {
                parse_timestamp(s).map(|t| t.format(LDAP_TIME).to_string()).unwrap_or_else(|| s.clone())
            }
            (ValueType::AnyType, v) if !v.is_string() => v.to_string(),
            (_, Value::String(s)) => s.clone(),
            (_, v) => v.to_string(),
        }
    }

    /// Reads a backend's text back; unreadable text is kept as a string rather than lost.
    pub fn from_backend_text(self, text: &str) -> Value {
        match self {
            ValueType::Boolean => Value::Bool(text.eq_ignore_ascii_case("TRUE") || text == "1"),
            _ => self.parse_text(text).unwrap_or_else(|_| Value::String(text.to_owned())),
        }
    }

    /// Converts a canonical value of `self` into `target` (for BackendType ≠ Type).
    pub fn convert(self, value: &Value, target: ValueType) -> Result<Value, String> {
        if self == target {
            return Ok(value.clone());
        }
        match (self, target, value) {
            (ValueType::Timestamp, ValueType::Integer, Value::String(s)) => {
                parse_timestamp(s).map(|t| Value::from(t.timestamp())).ok_or_else(|| format!("bad timestamp {s}"))
            }
            (ValueType::Integer, ValueType::Timestamp, Value::Number(n)) => n
                .as_i64()
                .and_then(|secs| Utc.timestamp_opt(secs, 0).single())
                .map(|t| Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)))
                .ok_or_else(|| format!("{n} is not a valid time")),
            (ValueType::Date, ValueType::Integer, Value::String(s)) => NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .map(|d| Value::from(days_since_epoch(d)))
                .map_err(|_| format!("bad date {s}")),
            (ValueType::Integer, ValueType::Date, Value::Number(n)) => n
                .as_i64()
                .and_then(date_from_days)
                .map(|d| Value::String(d.format("%Y-%m-%d").to_string()))
                .ok_or_else(|| format!("{n} is not a day number")),
            (_, ValueType::String | ValueType::UnicodeString, v) => Ok(Value::String(self.to_backend_text(v))),
            (ValueType::String | ValueType::UnicodeString, _, Value::String(s)) => target.parse_text(s),
            _ => Err(format!("cannot convert {self} to {target}")),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            ValueType::String | ValueType::UnicodeString => "a string",
            ValueType::Integer => "a whole number",
            ValueType::Boolean => "true or false",
            ValueType::Binary => "base64 text",
            ValueType::Date => "a date (YYYY-MM-DD)",
            ValueType::Timestamp => "a timestamp (RFC 3339)",
            ValueType::AnyType => "any value",
        }
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

/// RFC 3339, LDAP generalized time (`20260131120000Z`) or `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| NaiveDateTime::parse_from_str(text, LDAP_TIME).ok().map(|t| t.and_utc()))
        .or_else(|| NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").ok().map(|t| t.and_utc()))
}

/// Days since 1970-01-01 (shadow's day numbers).
pub fn days_since_epoch(date: NaiveDate) -> i64 {
    date.signed_duration_since(NaiveDate::default()).num_days()
}

pub fn date_from_days(days: i64) -> Option<NaiveDate> {
    NaiveDate::default().checked_add_signed(chrono::Duration::try_days(days)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn user_input_is_checked_and_canonical() {
        let check = |t: ValueType, v: Value| t.accept(&v);
        assert_eq!(check(ValueType::Integer, json!("42")), Ok(json!(42)));
        assert!(check(ValueType::Integer, json!("x")).err().unwrap_or_default().contains("not a whole number"));
        assert_eq!(check(ValueType::Boolean, json!("yes")), Ok(json!(true)));
        assert_eq!(check(ValueType::Date, json!("2026-02-03")), Ok(json!("2026-02-03")));
        assert!(check(ValueType::Date, json!("03.02.2026")).is_err());
        assert_eq!(check(ValueType::Timestamp, json!("2026-02-03T10:00:00+01:00")), Ok(json!("2026-02-03T09:00:00Z")));
        assert_eq!(check(ValueType::String, json!(7)), Ok(json!("7")));
        assert!(check(ValueType::String, json!([1])).err().unwrap_or_default().contains("a list"));
    }

    #[test]
    fn backend_text_round_trips() {
        for (t, v, text) in [
            (ValueType::Boolean, json!(true), "TRUE"),
            (ValueType::Timestamp, json!("2026-02-03T09:00:00Z"), "20260203090000Z"),
            (ValueType::Integer, json!(1001), "1001"),
            (ValueType::AnyType, json!({"a": 1}), "{\"a\":1}"),
        ] {
            assert_eq!(t.to_backend_text(&v), text);
            assert_eq!(t.from_backend_text(text), v);
        }
        assert_eq!(ValueType::Date.convert(&json!("1970-01-11"), ValueType::Integer), Ok(json!(10)));
        assert_eq!(ValueType::Integer.convert(&json!(10), ValueType::Date), Ok(json!("1970-01-11")));
    }
}
