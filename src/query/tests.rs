use serde_json::{json, Map, Value};

use super::*;

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

fn compile(where_: Value) -> Result<Query, QueryError> {
    Query::compile(&obj(where_), QueryLimits::default())
}

fn check(where_: Value, object: Value) -> bool {
    compile(where_.clone()).unwrap_or_else(|e| panic!("{where_} does not compile: {e}")).matches(&obj(object))
}

/// (where, object, expected)
fn cases() -> Vec<(Value, Value, bool)> {
    let date = |iso: &str| json!({"__type": "Date", "iso": iso});
    vec![
        (json!({}), json!({"a": 1}), true),
        (json!({"a": 1}), json!({"a": 1}), true),
        (json!({"a": 1}), json!({"a": 1.0}), true),
        (json!({"a": 1}), json!({"a": "1"}), false),
        (json!({"a": 1}), json!({}), false),
        (json!({"tags": "tbt"}), json!({"tags": ["a", "tbt"]}), true),
        (json!({"tags": "x"}), json!({"tags": ["a", "tbt"]}), false),
        (json!({"a": null}), json!({}), true),
        (json!({"a": null}), json!({"a": null}), true),
        (json!({"a": null}), json!({"a": 0}), false),
        (json!({"a": [1, 2]}), json!({"a": [1, 2]}), true),
        (json!({"a": [1, 2]}), json!({"a": [2, 1]}), false),
        (json!({"a": {"x": 1}}), json!({"a": {"x": 1}}), true),
        (json!({"a": {"$eq": 3}}), json!({"a": 3}), true),
        (json!({"a": {"$eq": 3}}), json!({"a": [3, 4]}), true),
        (json!({"a": {"$ne": 3}}), json!({"a": 4}), true),
        (json!({"a": {"$ne": 3}}), json!({}), true),
        (json!({"a": {"$ne": null}}), json!({}), false),
        (json!({"a": {"$ne": null}}), json!({"a": 1}), true),
        (json!({"a": {"$ne": 3}}), json!({"a": [3]}), false),
        (json!({"a": {"$lt": 3}}), json!({"a": 2}), true),
        (json!({"a": {"$lt": 3}}), json!({"a": 3}), false),
        (json!({"a": {"$lte": 3}}), json!({"a": 3}), true),
        (json!({"a": {"$gt": 3}}), json!({"a": 4}), true),
        (json!({"a": {"$gte": 3}}), json!({"a": 2}), false),
        (json!({"a": {"$lt": 3}}), json!({}), false),
        (json!({"a": {"$lt": 3}}), json!({"a": null}), false),
        (json!({"a": {"$lt": 3}}), json!({"a": "2"}), false),
        (json!({"a": {"$gt": "b"}}), json!({"a": "c"}), true),
        (json!({"a": {"$gt": 1, "$lt": 5}}), json!({"a": 3}), true),
        (json!({"a": {"$gt": 1, "$lt": 5}}), json!({"a": 6}), false),
        (json!({"a": {"$in": [1, 2]}}), json!({"a": 2}), true),
        (json!({"a": {"$in": [1, 2]}}), json!({"a": [5, 2]}), true),
        (json!({"a": {"$in": [1, 2]}}), json!({}), false),
        (json!({"a": {"$in": ["1"]}}), json!({"a": 1}), false),
        (json!({"a": {"$nin": [1, 2]}}), json!({"a": 3}), true),
        (json!({"a": {"$nin": [1, 2]}}), json!({}), true),
        (json!({"a": {"$nin": [1, 2]}}), json!({"a": [3, 1]}), false),
        (json!({"a": {"$exists": true}}), json!({"a": null}), true),
        (json!({"a": {"$exists": true}}), json!({}), false),
        (json!({"a": {"$exists": false}}), json!({}), true),
        (json!({"$or": [{"a": 1}, {"b": 2}]}), json!({"b": 2}), true),
        (json!({"$or": [{"a": 1}, {"b": 2}]}), json!({"b": 3}), false),
        (json!({"$and": [{"a": 1}, {"b": 2}]}), json!({"a": 1, "b": 2}), true),
        (json!({"$and": [{"a": 1}, {"b": 2}]}), json!({"a": 1}), false),
        (json!({"$nor": [{"a": 1}, {"b": 2}]}), json!({"a": 3}), true),
        (json!({"$nor": [{"a": 1}, {"b": 2}]}), json!({"b": 2}), false),
        (json!({"$or": [{"a": 1}], "c": 1}), json!({"a": 1, "c": 2}), false),
        (json!({"x.y": 1}), json!({"x": {"y": 1}}), true),
        (json!({"x.y.z": {"$gt": 0}}), json!({"x": {"y": {"z": 1}}}), true),
        (json!({"x.y": 1}), json!({"x": 1}), false),
        (json!({"x.y": {"$exists": false}}), json!({"x": "str"}), true),
        (json!({"d": {"$lt": date("2026-01-02T00:00:00Z")}}), json!({"d": date("2026-01-01T00:00:00.000Z")}), true),
        (json!({"d": {"$lt": date("2026-01-02T00:00:00Z")}}), json!({"d": date("2026-01-03T00:00:00.000Z")}), false),
        (json!({"d": date("2026-01-01T00:00:00Z")}), json!({"d": date("2026-01-01T00:00:00.000Z")}), true),
        (json!({"createdAt": {"$gte": date("2026-01-01T00:00:00Z")}}), json!({"createdAt": "2026-05-01T00:00:00.000Z"}), true),
        (json!({"createdAt": {"$gte": date("2026-01-01T00:00:00Z")}}), json!({"createdAt": "2025-05-01T00:00:00.000Z"}), false),
        (json!({"d": {"$lt": date("2026-01-02T00:00:00Z")}}), json!({"d": 5}), false),
        (
            json!({"owner": {"__type": "Pointer", "className": "_User", "objectId": "u1"}}),
            json!({"owner": {"__type": "Pointer", "className": "_User", "objectId": "u1"}}),
            true,
        ),
        (
            json!({"owner": {"__type": "Pointer", "className": "_User", "objectId": "u1"}}),
            json!({"owner": {"__type": "Pointer", "className": "_User", "objectId": "u2"}}),
            false,
        ),
        (
            json!({"at": {"__type": "GeoPoint", "latitude": 1, "longitude": 2}}),
            json!({"at": {"__type": "GeoPoint", "latitude": 1.0, "longitude": 2.0}}),
            true,
        ),
        (json!({"flag": true}), json!({"flag": true}), true),
        (json!({"flag": true}), json!({"flag": 1}), false),
    ]
}

#[test]
fn table_of_cases() {
    for (where_, object, expected) in cases() {
        assert_eq!(check(where_.clone(), object.clone()), expected, "where {where_} on {object}");
    }
}

#[test]
fn refuses_what_it_cannot_evaluate() {
    let refused = [
        (json!({"a": {"$regex": "x"}}), "Unsupported query operator: $regex"),
        (json!({"$relatedTo": {}}), "Unsupported query operator: $relatedTo"),
        (json!({"a": {"$inQuery": {}}}), "Unsupported query operator: $inQuery"),
        (json!({"a": {"$foo": 1}}), "Invalid query operator: $foo"),
        (json!({"$or": {"a": 1}}), "$or must be a non-empty array"),
        (json!({"$and": [1]}), "$and must be an array of objects"),
        (json!({"a": {"$in": 1}}), "a.$in must be an array"),
        (json!({"a": {"$exists": 1}}), "a.$exists must be a boolean"),
        (json!({"a": {"$gt": 1, "b": 2}}), "Invalid constraint on a: operators mixed with plain keys"),
        (json!({"a": {"__type": "Date", "iso": "nope"}}), "a: invalid Date: iso must be an ISO-8601 string"),
        (json!({"a..b": 1}), "Invalid field name: \"a..b\""),
    ];
    for (where_, message) in refused {
        assert_eq!(compile(where_.clone()).unwrap_err().0, message, "{where_}");
    }
}

#[test]
fn limits_nesting_and_list_sizes() {
    let mut deep = json!({"a": 1});
    for _ in 0..10 {
        deep = json!({"$or": [deep]});
    }
    let err = compile(deep).unwrap_err();
    assert_eq!(err.0, "Query condition nesting depth exceeds maximum allowed depth of 10");
    let big: Vec<i32> = (0..1001).collect();
    assert!(compile(json!({"a": {"$in": big}})).unwrap_err().0.contains("limit of 1000"));
}

#[test]
fn canonical_key_ignores_key_order_only() {
    let a = canonical_key("C", &obj(json!({"a": 1, "b": {"y": 1, "x": [2, 1]}})));
    let b = canonical_key("C", &obj(json!({"b": {"x": [2, 1], "y": 1}, "a": 1})));
    assert_eq!(a, b);
    assert_ne!(a, canonical_key("D", &obj(json!({"a": 1, "b": {"y": 1, "x": [2, 1]}}))));
    assert_ne!(a, canonical_key("C", &obj(json!({"a": 1, "b": {"y": 1, "x": [1, 2]}}))));
    assert_ne!(canonical_key("C", &obj(json!({"a": 15}))), canonical_key("C", &obj(json!({"a": "15"}))));
}
