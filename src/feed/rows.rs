//! Row images (as `to_jsonb` wrote them) → Parse objects. Pure.
//!
//! `className` is the class of the table, `objectId` its primary key as a string (columns joined
//! with `:` for a composite key), `createdAt`/`updatedAt` come from the columns of those names or
//! `created_at`/`updated_at` as ISO strings, other timestamp and date columns become Parse Date
//! JSON, and no column whose name starts with `_` is ever copied. The read ACL comes from an
//! `ACL` or `_acl` column (Parse ACL JSON) or `_rperm` (text array).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::auth::access::ReadAcl;
use crate::hub::RowImage;
use crate::value::{date_json, format_instant, parse_instant};

/// What livegate knows of a watched table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableInfo {
    pub class: Arc<str>,
    pub primary_key: Vec<String>,
    /// Columns of type timestamp, timestamptz or date.
    pub date_columns: HashSet<String>,
    /// Every column, to notice a schema change.
    pub columns: HashSet<String>,
    /// Each column's type name (`pg_type.typname`), for what a snapshot can evaluate in SQL.
    pub column_types: HashMap<String, String>,
}

pub fn to_parse_object(info: &TableInfo, row: Map<String, Value>) -> RowImage {
    let mut object = Map::with_capacity(row.len() + 2);
    object.insert("className".into(), Value::String(info.class.to_string()));
    object.insert("objectId".into(), Value::String(object_id(info, &row)));
    let mut acl = None;
    let mut fields = Map::with_capacity(row.len());
    for (column, value) in row {
        match column.as_str() {
            "_rperm" => acl = Some(ReadAcl::from_rperm(&value)),
            "_acl" | "ACL" if !value.is_null() => acl = Some(ReadAcl::from_parse_acl(&value)),
            _ => {}
        }
        match column.as_str() {
            "createdAt" | "created_at" => {
                object.insert("createdAt".into(), iso_string(value));
            }
            "updatedAt" | "updated_at" => {
                object.insert("updatedAt".into(), iso_string(value));
            }
            hidden if hidden.starts_with('_') => {}
            _ => {
                let value = if info.date_columns.contains(&column) { date_value(value) } else { value };
                fields.insert(column, value);
            }
        }
    }
    object.extend(fields);
    RowImage { object, acl }
}

fn object_id(info: &TableInfo, row: &Map<String, Value>) -> String {
    let text = |v: Option<&Value>| match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    match info.primary_key.as_slice() {
        [single] => text(row.get(single)),
        [] => text(row.get("objectId").or_else(|| row.get("id"))),
        many => many.iter().map(|c| text(row.get(c))).collect::<Vec<_>>().join(":"),
    }
}

/// A timestamp in Parse's ISO form; values that are not instants (null, 'infinity', text that
/// is not a date) pass through unchanged.
fn iso_string(value: Value) -> Value {
    match value.as_str().and_then(parse_instant).and_then(format_instant) {
        Some(iso) => Value::String(iso),
        None => value,
    }
}

fn date_value(value: Value) -> Value {
    match value.as_str().and_then(parse_instant).and_then(format_instant) {
        Some(iso) => date_json(iso),
        None => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn info(pk: &[&str], dates: &[&str]) -> TableInfo {
        TableInfo {
            class: "Message".into(),
            primary_key: pk.iter().map(|s| s.to_string()).collect(),
            date_columns: dates.iter().map(|s| s.to_string()).collect(),
            columns: HashSet::new(),
            column_types: HashMap::new(),
        }
    }

    #[test]
    fn rows_become_parse_objects() {
        let row = json!({
            "id": 42,
            "body": "hi",
            "created_at": "2026-11-22T10:00:00.123456+00:00",
            "updated_at": "2026-11-22T11:00:00+01:00",
            "due": "2026-12-01",
            "seen": "2026-11-22T10:00:00",
            "_secret": "x",
            "meta": {"a": [1]},
            "ACL": {"*": {"read": true}}
        });
        let image = to_parse_object(
            &info(&["id"], &["created_at", "updated_at", "due", "seen"]),
            row.as_object().cloned().unwrap(),
        );
        assert_eq!(
            Value::Object(image.object),
            json!({
                "className": "Message",
                "objectId": "42",
                "createdAt": "2026-11-22T10:00:00.123Z",
                "updatedAt": "2026-11-22T10:00:00.000Z",
                "id": 42,
                "body": "hi",
                "due": {"__type": "Date", "iso": "2026-12-01T00:00:00.000Z"},
                "seen": {"__type": "Date", "iso": "2026-11-22T10:00:00.000Z"},
                "meta": {"a": [1]},
                "ACL": {"*": {"read": true}}
            })
        );
        assert!(image.acl.unwrap().public);
    }

    #[test]
    fn acl_from_hidden_columns_and_composite_keys() {
        let row = json!({"a": "x", "b": 2, "_rperm": ["u1"], "_acl": null});
        let image = to_parse_object(&info(&["a", "b"], &[]), row.as_object().cloned().unwrap());
        assert_eq!(image.object["objectId"], "x:2");
        assert!(!image.object.contains_key("_rperm"));
        let acl = image.acl.unwrap();
        assert_eq!(acl.users, ["u1"]);
        assert!(!acl.public);
        let no_acl = to_parse_object(&info(&["a"], &[]), json!({"a": "y", "ACL": null}).as_object().cloned().unwrap());
        assert!(no_acl.acl.is_none(), "a null ACL column is public");
    }
}
