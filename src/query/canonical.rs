//! The dedupe key of a subscription: class plus the `where` as canonical JSON (object keys
//! sorted at every level, arrays kept in order). Unlike Parse's queryHash it never lets two
//! different queries collide: it is the query itself, spelled one way.

use std::fmt::Write;

use serde_json::{Map, Value};

pub fn canonical_key(class_name: &str, where_: &Map<String, Value>) -> String {
    let mut out = String::with_capacity(class_name.len() + 64);
    write_str(&mut out, class_name);
    out.push(':');
    write_object(&mut out, where_);
    out
}

fn write_str(out: &mut String, s: &str) {
    let _ = write!(out, "{}", Value::String(s.to_string()));
}

fn write_object(out: &mut String, map: &Map<String, Value>) {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    out.push('{');
    for (i, (key, value)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_str(out, key);
        out.push(':');
        write_value(out, value);
    }
    out.push('}');
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Object(map) => write_object(out, map),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        scalar => {
            let _ = write!(out, "{scalar}");
        }
    }
}
