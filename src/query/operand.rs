//! Constraint values, decoded once at compile time, and how they compare with object values.

use std::cmp::Ordering as Cmp;

use serde_json::Value;

use crate::value::{date_millis, parse_instant};

#[derive(Debug, Clone)]
pub enum Operand {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    /// Milliseconds since the epoch.
    Date(i64),
    Pointer { class_name: String, object_id: String },
    GeoPoint { latitude: f64, longitude: f64 },
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

fn type_tag(value: &Value) -> Option<&str> {
    value.as_object()?.get("__type")?.as_str()
}

impl Operand {
    pub fn decode(value: &Value) -> Result<Operand, String> {
        Ok(match value {
            Value::Null => Operand::Null,
            Value::Bool(b) => Operand::Bool(*b),
            Value::Number(n) => Operand::Number(n.as_f64().ok_or("number out of range")?),
            Value::String(s) => Operand::String(s.clone()),
            Value::Array(_) => Operand::Json(value.clone()),
            Value::Object(map) => match type_tag(value) {
                Some("Date") => Operand::Date(date_millis(value).ok_or("invalid Date: iso must be an ISO-8601 string")?),
                Some("Pointer") => {
                    let text = |k: &str| map.get(k).and_then(Value::as_str).map(str::to_string);
                    match (text("className"), text("objectId")) {
                        (Some(class_name), Some(object_id)) => Operand::Pointer { class_name, object_id },
                        _ => return Err("invalid Pointer: className and objectId must be strings".into()),
                    }
                }
                Some("GeoPoint") => match geo_point(value) {
                    Some((latitude, longitude)) => Operand::GeoPoint { latitude, longitude },
                    None => return Err("invalid GeoPoint: latitude and longitude must be numbers".into()),
                },
                _ => Operand::Json(value.clone()),
            },
        })
    }

    /// Equality with one value (no array expansion; the caller does that).
    pub fn equals(&self, value: &Value) -> bool {
        match self {
            Operand::Null => value.is_null(),
            Operand::Bool(b) => value.as_bool() == Some(*b),
            Operand::Number(n) => value.as_f64() == Some(*n),
            Operand::String(s) => value.as_str() == Some(s.as_str()),
            Operand::Date(ms) => instant_of(value) == Some(*ms),
            Operand::Pointer { class_name, object_id } => {
                let Some(map) = value.as_object() else { return false };
                matches!(type_tag(value), Some("Pointer" | "Object"))
                    && map.get("className").and_then(Value::as_str) == Some(class_name.as_str())
                    && map.get("objectId").and_then(Value::as_str) == Some(object_id.as_str())
            }
            Operand::GeoPoint { latitude, longitude } => {
                type_tag(value) == Some("GeoPoint") && geo_point(value) == Some((*latitude, *longitude))
            }
            Operand::Json(expected) => json_equals(expected, value),
        }
    }

    /// `value` compared with this operand, when both are of one comparable kind.
    pub fn compare(&self, value: &Value) -> Option<Cmp> {
        match self {
            Operand::Number(n) => value.as_f64()?.partial_cmp(n),
            Operand::String(s) => Some(value.as_str()?.cmp(s.as_str())),
            Operand::Date(ms) => Some(instant_of(value)?.cmp(ms)),
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

fn geo_point(value: &Value) -> Option<(f64, f64)> {
    let map = value.as_object()?;
    Some((map.get("latitude")?.as_f64()?, map.get("longitude")?.as_f64()?))
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
