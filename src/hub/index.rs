//! Equality index over a class's distinct queries, so a change costs a hash lookup per indexed
//! field instead of one evaluation per query.
//!
//! A query whose top level holds `field: <string | number | boolean>` (or `{"$eq": scalar}`)
//! can only match an object whose `field` equals that scalar or is an array containing it, so
//! it is filed under (field, scalar). A change looks up the values its old and new images hold
//! at each indexed field; only those queries, plus the ones that could not be indexed, are
//! evaluated. The candidates are then matched in full, so the index only ever narrows.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use crate::query::resolve_path;

/// A scalar as the equality matcher compares it: strings and booleans exactly, numbers by
/// value (1 == 1.0).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scalar {
    String(String),
    Number(u64),
    Bool(bool),
}

impl Scalar {
    pub fn of(value: &Value) -> Option<Scalar> {
        match value {
            Value::String(s) => Some(Scalar::String(s.clone())),
            Value::Bool(b) => Some(Scalar::Bool(*b)),
            Value::Number(n) => {
                n.as_f64().map(|f| Scalar::Number(if f == 0.0 { 0.0f64.to_bits() } else { f.to_bits() }))
            }
            _ => None,
        }
    }
}

/// Where a query is filed: a top-level (possibly dotted) field and the scalar it must equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IndexEntry {
    pub field: String,
    pub value: Scalar,
}

impl IndexEntry {
    /// The entry for a `where`, when one of its top-level constraints is a scalar equality.
    pub fn of(where_: &Map<String, Value>) -> Option<IndexEntry> {
        where_.iter().filter(|(field, _)| !field.starts_with('$')).find_map(|(field, constraint)| {
            let scalar = match constraint {
                Value::Object(ops) if ops.len() == 1 => ops.get("$eq").and_then(Scalar::of),
                other => Scalar::of(other),
            }?;
            Some(IndexEntry { field: field.clone(), value: scalar })
        })
    }
}

/// Query keys of one class, indexed where possible.
#[derive(Debug, Default)]
pub struct QueryIndex {
    by_field: HashMap<String, HashMap<Scalar, HashSet<String>>>,
    scanned: HashSet<String>,
}

impl QueryIndex {
    pub fn insert(&mut self, key: &str, entry: Option<&IndexEntry>) {
        match entry {
            Some(e) => {
                self.by_field
                    .entry(e.field.clone())
                    .or_default()
                    .entry(e.value.clone())
                    .or_default()
                    .insert(key.to_string());
            }
            None => {
                self.scanned.insert(key.to_string());
            }
        }
    }

    pub fn remove(&mut self, key: &str, entry: Option<&IndexEntry>) {
        let Some(e) = entry else {
            self.scanned.remove(key);
            return;
        };
        let Some(buckets) = self.by_field.get_mut(&e.field) else { return };
        if let Some(keys) = buckets.get_mut(&e.value) {
            keys.remove(key);
            if keys.is_empty() {
                buckets.remove(&e.value);
            }
        }
        if buckets.is_empty() {
            self.by_field.remove(&e.field);
        }
    }

    /// Keys of every query that may match one of `images`, each once.
    pub fn candidates<'a>(&'a self, images: &[&Map<String, Value>]) -> HashSet<&'a str> {
        let mut out: HashSet<&str> = self.scanned.iter().map(String::as_str).collect();
        for (field, buckets) in &self.by_field {
            for image in images {
                let Some(value) = resolve_path(image, field) else { continue };
                let elements = value.as_array().into_iter().flatten();
                for candidate in std::iter::once(value).chain(elements) {
                    if let Some(keys) = Scalar::of(candidate).and_then(|s| buckets.get(&s)) {
                        out.extend(keys.iter().map(String::as_str));
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn entries_come_from_top_level_scalar_equalities() {
        let entry = |v: Value| IndexEntry::of(&map(v));
        assert_eq!(
            entry(json!({"room": "a"})),
            Some(IndexEntry { field: "room".into(), value: Scalar::String("a".into()) })
        );
        assert_eq!(entry(json!({"n": {"$eq": 1}})).unwrap().value, Scalar::of(&json!(1.0)).unwrap());
        assert_eq!(entry(json!({"a.b": true})).unwrap().field, "a.b");
        assert_eq!(entry(json!({"n": {"$gt": 1}})), None);
        assert_eq!(entry(json!({"n": null})), None);
        assert_eq!(entry(json!({"$or": [{"a": 1}]})), None);
        assert_eq!(entry(json!({})), None);
    }

    #[test]
    fn candidates_cover_old_and_new_values_and_array_elements() {
        let mut index = QueryIndex::default();
        index.insert("qa", IndexEntry::of(&map(json!({"room": "a"}))).as_ref());
        index.insert("qb", IndexEntry::of(&map(json!({"room": "b"}))).as_ref());
        index.insert("qt", IndexEntry::of(&map(json!({"tags": "x"}))).as_ref());
        index.insert("scan", None);
        fn got(index: &QueryIndex, images: &[&Map<String, Value>]) -> Vec<String> {
            let mut v: Vec<&str> = index.candidates(images).into_iter().collect();
            v.sort();
            v.into_iter().map(String::from).collect()
        }
        assert_eq!(got(&index, &[&map(json!({"room": "a"}))]), ["qa", "scan"]);
        assert_eq!(got(&index, &[&map(json!({"room": "a"})), &map(json!({"room": "b"}))]), ["qa", "qb", "scan"]);
        assert_eq!(got(&index, &[&map(json!({"room": "c", "tags": ["y", "x"]}))]), ["qt", "scan"]);
        index.remove("qa", IndexEntry::of(&map(json!({"room": "a"}))).as_ref());
        index.remove("scan", None);
        assert_eq!(got(&index, &[&map(json!({"room": "a"}))]), Vec::<String>::new());
    }
}
