//! Parse value encodings shared by the feed (which produces them) and the matcher (which reads
//! them): ISO-8601 instants and `{"__type":"Date","iso":…}`.

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

/// Milliseconds since the Unix epoch of an ISO-8601 / RFC 3339 text, as PostgreSQL and Parse
/// write them: with an offset or `Z`, without one (read as UTC), or a bare date.
pub fn parse_instant(text: &str) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.timestamp_millis());
    }
    if let Ok(t) = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f") {
        return Some(t.and_utc().timestamp_millis());
    }
    if let Ok(t) = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f") {
        return Some(t.and_utc().timestamp_millis());
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d").ok().and_then(|d| d.and_hms_opt(0, 0, 0)).map(|t| t.and_utc().timestamp_millis())
}

/// Parse's ISO form: UTC, millisecond precision, `Z`.
pub fn format_instant(millis: i64) -> Option<String> {
    DateTime::<Utc>::from_timestamp_millis(millis).map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

pub fn date_json(iso: String) -> Value {
    json!({"__type": "Date", "iso": iso})
}

/// The instant of a Parse Date value (`{"__type":"Date","iso":…}`).
pub fn date_millis(value: &Value) -> Option<i64> {
    let map = value.as_object()?;
    if map.get("__type")?.as_str()? != "Date" {
        return None;
    }
    parse_instant(map.get("iso")?.as_str()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_round_trip_through_parse_form() {
        let ms = parse_instant("2026-11-22T10:00:00.123456+01:00").unwrap();
        assert_eq!(format_instant(ms).unwrap(), "2026-11-22T09:00:00.123Z");
        assert_eq!(parse_instant("2026-11-22T09:00:00.123"), Some(ms));
        assert_eq!(parse_instant("2026-11-22"), parse_instant("2026-11-22T00:00:00Z"));
        assert_eq!(parse_instant("infinity"), None);
        assert_eq!(date_millis(&date_json("2026-11-22T09:00:00.123Z".into())), Some(ms));
        assert_eq!(date_millis(&json!({"__type": "Pointer", "iso": "2026-11-22"})), None);
    }
}
