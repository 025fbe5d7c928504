//! Parse value encodings shared by the feed (which produces them) and the matcher (which reads
//! them): ISO-8601 instants, `{"__type":"Date","iso":…}`, Parse's `$relativeTime` texts, and
//! the `__type` tag of typed values.

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};

/// The `__type` of a typed value (`{"__type": "Date", …}`).
pub fn type_tag(value: &Value) -> Option<&str> {
    value.as_object()?.get("__type")?.as_str()
}

/// Whether an object has no `__type` or one of `tags`: Parse's SDK reads some typed values from
/// untagged JSON too.
pub fn untagged_or(map: &Map<String, Value>, tags: &[&str]) -> bool {
    map.get("__type").is_none_or(|tag| tag.as_str().is_some_and(|tag| tags.contains(&tag)))
}

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
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_millis())
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

/// The offset from now, in milliseconds, that a Parse `$relativeTime` text names: `"in 2 hours"`
/// (future), `"3 days ago"` (past), `"now"`; several `number unit` pairs add up
/// (`"in 1 day 2 hr"`). Like Parse Server's `relativeTimeToDate`: case-insensitive, integer
/// amounts, units `sec(s)`/`second(s)`, `min(s)`/`minute(s)`, `hr(s)`/`hour(s)`, `d`/`day(s)`,
/// `wk(s)`/`week(s)`, `yr(s)`/`year(s)` (365 days); livegate also accepts `mo(s)`/`month(s)`
/// (30 days). The error text is Parse's.
pub fn relative_time_offset(text: &str) -> Result<i64, String> {
    let lower = text.to_lowercase();
    let mut parts: Vec<&str> = lower.split_whitespace().collect();
    let now = parts == ["now"];
    let future = parts.first() == Some(&"in");
    let past = parts.last() == Some(&"ago");
    if !future && !past && !now {
        return Err("Time should either start with 'in' or end with 'ago'".into());
    }
    if future && past {
        return Err("Time cannot have both 'in' and 'ago'".into());
    }
    if now {
        return Ok(0);
    }
    if future {
        parts.remove(0);
    } else {
        parts.pop();
    }
    if !parts.len().is_multiple_of(2) {
        return Err("Invalid time string. Dangling unit or number.".into());
    }
    let mut seconds: i64 = 0;
    for pair in parts.chunks_exact(2) {
        let &[number, unit] = pair else { continue };
        let Ok(amount) = number.parse::<i64>() else {
            return Err(format!("'{number}' is not an integer."));
        };
        let unit_seconds: i64 = match unit {
            "yr" | "yrs" | "year" | "years" => 365 * 86_400,
            "mo" | "mos" | "month" | "months" => 30 * 86_400,
            "wk" | "wks" | "week" | "weeks" => 7 * 86_400,
            "d" | "day" | "days" => 86_400,
            "hr" | "hrs" | "hour" | "hours" => 3_600,
            "min" | "mins" | "minute" | "minutes" => 60,
            "sec" | "secs" | "second" | "seconds" => 1,
            _ => return Err(format!("Invalid interval: '{unit}'")),
        };
        seconds = amount
            .checked_mul(unit_seconds)
            .and_then(|s| seconds.checked_add(s))
            .ok_or_else(|| "Time is out of range.".to_string())?;
    }
    let millis = seconds.checked_mul(1_000).and_then(|ms| if past { ms.checked_neg() } else { Some(ms) });
    millis.ok_or_else(|| "Time is out of range.".to_string())
}

/// The current instant in milliseconds since the epoch.
pub fn now_millis() -> i64 {
    Utc::now().timestamp_millis()
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

    #[test]
    fn relative_times_like_parse() {
        assert_eq!(relative_time_offset("now"), Ok(0));
        assert_eq!(relative_time_offset(" NOW "), Ok(0));
        assert_eq!(relative_time_offset("in 2 hours"), Ok(7_200_000));
        assert_eq!(relative_time_offset("3 days ago"), Ok(-3 * 86_400_000));
        assert_eq!(relative_time_offset("in 1 day 2 hr"), Ok(93_600_000));
        assert_eq!(relative_time_offset("1 yr ago"), Ok(-365 * 86_400_000));
        assert_eq!(relative_time_offset("in 1 month"), Ok(30 * 86_400_000));
        assert_eq!(relative_time_offset("in 1 wk 1 min 1 sec"), Ok(604_861_000));
        assert_eq!(relative_time_offset("in 0 days"), Ok(0));
        assert_eq!(relative_time_offset("in -1 day"), Ok(-86_400_000));
        assert_eq!(relative_time_offset("2 days"), Err("Time should either start with 'in' or end with 'ago'".into()));
        assert_eq!(relative_time_offset("in 2 days ago"), Err("Time cannot have both 'in' and 'ago'".into()));
        assert_eq!(relative_time_offset("in 2"), Err("Invalid time string. Dangling unit or number.".into()));
        assert_eq!(relative_time_offset("in 1.5 days"), Err("'1.5' is not an integer.".into()));
        assert_eq!(relative_time_offset("in 2 fortnights"), Err("Invalid interval: 'fortnights'".into()));
        assert_eq!(relative_time_offset("in 9223372036854775807 years"), Err("Time is out of range.".into()));
        assert_eq!(relative_time_offset(""), Err("Time should either start with 'in' or end with 'ago'".into()));
    }
}
