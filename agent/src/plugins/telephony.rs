//! The telephony bridge: turns call records — as an Asterisk or FreeSWITCH hook would
//! write them, one per line — into validated `Call` events.
//!
//! A record is `TYPE ID CALLER CALLEE STARTED [DURATION]`, whitespace separated:
//! `missed c42 200 100 2026-11-22T10:00:00Z` or `ended c43 200 101 2026-11-22T10:05:00Z 63`.
//! TYPE is `incoming`, `missed` or `ended`; STARTED is RFC 3339; DURATION is seconds.

use clacks_core::command::{CommandError, CommandResult};
use clacks_core::events::EventPublisher;
use clacks_core::rpc::ErrorCode;
use serde_json::{Map, Value, json};

/// The `telephony` plugin.
pub struct TelephonyPlugin {
    pub(crate) events: EventPublisher,
}

/// Reads one record into the fields of a `Call` event.
pub fn parse_record(line: &str) -> Result<Map<String, Value>, String> {
    let parts: Vec<&str> = line.split_whitespace().collect();
    let [kind, id, caller, callee, started, rest @ ..] = parts.as_slice() else {
        return Err("expected TYPE ID CALLER CALLEE STARTED [DURATION]".into());
    };
    if !matches!(*kind, "incoming" | "missed" | "ended") {
        return Err(format!("unknown call type '{kind}' (incoming, missed or ended)"));
    }
    let mut fields = Map::new();
    for (name, value) in [("Type", kind), ("Id", id), ("Caller", caller), ("Callee", callee), ("Started", started)] {
        fields.insert(name.to_owned(), Value::String((*value).to_owned()));
    }
    match rest {
        [] => {}
        [duration] => {
            let seconds: u64 =
                duration.parse().map_err(|_| format!("duration '{duration}' is not a number of seconds"))?;
            fields.insert("Duration".into(), json!(seconds));
        }
        _ => return Err("too many fields".into()),
    }
    Ok(fields)
}

#[clacks_core::plugin(target = "telephony")]
impl TelephonyPlugin {
    /// Publish one call record (TYPE ID CALLER CALLEE STARTED [DURATION]) as a Call event.
    #[command]
    async fn call_record(&self, record: String) -> CommandResult<String> {
        let fields = parse_record(&record).map_err(|e| CommandError::new(ErrorCode::INVALID_PARAMS, e))?;
        self.events.publish_fields("Call", &fields).await.map_err(|e| CommandError::from(e.to_rpc_error()))
    }

    /// Publish every call record of a file as Call events; returns how many were published and why others were not.
    #[command]
    async fn import_call_records(&self, path: String) -> CommandResult<Value> {
        let text = tokio::fs::read_to_string(&path)
            .await
            .map_err(|e| CommandError::new(ErrorCode::FILE_UNREADABLE, format!("cannot read {path}: {e}")))?;
        let mut published = 0;
        let mut rejected = Vec::new();
        for (idx, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let outcome = match parse_record(line) {
                Ok(fields) => self.events.publish_fields("Call", &fields).await.map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            match outcome {
                Ok(_) => published += 1,
                Err(reason) => rejected.push(json!({"line": idx + 1, "reason": reason})),
            }
        }
        Ok(json!({"published": published, "rejected": rejected}))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_record;

    #[test]
    fn records() {
        let fields = parse_record("ended c1 200 100 2026-11-22T10:00:00Z 63").unwrap_or_default();
        assert_eq!(
            serde_json::Value::Object(fields).to_string(),
            r#"{"Callee":"100","Caller":"200","Duration":63,"Id":"c1","Started":"2026-11-22T10:00:00Z","Type":"ended"}"#
        );
        assert!(parse_record("lost c1 200 100 2026-11-22T10:00:00Z").is_err());
        assert!(parse_record("missed c1 200").is_err());
        assert!(parse_record("ended c1 200 100 2026-11-22T10:00:00Z soon").is_err());
    }
}
