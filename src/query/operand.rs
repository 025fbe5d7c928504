//! Constraint values, decoded once at compile time, and how they compare with object values.

use std::cmp::Ordering as Cmp;

use serde_json::{Map, Value};

use super::geo::{self, Point};
use crate::value::{date_millis, now_millis, parse_instant, relative_time_offset, type_tag, untagged_or};

#[derive(Debug, Clone)]
pub enum Operand {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    /// Milliseconds since the epoch.
    Date(i64),
    /// `{"$relativeTime": …}` in a range operator: now plus this many milliseconds, now being
    /// the moment of each comparison.
    RelativeDate(i64),
    /// Also how `{"__type":"Object",…}` constraints (a full object) are read.
    Pointer {
        class_name: String,
        object_id: String,
    },
    GeoPoint(Point),
    Bytes(String),
    File {
        name: String,
        url: Option<String>,
    },
    Polygon(Vec<Point>),
    /// Arrays, embedded objects and other typed values compare as JSON.
    Json(Value),
}

#[derive(Debug, Clone, Copy)]
pub enum Ordering {
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

impl Ordering {
    /// Whether `value cmp operand` satisfies this operator.
    pub fn accepts(self, value_vs_operand: Cmp) -> bool {
        match self {
            Ordering::Less => value_vs_operand == Cmp::Less,
            Ordering::LessOrEqual => value_vs_operand != Cmp::Greater,
            Ordering::Greater => value_vs_operand == Cmp::Greater,
            Ordering::GreaterOrEqual => value_vs_operand != Cmp::Less,
        }
    }
}

pub const RELATIVE_TIME_ONLY_IN_RANGES: &str =
    "$relativeTime can only be used with the $lt, $lte, $gt, and $gte operators";

fn text(map: &Map<String, Value>, key: &str) -> Option<String> {
    map.get(key).and_then(Value::as_str).map(str::to_string)
}

/// A pointer-like value: `{"__type":"Pointer"|"Object","className":…,"objectId":…}`, or the
/// same without `__type` (Parse's matcher compares only `className` and `objectId`).
pub fn pointer_of(value: &Value) -> Option<(&str, &str)> {
    let map = value.as_object().filter(|m| untagged_or(m, &["Pointer", "Object"]))?;
    Some((map.get("className")?.as_str()?, map.get("objectId")?.as_str()?))
}

impl Operand {
    /// A constraint value as used by equality, `$ne`, `$in`, `$nin`, `$all`, `$containedBy`.
    pub fn decode(value: &Value) -> Result<Operand, String> {
        Ok(match value {
            Value::Null => Operand::Null,
            Value::Bool(b) => Operand::Bool(*b),
            Value::Number(n) => Operand::Number(n.as_f64().ok_or("number out of range")?),
            Value::String(s) => Operand::String(s.clone()),
            Value::Array(_) => Operand::Json(value.clone()),
            Value::Object(map) if map.contains_key("$relativeTime") => {
                return Err(RELATIVE_TIME_ONLY_IN_RANGES.into());
            }
            Value::Object(map) => match type_tag(value) {
                Some("Date") => {
                    Operand::Date(date_millis(value).ok_or("invalid Date: iso must be an ISO-8601 string")?)
                }
                Some(kind @ ("Pointer" | "Object")) => match (text(map, "className"), text(map, "objectId")) {
                    (Some(class_name), Some(object_id)) => Operand::Pointer { class_name, object_id },
                    _ => return Err(format!("invalid {kind}: className and objectId must be strings")),
                },
                Some("GeoPoint") => Operand::GeoPoint(geo::decode_point(value)?),
                Some("Bytes") => match text(map, "base64") {
                    Some(base64) => Operand::Bytes(base64),
                    None => return Err("invalid Bytes: base64 must be a string".into()),
                },
                Some("File") => {
                    let Some(name) = text(map, "name") else {
                        return Err("invalid File: name must be a string".into());
                    };
                    let url = match map.get("url") {
                        None | Some(Value::Null) => None,
                        Some(Value::String(url)) => Some(url.clone()),
                        Some(_) => return Err("invalid File: url must be a string".into()),
                    };
                    Operand::File { name, url }
                }
                Some("Polygon") => Operand::Polygon(geo::decode_polygon(value)?),
                _ => Operand::Json(value.clone()),
            },
        })
    }

    /// A bound of `$lt`/`$lte`/`$gt`/`$gte`: a value, or `{"$relativeTime": "…"}`.
    pub fn decode_bound(value: &Value) -> Result<Operand, String> {
        let Some(relative) = value.as_object().and_then(|m| m.get("$relativeTime")) else {
            return Operand::decode(value);
        };
        if value.as_object().map_or(0, Map::len) != 1 {
            return Err("$relativeTime must be the only key of its object".into());
        }
        let Some(text) = relative.as_str() else {
            return Err("bad $relativeTime value: must be a string".into());
        };
        relative_time_offset(text).map(Operand::RelativeDate).map_err(|e| format!("bad $relativeTime value. {e}"))
    }

    /// Equality with one value (no array expansion; the caller does that).
    pub fn equals(&self, value: &Value) -> bool {
        match self {
            Operand::Null => value.is_null(),
            Operand::Bool(b) => value.as_bool() == Some(*b),
            Operand::Number(n) => value.as_f64() == Some(*n),
            Operand::String(s) => value.as_str() == Some(s.as_str()),
            Operand::Date(ms) => instant_of(value) == Some(*ms),
            Operand::RelativeDate(_) => false,
            Operand::Pointer { class_name, object_id } => {
                pointer_of(value) == Some((class_name.as_str(), object_id.as_str()))
            }
            Operand::GeoPoint(point) => geo::tagged_point_of(value) == Some(*point),
            Operand::Bytes(base64) => {
                type_tag(value) == Some("Bytes") && value.get("base64").and_then(Value::as_str) == Some(base64.as_str())
            }
            Operand::File { name, url } => {
                type_tag(value) == Some("File")
                    && value.get("name").and_then(Value::as_str) == Some(name.as_str())
                    && match (url, value.get("url").and_then(Value::as_str)) {
                        (Some(expected), Some(actual)) => expected == actual,
                        _ => true,
                    }
            }
            Operand::Polygon(vertices) => geo::polygon_of(value).is_some_and(|v| v == *vertices),
            Operand::Json(expected) => json_equals(expected, value),
        }
    }

    /// Membership in an `$in`/`$nin`/`$containedBy` list: equality, and a bare objectId string
    /// also matches a pointer with that objectId (Parse's `containedIn(key, [objectId])`).
    pub fn listed(&self, value: &Value) -> bool {
        match self {
            Operand::String(id) => {
                value.as_str() == Some(id.as_str()) || pointer_of(value).is_some_and(|(_, object_id)| object_id == id)
            }
            other => other.equals(value),
        }
    }

    /// `value` compared with this operand, when both are of one comparable kind (numbers,
    /// strings, instants).
    pub fn compare(&self, value: &Value) -> Option<Cmp> {
        match self {
            Operand::Number(n) => value.as_f64()?.partial_cmp(n),
            Operand::String(s) => Some(value.as_str()?.cmp(s.as_str())),
            Operand::Date(ms) => Some(instant_of(value)?.cmp(ms)),
            Operand::RelativeDate(offset) => Some(instant_of(value)?.cmp(&now_millis().checked_add(*offset)?)),
            _ => None,
        }
    }
}

/// A Date value, or an ISO string (how `createdAt`/`updatedAt` travel) read as an instant.
fn instant_of(value: &Value) -> Option<i64> {
    match value {
        Value::String(s) => parse_instant(s),
        _ => date_millis(value),
    }
}

/// Deep JSON equality where numbers compare by value (1 == 1.0).
fn json_equals(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_equals(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_equals(v, w)))
        }
        _ => a == b,
    }
}
