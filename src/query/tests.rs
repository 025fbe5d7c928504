use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::*;
use crate::testing::Rng;
use crate::value::{format_instant, now_millis};

mod patterns;

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

fn compile(where_: Value) -> Result<Query, QueryError> {
    Query::compile(&obj(where_), QueryLimits::default())
}

fn check(where_: Value, object: Value) -> bool {
    compile(where_.clone()).unwrap_or_else(|e| panic!("{where_} does not compile: {e}")).matches(&obj(object))
}

fn date(iso: &str) -> Value {
    json!({"__type": "Date", "iso": iso})
}

/// A Date `seconds` from now (negative: in the past).
fn date_from_now(seconds: i64) -> Value {
    date(&iso_from_now(seconds))
}

fn iso_from_now(seconds: i64) -> String {
    format_instant(now_millis() + seconds * 1000).unwrap()
}

fn ptr(class_name: &str, object_id: &str) -> Value {
    json!({"__type": "Pointer", "className": class_name, "objectId": object_id})
}

fn geo(latitude: f64, longitude: f64) -> Value {
    json!({"__type": "GeoPoint", "latitude": latitude, "longitude": longitude})
}

fn polygon(coordinates: Value) -> Value {
    json!({"__type": "Polygon", "coordinates": coordinates})
}

/// `Parse.Query.startsWith` / `endsWith` / `contains` encodings of user text.
fn quote(text: &str) -> String {
    format!("\\Q{}\\E", text.replace("\\E", "\\E\\\\E\\Q"))
}

const HOUR: i64 = 3_600;
const DAY: i64 = 86_400;

/// (where, object, expected)
fn cases() -> Vec<(Value, Value, bool)> {
    let u1 = ptr("_User", "u1");
    let u2 = ptr("_User", "u2");
    let sf = (37.7749, -122.4194);
    let la = geo(34.0522, -118.2437);
    let caltrain = json!({"location": geo(37.776346, -122.394218)});
    let santa_clara = json!({"location": geo(37.325635, -121.945753)});
    let bay_box =
        json!({"location": {"$within": {"$box": [geo(37.708813, -122.526398), geo(37.822802, -122.373962)]}}});
    let bay_polygon = json!({"location": {"$geoWithin": {"$polygon": [
        geo(37.85, -122.33), geo(37.85, -122.9), geo(37.68, -122.9), geo(37.68, -122.33)
    ]}}});
    let contains_half = json!({"bounds": {"$geoIntersects": {"$point": geo(0.5, 0.5)}}});
    let starts_with_a_and_b = json!({"tags": {"$all": [{"$regex": "^\\Qa\\E"}, {"$regex": "^\\Qb\\E"}]}});
    vec![
        // Equality, null and missing.
        (json!({}), json!({"a": 1}), true),
        (json!({"a": 1}), json!({"a": 1}), true),
        (json!({"a": 1}), json!({"a": 1.0}), true),
        (json!({"a": 1}), json!({"a": "1"}), false),
        (json!({"a": 1}), json!({}), false),
        (json!({"a": 1.5}), json!({"a": 1.5}), true),
        (json!({"a": "A"}), json!({"a": "a"}), false),
        (json!({"a": "é"}), json!({"a": "é"}), true),
        (json!({"a": 0}), json!({"a": false}), false),
        (json!({"a": false}), json!({}), false),
        (json!({"a": ""}), json!({"a": null}), false),
        (json!({"a": "x"}), json!({"a": {"x": 1}}), false),
        (json!({"tags": "tbt"}), json!({"tags": ["a", "tbt"]}), true),
        (json!({"tags": "x"}), json!({"tags": ["a", "tbt"]}), false),
        (json!({"tags": "selfie"}), json!({"tags": ["nofilter", "latergram", "tbt"]}), false),
        (json!({"a": null}), json!({}), true),
        (json!({"a": null}), json!({"a": null}), true),
        (json!({"a": null}), json!({"a": 0}), false),
        (json!({"a": null}), json!({"a": [1, null]}), true),
        (json!({"a": [1, 2]}), json!({"a": [1, 2]}), true),
        (json!({"a": [1, 2]}), json!({"a": [2, 1]}), false),
        (json!({"a": [1, 2]}), json!({"a": [[1, 2], 3]}), true),
        (json!({"a": []}), json!({"a": []}), true),
        (json!({"a": []}), json!({"a": [1]}), false),
        (json!({"a": []}), json!({}), false),
        (json!({"a": {"x": 1}}), json!({"a": {"x": 1}}), true),
        (json!({"a": {"x": 1, "y": 2}}), json!({"a": {"y": 2, "x": 1.0}}), true),
        (json!({"a": {"x": 1}}), json!({"a": {"x": 1, "y": 2}}), false),
        (json!({"a": {}}), json!({"a": {}}), true),
        (json!({"a": {}}), json!({"a": {"b": 1}}), false),
        (json!({"flag": true}), json!({"flag": true}), true),
        (json!({"flag": true}), json!({"flag": 1}), false),
        (json!({"objectId": {"$eq": "Person2"}}), json!({"objectId": "Person2", "score": 12}), true),
        // $eq / $ne.
        (json!({"a": {"$eq": 3}}), json!({"a": 3}), true),
        (json!({"a": {"$eq": 3}}), json!({"a": [3, 4]}), true),
        (json!({"a": {"$eq": [1, 2]}}), json!({"a": [1, 2]}), true),
        (json!({"a": {"$eq": null}}), json!({}), true),
        (json!({"a": {"$eq": null}}), json!({"a": null}), true),
        (json!({"a": {"$eq": null}}), json!({"a": 0}), false),
        (json!({"a": {"$ne": 3}}), json!({"a": 4}), true),
        (json!({"a": {"$ne": 3}}), json!({}), true),
        (json!({"a": {"$ne": 1}}), json!({"a": "1"}), true),
        (json!({"a": {"$ne": null}}), json!({}), false),
        (json!({"a": {"$ne": null}}), json!({"a": null}), false),
        (json!({"a": {"$ne": null}}), json!({"a": 1}), true),
        (json!({"a": {"$ne": 3}}), json!({"a": [3]}), false),
        (json!({"a": {"$ne": "x"}}), json!({"a": ["y", "z"]}), true),
        (json!({"a": {"$ne": [1, 2]}}), json!({"a": [1, 2]}), false),
        (json!({"owner": {"$ne": u1}}), json!({"owner": u2}), true),
        (json!({"owner": {"$ne": u1}}), json!({"owner": u1}), false),
        (json!({"a": {"$exists": true, "$ne": null}}), json!({"a": null}), false),
        // Ranges: one kind only, any element of an array, never a missing field.
        (json!({"a": {"$lt": 3}}), json!({"a": 2}), true),
        (json!({"a": {"$lt": 3}}), json!({"a": 3}), false),
        (json!({"a": {"$lte": 3}}), json!({"a": 3}), true),
        (json!({"a": {"$gt": 3}}), json!({"a": 4}), true),
        (json!({"a": {"$gte": 3}}), json!({"a": 2}), false),
        (json!({"a": {"$gte": 1.5}}), json!({"a": 1.5}), true),
        (json!({"a": {"$lt": 3}}), json!({}), false),
        (json!({"a": {"$lt": 3}}), json!({"a": null}), false),
        (json!({"a": {"$gt": 1}}), json!({"a": null}), false),
        (json!({"a": {"$lt": null}}), json!({"a": null}), false),
        (json!({"a": {"$lt": 3}}), json!({"a": "2"}), false),
        (json!({"a": {"$gt": "a"}}), json!({"a": 5}), false),
        (json!({"a": {"$gte": 0}}), json!({"a": true}), false),
        (json!({"a": {"$gt": "b"}}), json!({"a": "c"}), true),
        (json!({"a": {"$lt": "b"}}), json!({"a": "B"}), true),
        (json!({"a": {"$gt": 1, "$lt": 5}}), json!({"a": 3}), true),
        (json!({"a": {"$gt": 1, "$lt": 5}}), json!({"a": 6}), false),
        (json!({"a": {"$gt": -1, "$lt": 1}}), json!({"a": 0}), true),
        (json!({"a": {"$gt": 5, "$lt": 1}}), json!({"a": 3}), false),
        (json!({"a": {"$lte": 3}}), json!({"a": [5, 3]}), true),
        (json!({"a": {"$gt": 3}}), json!({"a": [1, 2]}), false),
        (json!({"a": {"$gt": 1, "$lt": 3}}), json!({"a": [0, 4]}), true),
        (json!({"score": {"$lt": 15}}), json!({"score": 12}), true),
        (json!({"score": {"$lte": 12}}), json!({"score": 12}), true),
        (json!({"score": {"$gt": 12}}), json!({"score": 12}), false),
        // Dates, and createdAt/updatedAt ISO strings read as instants.
        (json!({"d": {"$lt": date("2026-01-02T00:00:00Z")}}), json!({"d": date("2026-01-01T00:00:00.000Z")}), true),
        (json!({"d": {"$lt": date("2026-01-02T00:00:00Z")}}), json!({"d": date("2026-01-03T00:00:00.000Z")}), false),
        (json!({"d": {"$gte": date("2026-01-01T00:00:00Z")}}), json!({"d": date("2026-01-01T00:00:00.000Z")}), true),
        (json!({"d": {"$gt": date("2026-01-01T00:00:00Z")}}), json!({"d": date("2026-01-01T00:00:00.000Z")}), false),
        (json!({"d": {"$lte": date("2026-01-01T00:00:00Z")}}), json!({"d": date("2026-01-01T01:00:00+01:00")}), true),
        (json!({"d": date("2026-01-01T00:00:00Z")}), json!({"d": date("2026-01-01T00:00:00.000Z")}), true),
        (json!({"d": date("2026-01-01T00:00:00Z")}), json!({"d": date("2026-01-01T00:00:00.001Z")}), false),
        (json!({"d": date("2026-01-01T00:00:00Z")}), json!({"d": "2026-01-01T00:00:00.000Z"}), true),
        (json!({"d": date("2026-01-01T00:00:00Z")}), json!({"d": [date("2025-01-01"), date("2026-01-01")]}), true),
        (
            json!({"d": {"$gt": date("2020-01-01T00:00:00Z")}}),
            json!({"d": [date("2019-01-01T00:00:00Z"), date("2021-01-01T00:00:00Z")]}),
            true,
        ),
        (
            json!({"createdAt": {"$gte": date("2026-01-01T00:00:00Z")}}),
            json!({"createdAt": "2026-05-01T00:00:00.000Z"}),
            true,
        ),
        (
            json!({"createdAt": {"$gte": date("2026-01-01T00:00:00Z")}}),
            json!({"createdAt": "2025-05-01T00:00:00.000Z"}),
            false,
        ),
        (
            json!({"updatedAt": {"$lt": date("2026-01-01T00:00:00Z")}}),
            json!({"updatedAt": "2025-12-31T23:59:59.999Z"}),
            true,
        ),
        (json!({"createdAt": {"$lt": date("2026-01-01T00:00:00Z")}}), json!({"createdAt": "not a date"}), false),
        (json!({"createdAt": {"$gt": "2025-01-01"}}), json!({"createdAt": "2026-05-01T00:00:00.000Z"}), true),
        (json!({"d": {"$gt": "2025-01-01"}}), json!({"d": date("2026-01-01T00:00:00Z")}), false),
        (json!({"d": {"$lt": date("2026-01-02T00:00:00Z")}}), json!({"d": 5}), false),
        (
            json!({"d": {"$in": [date("2026-01-01T00:00:00Z"), date("2026-02-01T00:00:00Z")]}}),
            json!({"d": date("2026-02-01T00:00:00.000Z")}),
            true,
        ),
        (json!({"d": {"$nin": [date("2026-01-01T00:00:00Z")]}}), json!({"d": date("2026-01-01T00:00:00.000Z")}), false),
        (json!({"d": {"$ne": date("2026-01-01T00:00:00Z")}}), json!({"d": date("2026-01-01T00:00:00.000Z")}), false),
        (json!({"d": {"$ne": date("2026-01-01T00:00:00Z")}}), json!({}), true),
        // $relativeTime, against the time of the match.
        (json!({"d": {"$lt": {"$relativeTime": "in 2 hours"}}}), json!({"d": date_from_now(HOUR)}), true),
        (json!({"d": {"$lt": {"$relativeTime": "in 2 hours"}}}), json!({"d": date_from_now(3 * HOUR)}), false),
        (json!({"d": {"$gt": {"$relativeTime": "3 days ago"}}}), json!({"d": date_from_now(-2 * DAY)}), true),
        (json!({"d": {"$gt": {"$relativeTime": "3 days ago"}}}), json!({"d": date_from_now(-4 * DAY)}), false),
        (json!({"d": {"$lte": {"$relativeTime": "now"}}}), json!({"d": date_from_now(-60)}), true),
        (json!({"d": {"$gte": {"$relativeTime": "now"}}}), json!({"d": date_from_now(-60)}), false),
        (json!({"d": {"$gt": {"$relativeTime": "10 mins ago"}}}), json!({"d": date_from_now(-HOUR)}), false),
        (json!({"createdAt": {"$gt": {"$relativeTime": "1 hr ago"}}}), json!({"createdAt": iso_from_now(-600)}), true),
        (
            json!({"d": {"$gt": {"$relativeTime": "2 yrs ago"}, "$lt": {"$relativeTime": "in 1 month"}}}),
            json!({"d": date_from_now(0)}),
            true,
        ),
        (json!({"d": {"$lt": {"$relativeTime": "in 1 wk"}}}), json!({"d": 5}), false),
        (json!({"d": {"$lt": {"$relativeTime": "in 2 days"}}}), json!({}), false),
        (json!({"d": {"$gt": {"$relativeTime": "In 1 Day 2 HRS"}}}), json!({"d": date_from_now(DAY + 3 * HOUR)}), true),
        // Pointers.
        (json!({"owner": u1}), json!({"owner": u1}), true),
        (json!({"owner": u1}), json!({"owner": u2}), false),
        (json!({"owner": u1}), json!({"owner": {"className": "_User", "objectId": "u1"}}), true),
        (
            json!({"owner": u1}),
            json!({"owner": {"__type": "Object", "className": "_User", "objectId": "u1", "name": "x"}}),
            true,
        ),
        (json!({"owner": u1}), json!({"owner": ptr("Team", "u1")}), false),
        (json!({"owner": u1}), json!({"owner": "u1"}), false),
        (json!({"owner": u1}), json!({"owner": null}), false),
        (json!({"owner": {"$eq": u1}}), json!({}), false),
        (json!({"owners": u1}), json!({"owners": [{"className": "_User", "objectId": "u1"}]}), true),
        (json!({"owners": u1}), json!({"owners": [{"className": "_User", "objectId": "u3"}]}), false),
        (json!({"owner": {"$in": [u1, u2]}}), json!({"owner": u2}), true),
        (json!({"owner": {"$in": ["u1", "u2"]}}), json!({"owner": u1}), true),
        (json!({"owner": {"$in": ["u3"]}}), json!({"owner": u1}), false),
        (json!({"owner": {"$nin": ["u1"]}}), json!({"owner": u1}), false),
        (json!({"owner": {"$nin": ["abc", "def"]}}), json!({"owner": ptr("Profile", "ghi")}), true),
        (json!({"owner": {"$nin": [ptr("Profile", "def")]}}), json!({"owner": ptr("Profile", "abc")}), true),
        (
            json!({"owner": {"$in": [{"__type": "Object", "className": "_User", "objectId": "u1"}]}}),
            json!({"owner": u1}),
            true,
        ),
        (
            json!({"profiles": {"$in": [ptr("Profile", "no"), ptr("Profile", "yes")]}}),
            json!({"profiles": [ptr("Profile", "yeahaw"), ptr("Profile", "yes")]}),
            true,
        ),
        (
            json!({"profiles": {"$in": [ptr("Profile", "no"), ptr("Profile", "nope")]}}),
            json!({"profiles": [ptr("Profile", "yeahaw"), ptr("Profile", "yes")]}),
            false,
        ),
        (json!({"owner.objectId": "u1"}), json!({"owner": u1}), true),
        // $exists.
        (json!({"a": {"$exists": true}}), json!({"a": null}), true),
        (json!({"a": {"$exists": true}}), json!({}), false),
        (json!({"a": {"$exists": false}}), json!({}), true),
        (json!({"a": {"$exists": false}}), json!({"a": null}), false),
        (json!({"a.b": {"$exists": true}}), json!({"a": {"b": null}}), true),
        // $in / $nin.
        (json!({"a": {"$in": [1, 2]}}), json!({"a": 2}), true),
        (json!({"a": {"$in": [1, 2]}}), json!({"a": [5, 2]}), true),
        (json!({"a": {"$in": [1, 2]}}), json!({}), false),
        (json!({"a": {"$in": ["1"]}}), json!({"a": 1}), false),
        (json!({"a": {"$in": ["1"]}}), json!({"a": "1"}), true),
        (json!({"a": {"$in": [1]}}), json!({"a": true}), false),
        (json!({"a": {"$in": []}}), json!({"a": 1}), false),
        (json!({"a": {"$in": [null]}}), json!({}), true),
        (json!({"a": {"$in": [null]}}), json!({"a": null}), true),
        (json!({"a": {"$in": [[1, 2]]}}), json!({"a": [1, 2]}), true),
        (json!({"a": {"$in": [{"x": 1}]}}), json!({"a": {"x": 1}}), true),
        (json!({"a": {"$in": [geo(1.0, 2.0)]}}), json!({"a": geo(1.0, 2.0)}), true),
        (json!({"name": {"$in": ["Adam", "Ben", "Charles"]}}), json!({"name": "Bill"}), false),
        (json!({"a": {"$in": [1, 2], "$nin": [2]}}), json!({"a": 1}), true),
        (json!({"a": {"$in": [1, 2], "$nin": [2]}}), json!({"a": 2}), false),
        (json!({"a": {"$nin": [1, 2]}}), json!({"a": 3}), true),
        (json!({"a": {"$nin": [1, 2]}}), json!({}), true),
        (json!({"a": {"$nin": [1, 2]}}), json!({"a": null}), true),
        (json!({"a": {"$nin": [1, 2]}}), json!({"a": [3, 1]}), false),
        (json!({"a": {"$nin": []}}), json!({"a": 1}), true),
        (json!({"a": {"$nin": [null]}}), json!({}), false),
        // $all.
        (json!({"tags": {"$all": ["latergram", "nofilter"]}}), json!({"tags": ["nofilter", "latergram", "tbt"]}), true),
        (json!({"tags": {"$all": ["latergram", "selfie"]}}), json!({"tags": ["nofilter", "latergram", "tbt"]}), false),
        (json!({"missing": {"$all": [1, 2, 3]}}), json!({"score": 12}), false),
        (json!({"tags": {"$all": []}}), json!({"tags": [1]}), false),
        (json!({"tags": {"$all": [1, 1]}}), json!({"tags": [1]}), true),
        (json!({"tags": {"$all": [1]}}), json!({"tags": null}), false),
        (json!({"s": {"$all": ["ell"]}}), json!({"s": "hello"}), false),
        (json!({"s": {"$all": ["hello"]}}), json!({"s": "hello"}), true),
        (json!({"a": {"$all": [[1, 2]]}}), json!({"a": [1, 2]}), true),
        (json!({"owners": {"$all": [u1]}}), json!({"owners": [u1, u2]}), true),
        (json!({"owners": {"$all": [u1, ptr("_User", "u3")]}}), json!({"owners": [u1, u2]}), false),
        (
            json!({"d": {"$all": [date("2026-01-01T00:00:00Z")]}}),
            json!({"d": [date("2026-01-01T00:00:00.000Z"), date("2027-01-01")]}),
            true,
        ),
        (starts_with_a_and_b.clone(), json!({"tags": ["apple", "banana"]}), true),
        (starts_with_a_and_b.clone(), json!({"tags": ["apple", "cherry"]}), false),
        (starts_with_a_and_b, json!({}), false),
        (json!({"tags": {"$all": [{"$regex": "^A", "$options": "i"}]}}), json!({"tags": ["apple"]}), true),
        // $containedBy.
        (json!({"numbers": {"$containedBy": [1, 2, 3, 4, 5]}}), json!({"numbers": [0, 1, 2]}), false),
        (json!({"numbers": {"$containedBy": [1, 2, 3, 4, 5]}}), json!({"numbers": [2, 0]}), false),
        (json!({"numbers": {"$containedBy": [1, 2, 3, 4, 5]}}), json!({"numbers": [1, 2, 3, 4]}), true),
        (json!({"numbers": {"$containedBy": [1, 2]}}), json!({"numbers": []}), true),
        (json!({"numbers": {"$containedBy": [1, 2]}}), json!({}), false),
        (json!({"numbers": {"$containedBy": [1, 2]}}), json!({"numbers": null}), false),
        (json!({"numbers": {"$containedBy": [1, 2]}}), json!({"numbers": 1}), false),
        (json!({"s": {"$containedBy": ["a", "b"]}}), json!({"s": "ab"}), false),
        (json!({"p": {"$containedBy": ["abc", "def"]}}), json!({"p": [ptr("Profile", "abc")]}), true),
        (
            json!({"p": {"$containedBy": [ptr("Profile", "abc")]}}),
            json!({"p": [ptr("Profile", "abc"), ptr("Profile", "x")]}),
            false,
        ),
        // $regex: the SDK's encodings and Parse's pinned cases.
        (json!({"name": {"$regex": format!("^{}", quote("Play"))}}), json!({"name": "Player 1"}), true),
        (json!({"name": {"$regex": format!("^{}", quote("Ploy"))}}), json!({"name": "Player 1"}), false),
        (json!({"name": {"$regex": format!("{}$", quote(" 1"))}}), json!({"name": "Player 1"}), true),
        (json!({"name": {"$regex": format!("{}$", quote(" 2"))}}), json!({"name": "Player 1"}), false),
        (json!({"name": {"$regex": quote("d-7")}}), json!({"name": "Android-7"}), true),
        (json!({"name": {"$regex": "A.d"}}), json!({"name": "Android-7"}), true),
        (json!({"name": {"$regex": "A[^n]d"}}), json!({"name": "Android-7"}), false),
        (json!({"name": {"$regex": format!("{}$", quote("h \\E"))}}), json!({"name": "Slash \\E"}), true),
        (json!({"name": {"$regex": format!("{}$", quote("h \\Ee"))}}), json!({"name": "Slash \\E"}), false),
        (json!({"name": {"$regex": quote("h \\Q and")}}), json!({"name": "Slash \\Q and more"}), true),
        (json!({"name": {"$regex": quote("h \\Q or")}}), json!({"name": "Slash \\Q and more"}), false),
        (json!({"name": {"$regex": "\\Qa.b"}}), json!({"name": "xa.b"}), true),
        (json!({"name": {"$regex": "\\Qa.b"}}), json!({"name": "axb"}), false),
        (json!({"name": {"$regex": "a\\\\Qb"}}), json!({"name": "a\\Qb"}), true),
        (json!({"name": {"$regex": "a\\Eb"}}), json!({"name": "ab"}), true),
        (json!({"name": {"$regex": "player", "$options": "i"}}), json!({"name": "Player 1"}), true),
        (json!({"name": {"$regex": "player"}}), json!({"name": "Player 1"}), false),
        (json!({"name": {"$regex": "^é", "$options": "i"}}), json!({"name": "École"}), true),
        (json!({"s": {"$regex": "^b", "$options": "m"}}), json!({"s": "a\nb"}), true),
        (json!({"s": {"$regex": "^b"}}), json!({"s": "a\nb"}), false),
        (json!({"s": {"$regex": "a.b", "$options": "s"}}), json!({"s": "a\nb"}), true),
        (json!({"s": {"$regex": "a.b"}}), json!({"s": "a\nb"}), false),
        (json!({"s": {"$regex": "a b # comment", "$options": "x"}}), json!({"s": "ab"}), true),
        (json!({"s": {"$regex": "\\Qa b\\E", "$options": "xu"}}), json!({"s": "a b"}), true),
        (json!({"s": {"$regex": ""}}), json!({"s": ""}), true),
        (json!({"s": {"$regex": ""}}), json!({}), false),
        (json!({"s": {"$regex": "1"}}), json!({"s": 12}), false),
        (json!({"s": {"$regex": "^ab"}}), json!({"s": ["x", "abc"]}), true),
        (json!({"s": {"$regex": "^ab"}}), json!({"s": null}), false),
        (json!({"s": {"$regex": "u1"}}), json!({"s": u1}), false),
        (json!({"s": {"$regex": "^a", "$ne": "abc"}}), json!({"s": "abd"}), true),
        (json!({"s": {"$regex": "^a", "$ne": "abc"}}), json!({"s": "abc"}), false),
        (json!({"a.b": {"$regex": "x"}}), json!({"a": {"b": "xyz"}}), true),
        (json!({"s": {"$regex": "(a+)+b"}}), json!({"s": "a".repeat(30) + "c"}), false),
        // $nearSphere and its distances.
        (json!({"location": {"$nearSphere": geo(20.0, 20.0)}}), json!({"location": geo(40.0, 40.0)}), true),
        (json!({"location": {"$nearSphere": geo(20.0, 20.0)}}), json!({}), false),
        (json!({"location": {"$nearSphere": geo(20.0, 20.0)}}), json!({"location": null}), false),
        (json!({"location": {"$nearSphere": geo(20.0, 20.0)}}), json!({"location": "x"}), false),
        (
            json!({"location": {"$nearSphere": geo(30.0, 30.0), "$maxDistance": 0.3}}),
            json!({"location": geo(40.0, 40.0)}),
            true,
        ),
        (
            json!({"location": {"$nearSphere": geo(30.0, 30.0), "$maxDistance": 0.2}}),
            json!({"location": geo(40.0, 40.0)}),
            false,
        ),
        (
            json!({"location": {"$nearSphere": geo(30.0, 30.0), "$maxDistanceInRadians": 0.3}}),
            json!({"location": geo(40.0, 40.0)}),
            true,
        ),
        (
            json!({"location": {"$nearSphere": geo(sf.0, sf.1), "$maxDistanceInKilometers": 600}}),
            json!({"location": la}),
            true,
        ),
        (
            json!({"location": {"$nearSphere": geo(sf.0, sf.1), "$maxDistanceInKilometers": 500}}),
            json!({"location": la}),
            false,
        ),
        (
            json!({"location": {"$nearSphere": geo(sf.0, sf.1), "$maxDistanceInMiles": 360}}),
            json!({"location": la}),
            true,
        ),
        (
            json!({"location": {"$nearSphere": geo(sf.0, sf.1), "$maxDistanceInMiles": 340}}),
            json!({"location": la}),
            false,
        ),
        (
            json!({"location": {"$nearSphere": geo(1.0, 2.0), "$maxDistance": 0}}),
            json!({"location": geo(1.0, 2.0)}),
            true,
        ),
        (
            json!({"location": {"$nearSphere": geo(1.0, 2.0), "$maxDistance": 0}}),
            json!({"location": geo(1.0, 2.5)}),
            false,
        ),
        (
            json!({"location": {"$nearSphere": geo(0.0, 0.0), "$maxDistance": std::f64::consts::PI}}),
            json!({"location": geo(0.0, 180.0)}),
            true,
        ),
        (
            json!({"location": {"$nearSphere": geo(30.0, 30.0), "$maxDistance": 0.1}}),
            json!({"location": [geo(40.0, 40.0), geo(30.0, 30.5)]}),
            true,
        ),
        (
            json!({"location": {"$nearSphere": geo(30.0, 30.0), "$maxDistance": 0.1}}),
            json!({"location": {"latitude": 30, "longitude": 30}}),
            true,
        ),
        // $within $box: strictly inside; an inverted box holds nothing.
        (bay_box.clone(), caltrain.clone(), true),
        (bay_box.clone(), santa_clara, false),
        (bay_box.clone(), json!({"name": "no location"}), false),
        (bay_box.clone(), json!({"location": null}), false),
        (bay_box.clone(), json!({"location": geo(37.708813, -122.4)}), false),
        (bay_box, json!({"location": [geo(0.0, 0.0), geo(37.776346, -122.394218)]}), true),
        (
            json!({"location": {"$within": {"$box": [geo(37.822802, -122.373962), geo(37.708813, -122.526398)]}}}),
            caltrain.clone(),
            false,
        ),
        (
            json!({"location": {"$within": {"$box": [geo(37.708813, -122.373962), geo(37.822802, -122.526398)]}}}),
            caltrain,
            false,
        ),
        // $geoWithin $polygon / $centerSphere.
        (bay_polygon.clone(), json!({"location": geo(37.75, -122.68)}), true),
        (bay_polygon.clone(), json!({"location": geo(38.52, -121.5)}), false),
        (bay_polygon.clone(), json!({"location": geo(21.35, -157.93)}), false),
        (bay_polygon, json!({}), false),
        (
            json!({"location": {"$geoWithin": {"$polygon": polygon(json!([[0, 0], [0, 1], [1, 1], [1, 0]]))}}}),
            json!({"location": geo(0.5, 0.5)}),
            true,
        ),
        (
            json!({"location": {"$geoWithin": {"$centerSphere": [[sf.1, sf.0], 600.0 / 6371.0]}}}),
            json!({"location": la}),
            true,
        ),
        (
            json!({"location": {"$geoWithin": {"$centerSphere": [[sf.1, sf.0], 500.0 / 6371.0]}}}),
            json!({"location": la}),
            false,
        ),
        (
            json!({"location": {"$geoWithin": {"$centerSphere": [geo(sf.0, sf.1), 600.0 / 6371.0]}}}),
            json!({"location": la}),
            true,
        ),
        (json!({"location": {"$geoWithin": {"$centerSphere": [[0, 0], 0.1]}}}), json!({}), false),
        // $geoIntersects on Polygon fields.
        (contains_half.clone(), json!({"bounds": polygon(json!([[0, 0], [0, 1], [1, 1], [1, 0]]))}), true),
        (contains_half.clone(), json!({"bounds": polygon(json!([[0, 0], [0, 2], [2, 2], [2, 0]]))}), true),
        (
            contains_half.clone(),
            json!({"bounds": polygon(json!([[10, 10], [10, 15], [15, 15], [15, 10], [10, 10]]))}),
            false,
        ),
        (contains_half.clone(), json!({}), false),
        (contains_half.clone(), json!({"bounds": geo(0.5, 0.5)}), false),
        (contains_half.clone(), json!({"bounds": polygon(json!([[0, 0], [1, 1]]))}), false),
        (contains_half, json!({"bounds": {"coordinates": [[0, 0], [0, 1], [1, 1], [1, 0]]}}), false),
        // Typed values in equality.
        (json!({"at": geo(1.0, 2.0)}), json!({"at": {"__type": "GeoPoint", "latitude": 1.0, "longitude": 2.0}}), true),
        (json!({"at": geo(37.4848, -122.1483)}), json!({"at": geo(37.484815, -122.148377)}), false),
        (json!({"at": geo(1.0, 2.0)}), json!({"at": {"latitude": 1.0, "longitude": 2.0}}), false),
        (json!({"at": geo(1.0, 2.0)}), json!({"at": [geo(0.0, 0.0), geo(1.0, 2.0)]}), true),
        (
            json!({"b": {"__type": "Bytes", "base64": "AAE="}}),
            json!({"b": {"__type": "Bytes", "base64": "AAE="}}),
            true,
        ),
        (
            json!({"b": {"__type": "Bytes", "base64": "AAE="}}),
            json!({"b": {"__type": "Bytes", "base64": "AAI="}}),
            false,
        ),
        (json!({"b": {"__type": "Bytes", "base64": "AAE="}}), json!({"b": "AAE="}), false),
        (
            json!({"f": {"__type": "File", "name": "a.png", "url": "http://x/a.png"}}),
            json!({"f": {"__type": "File", "name": "a.png", "url": "http://x/a.png"}}),
            true,
        ),
        (
            json!({"f": {"__type": "File", "name": "a.png"}}),
            json!({"f": {"__type": "File", "name": "a.png", "url": "http://x/a.png"}}),
            true,
        ),
        (json!({"f": {"__type": "File", "name": "a.png"}}), json!({"f": {"__type": "File", "name": "b.png"}}), false),
        (
            json!({"f": {"__type": "File", "name": "a.png", "url": "http://x/a.png"}}),
            json!({"f": {"__type": "File", "name": "a.png", "url": "http://y/a.png"}}),
            false,
        ),
        (
            json!({"p": polygon(json!([[0, 0], [0, 1], [1, 1]]))}),
            json!({"p": polygon(json!([[0.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))}),
            true,
        ),
        (
            json!({"p": polygon(json!([[0, 0], [0, 1], [1, 1]]))}),
            json!({"p": polygon(json!([[0, 1], [1, 1], [0, 0]]))}),
            false,
        ),
        (json!({"p": {"$ne": polygon(json!([[0, 0], [0, 1], [1, 1]]))}}), json!({"p": null}), true),
        // Dotted keys.
        (json!({"x.y": 1}), json!({"x": {"y": 1}}), true),
        (json!({"x.y.z": {"$gt": 0}}), json!({"x": {"y": {"z": 1}}}), true),
        (json!({"x.y": 1}), json!({"x": 1}), false),
        (json!({"x.y": {"$exists": false}}), json!({"x": "str"}), true),
        (json!({"x.y": null}), json!({"x": 5}), true),
        (json!({"a.0": "x"}), json!({"a": ["x", "y"]}), true),
        (json!({"a.1": "x"}), json!({"a": ["x", "y"]}), false),
        (json!({"a.5": {"$exists": false}}), json!({"a": [1]}), true),
        (json!({"a.01": "y"}), json!({"a": ["x", "y"]}), false),
        (json!({"a.+1": "y"}), json!({"a": ["x", "y"]}), false),
        (json!({"a.1.b": 2}), json!({"a": [{"b": 1}, {"b": 2}]}), true),
        (json!({"a.b": 1}), json!({"a": [{"b": 1}]}), false),
        (json!({"a.b.c": {"$in": [1]}}), json!({"a": {"b": {"c": [1]}}}), true),
        (json!({"status.x": {"$ne": "read"}}), json!({"status": {"x": "read", "y": "delivered"}}), false),
        (json!({"status.z": {"$ne": "read"}}), json!({"status": {"x": "read", "y": "delivered"}}), true),
        (json!({"nonexistent.x": {"$exists": true}}), json!({"status": {"x": "read"}}), false),
        (json!({"nonexistent.z": {"$exists": false}}), json!({"status": {"x": "read"}}), true),
        (
            json!({"status.x": "read", "status.y": {"$exists": false}}),
            json!({"status": {"x": "read", "y": "delivered"}}),
            false,
        ),
        // $or / $and / $nor.
        (json!({"$or": [{"a": 1}, {"b": 2}]}), json!({"b": 2}), true),
        (json!({"$or": [{"a": 1}, {"b": 2}]}), json!({"b": 3}), false),
        (json!({"$and": [{"a": 1}, {"b": 2}]}), json!({"a": 1, "b": 2}), true),
        (json!({"$and": [{"a": 1}, {"b": 2}]}), json!({"a": 1}), false),
        (json!({"$and": [{"a": {"$gt": 1}}, {"a": {"$lt": 5}}]}), json!({"a": 3}), true),
        (json!({"$nor": [{"a": 1}, {"b": 2}]}), json!({"a": 3}), true),
        (json!({"$nor": [{"a": 1}, {"b": 2}]}), json!({"b": 2}), false),
        (json!({"$nor": [{"a": {"$exists": true}}]}), json!({}), true),
        (json!({"$or": [{"a": 1}], "c": 1}), json!({"a": 1, "c": 2}), false),
        (json!({"$or": [{"a": {"$regex": "^x"}}, {"b": {"$exists": true}}]}), json!({"b": null}), true),
        (json!({"$or": [{"$and": [{"a": 1}, {"b": 1}]}, {"c": 1}]}), json!({"a": 1, "b": 1}), true),
        (json!({"$or": [{"$and": [{"a": 1}, {"b": 1}]}, {"c": 1}]}), json!({"a": 1, "b": 2}), false),
    ]
}

#[test]
fn table_of_cases() {
    let cases = cases();
    assert!(cases.len() >= 200, "{} cases", cases.len());
    for (where_, object, expected) in cases {
        assert_eq!(check(where_.clone(), object.clone()), expected, "where {where_} on {object}");
    }
}

#[test]
fn refuses_what_it_cannot_evaluate() {
    const RELATIONS: &str = "relations and sub-queries cannot be evaluated on a single row";
    let relative_only = "$relativeTime can only be used with the $lt, $lte, $gt, and $gte operators";
    let refused = [
        (json!({"$relatedTo": {}}), format!("Unsupported query operator: $relatedTo — {RELATIONS}")),
        (json!({"a": {"$inQuery": {}}}), format!("Unsupported query operator: $inQuery — {RELATIONS}")),
        (json!({"a": {"$notInQuery": {}}}), format!("Unsupported query operator: $notInQuery — {RELATIONS}")),
        (json!({"a": {"$select": {}}}), format!("Unsupported query operator: $select — {RELATIONS}")),
        (json!({"a": {"$dontSelect": {}}}), format!("Unsupported query operator: $dontSelect — {RELATIONS}")),
        (
            json!({"a": {"$text": {"$search": {"$term": "x"}}}}),
            "Unsupported query operator: $text — full-text search cannot be evaluated on a single row".into(),
        ),
        (
            json!({"$text": {"$search": "x"}}),
            "Unsupported query operator: $text — full-text search cannot be evaluated on a single row".into(),
        ),
        (json!({"a": {"$elemMatch": {"b": 1}}}), "Unsupported query operator: $elemMatch".into()),
        (json!({"a": {"$foo": 1}}), "Invalid query operator: $foo".into()),
        (json!({"$foo": 1}), "Invalid query operator: $foo".into()),
        (json!({"$or": {"a": 1}}), "$or must be a non-empty array".into()),
        (json!({"$nor": []}), "$nor must be a non-empty array".into()),
        (json!({"$and": [1]}), "$and must be an array of objects".into()),
        (json!({"a": {"$in": 1}}), "a.$in must be an array".into()),
        (json!({"a": {"$nin": "x"}}), "a.$nin must be an array".into()),
        (json!({"a": {"$all": {}}}), "a.$all must be an array".into()),
        (json!({"a": {"$containedBy": null}}), "a.$containedBy must be an array".into()),
        (json!({"a": {"$exists": 1}}), "a.$exists must be a boolean".into()),
        (json!({"a": {"$gt": 1, "b": 2}}), "Invalid constraint on a: operators mixed with plain keys".into()),
        (json!({"a..b": 1}), "Invalid field name: \"a..b\"".into()),
        (json!({"a": {"__type": "Date", "iso": "nope"}}), "a: invalid Date: iso must be an ISO-8601 string".into()),
        (
            json!({"a": {"__type": "Pointer", "className": 1, "objectId": "x"}}),
            "a: invalid Pointer: className and objectId must be strings".into(),
        ),
        (json!({"a": {"$in": [{"__type": "Object"}]}}), "a.$in: invalid Object: className and objectId must be strings".into()),
        (json!({"a": {"__type": "Bytes"}}), "a: invalid Bytes: base64 must be a string".into()),
        (json!({"a": {"__type": "File", "url": "u"}}), "a: invalid File: name must be a string".into()),
        (json!({"a": {"__type": "File", "name": "n", "url": 1}}), "a: invalid File: url must be a string".into()),
        (
            json!({"a": {"__type": "Polygon", "coordinates": [[0, 0], [1, 1]]}}),
            "a: invalid Polygon: coordinates must be at least 3 [latitude, longitude] pairs".into(),
        ),
        (
            json!({"a": {"__type": "GeoPoint", "latitude": 0, "longitude": 200}}),
            "a: invalid GeoPoint: longitude 200 is outside [-180, 180]".into(),
        ),
        (json!({"a": {"__type": "GeoPoint", "latitude": "0", "longitude": 0}}), "a: invalid GeoPoint: latitude and longitude must be numbers".into()),
        // $relativeTime.
        (json!({"a": {"$relativeTime": "now"}}), relative_only.into()),
        (json!({"a": {"$eq": {"$relativeTime": "now"}}}), format!("a.$eq: {relative_only}")),
        (json!({"a": {"$ne": {"$relativeTime": "now"}}}), format!("a.$ne: {relative_only}")),
        (json!({"a": {"$in": [{"$relativeTime": "now"}]}}), format!("a.$in: {relative_only}")),
        (
            json!({"a": {"$lt": {"$relativeTime": "tomorrow"}}}),
            "a.$lt: bad $relativeTime value. Time should either start with 'in' or end with 'ago'".into(),
        ),
        (json!({"a": {"$lt": {"$relativeTime": "in 2 fortnights"}}}), "a.$lt: bad $relativeTime value. Invalid interval: 'fortnights'".into()),
        (json!({"a": {"$gte": {"$relativeTime": "in 1.5 days"}}}), "a.$gte: bad $relativeTime value. '1.5' is not an integer.".into()),
        (json!({"a": {"$lt": {"$relativeTime": 5}}}), "a.$lt: bad $relativeTime value: must be a string".into()),
        (json!({"a": {"$lt": {"$relativeTime": "now", "x": 1}}}), "a.$lt: $relativeTime must be the only key of its object".into()),
        // $regex / $options.
        (json!({"a": {"$regex": 5}}), "a.$regex must be a string".into()),
        (json!({"a": {"$regex": "x", "$options": "g"}}), "a.$regex: unknown option 'g' (allowed: i, m, s, u, x)".into()),
        (json!({"a": {"$regex": "x", "$options": 1}}), "a.$options must be a string".into()),
        (json!({"a": {"$options": "i"}}), "a.$options is only valid with $regex".into()),
        (json!({"a": {"$regex": "x".repeat(1025)}}), "a.$regex: pattern is 1025 bytes, more than the limit of 1024".into()),
        (json!({"a": {"$all": [{"$regex": "^a"}, "b"]}}), "a.$all: values must be all {\"$regex\": …} objects or none".into()),
        (json!({"a": {"$all": [{"$regex": "^a", "$ne": 1}]}}), "a.$all: unexpected key $ne next to $regex".into()),
        (json!({"a": {"$all": [{"$regex": 1}]}}), "a.$regex must be a string".into()),
        // Geo shapes.
        (json!({"a": {"$nearSphere": "x"}}), "a.$nearSphere: invalid GeoPoint: latitude and longitude must be numbers".into()),
        (json!({"a": {"$nearSphere": geo(91.0, 0.0)}}), "a.$nearSphere: invalid GeoPoint: latitude 91 is outside [-90, 90]".into()),
        (json!({"a": {"$nearSphere": geo(0.0, 0.0), "$maxDistance": "far"}}), "a.$maxDistance must be a non-negative number".into()),
        (json!({"a": {"$nearSphere": geo(0.0, 0.0), "$maxDistanceInMiles": -1}}), "a.$maxDistanceInMiles must be a non-negative number".into()),
        (json!({"a": {"$maxDistance": 1}}), "a.$maxDistance is only valid with $nearSphere".into()),
        (json!({"a": {"$maxDistanceInKilometers": 1}}), "a.$maxDistanceInKilometers is only valid with $nearSphere".into()),
        (
            json!({"a": {"$nearSphere": geo(0.0, 0.0), "$maxDistance": 1, "$maxDistanceInKilometers": 1}}),
            "a: give only one of $maxDistance, $maxDistanceInRadians, $maxDistanceInMiles, $maxDistanceInKilometers".into(),
        ),
        (json!({"a": {"$within": {"$box": [geo(0.0, 0.0)]}}}), "a.$within must be {\"$box\": [southwest GeoPoint, northeast GeoPoint]}".into()),
        (json!({"a": {"$within": {"$polygon": []}}}), "a.$within must be {\"$box\": [southwest GeoPoint, northeast GeoPoint]}".into()),
        (json!({"a": {"$within": [geo(0.0, 0.0), geo(1.0, 1.0)]}}), "a.$within must be {\"$box\": [southwest GeoPoint, northeast GeoPoint]}".into()),
        (
            json!({"a": {"$within": {"$box": [geo(0.0, 0.0), "x"]}}}),
            "a.$within.$box: invalid GeoPoint: latitude and longitude must be numbers".into(),
        ),
        (
            json!({"a": {"$geoWithin": {"$polygon": [geo(0.0, 0.0), geo(1.0, 1.0)]}}}),
            "a.$geoWithin: $polygon must be at least 3 GeoPoints (or a Polygon)".into(),
        ),
        (
            json!({"a": {"$geoWithin": {"$polygon": [geo(0.0, 0.0), geo(1.0, 1.0), [2, 2]]}}}),
            "a.$geoWithin: invalid GeoPoint: latitude and longitude must be numbers".into(),
        ),
        (
            json!({"a": {"$geoWithin": {"$polygon": {"__type": "Polygon", "coordinates": []}}}}),
            "a.$geoWithin: invalid Polygon: coordinates must be at least 3 [latitude, longitude] pairs".into(),
        ),
        (
            json!({"a": {"$geoWithin": {"$box": [geo(0.0, 0.0), geo(1.0, 1.0)]}}}),
            "a.$geoWithin: must be {\"$polygon\": [GeoPoint…]} or {\"$centerSphere\": [[longitude, latitude], radians]}".into(),
        ),
        (
            json!({"a": {"$geoWithin": {"$centerSphere": [[0, 0]]}}}),
            "a.$geoWithin: $centerSphere must be [[longitude, latitude] or GeoPoint, radians]".into(),
        ),
        (
            json!({"a": {"$geoWithin": {"$centerSphere": [[0, 0], -1]}}}),
            "a.$geoWithin: $centerSphere radius must be a non-negative number of radians".into(),
        ),
        (
            json!({"a": {"$geoWithin": {"$centerSphere": [[0, 100], 1]}}}),
            "a.$geoWithin: invalid GeoPoint: latitude 100 is outside [-90, 90]".into(),
        ),
        (json!({"a": {"$geoIntersects": {"$point": "x"}}}), "a.$geoIntersects: invalid GeoPoint: latitude and longitude must be numbers".into()),
        (json!({"a": {"$geoIntersects": geo(0.0, 0.0)}}), "a.$geoIntersects must be {\"$point\": GeoPoint}".into()),
    ];
    for (where_, message) in refused {
        assert_eq!(compile(where_.clone()).unwrap_err().0, message, "{where_}");
    }
    let prefixed = [
        (json!({"a": {"$regex": "("}}), "a.$regex: invalid regular expression: "),
        (json!({"a": {"$regex": "(a)\\1"}}), "a.$regex: invalid regular expression: backreferences are not supported"),
        (json!({"a": {"$regex": "(?=a)"}}), "a.$regex: invalid regular expression: look-around"),
        (json!({"a": {"$regex": "\\w{1000}"}}), "a.$regex: pattern compiles to more than "),
        (json!({"a": {"$regex": "\\w{200}"}}), "a.$regex: pattern compiles to more than "),
        (json!({"a": {"$regex": "a{1000}{1000}"}}), "a.$regex: "),
        (json!({"a": {"$regex": "(".repeat(100) + &")".repeat(100)}}), "a.$regex: invalid regular expression: "),
    ];
    for (where_, prefix) in prefixed {
        let message = compile(where_.clone()).unwrap_err().0;
        assert!(message.starts_with(prefix), "{where_}: {message}");
        assert!(!message.contains('\n'), "{message}");
    }
}

#[test]
fn limits_nesting_list_sizes_and_patterns() {
    let mut deep = json!({"a": 1});
    for _ in 0..10 {
        deep = json!({"$or": [deep]});
    }
    let err = compile(deep).unwrap_err();
    assert_eq!(err.0, "Query condition nesting depth exceeds maximum allowed depth of 10");
    let mut nine = json!({"a": 1});
    for _ in 0..9 {
        nine = json!({"$and": [nine]});
    }
    assert!(compile(nine).is_ok());

    let big: Vec<i32> = (0..1001).collect();
    for op in ["$in", "$nin", "$all", "$containedBy"] {
        let err = compile(json!({"a": {op: big}})).unwrap_err().0;
        assert_eq!(err, format!("a.{op} has 1001 values, more than the limit of 1000"));
    }
    let ring: Vec<Value> = (0..1001).map(|i| geo(f64::from(i % 90), 0.0)).collect();
    let err = compile(json!({"a": {"$geoWithin": {"$polygon": ring}}})).unwrap_err().0;
    assert_eq!(err, "a.$geoWithin: $polygon has 1001 points, more than the limit of 1000");

    let many: Vec<Value> = (0..33).map(|i| json!({"$regex": format!("^{i}")})).collect();
    assert!(compile(json!({"a": {"$all": many[..32].to_vec()}})).is_ok());
    assert_eq!(
        compile(json!({"a": {"$all": many}})).unwrap_err().0,
        "a.$regex: more than 32 regular expressions in one query"
    );
    let branches: Vec<Value> = (0..33).map(|i| json!({"a": {"$regex": format!("^{i}")}})).collect();
    assert!(compile(json!({"$or": branches})).is_err());

    let tight =
        QueryLimits { max_depth: 2, max_in_list: 2, max_regex_bytes: 4, max_regexes: 1, ..QueryLimits::default() };
    let compile_tight = |v: Value| Query::compile(&obj(v), tight);
    assert!(compile_tight(json!({"a": {"$regex": "abcd"}})).is_ok());
    assert_eq!(
        compile_tight(json!({"a": {"$regex": "abcde"}})).unwrap_err().0,
        "a.$regex: pattern is 5 bytes, more than the limit of 4"
    );
    assert!(compile_tight(json!({"a": {"$all": [{"$regex": "abcde"}]}})).is_err());
    assert!(compile_tight(json!({"a": {"$in": [1, 2]}})).is_ok());
    assert!(compile_tight(json!({"a": {"$in": [1, 2, 3]}})).is_err());
    assert!(compile_tight(json!({"$or": [{"a": 1}]})).is_ok());
    assert!(compile_tight(json!({"$or": [{"$or": [{"a": 1}]}]})).is_err());
    assert!(compile_tight(json!({"a": {"$regex": "a"}, "b": {"$regex": "b"}})).is_err());
}

#[test]
fn catastrophic_patterns_run_in_linear_time() {
    let subject = json!({"name": "a".repeat(30)});
    for pattern in ["(a+)+b", "(a|a)+b", "(a+){2,}b", "(a|aa)+$b", "^(a*)*$c"] {
        let query = compile(json!({"name": {"$regex": pattern}})).unwrap();
        assert!(!query.matches(&obj(subject.clone())), "{pattern}");
    }
    // A long subject too: the matcher is linear, so this is quick whatever the machine.
    let long = json!({"name": "a".repeat(100_000)});
    assert!(!compile(json!({"name": {"$regex": "(a+)+b"}})).unwrap().matches(&obj(long)));
}

#[test]
fn relative_time_is_read_at_each_match() {
    let query = compile(json!({"d": {"$gt": {"$relativeTime": "2 secs ago"}}})).unwrap();
    let soon = json!({"d": date_from_now(0)});
    assert!(query.matches(&obj(soon.clone())));
    // The same compiled query, later: the instant it compares with has moved on.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2_100) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!query.matches(&obj(soon)));
}

#[test]
fn resolve_path_reads_like_the_matcher() {
    let object = obj(json!({"a": {"b": [10, {"c": 1}]}, "s": "x", "n": null}));
    assert_eq!(resolve_path(&object, "a.b.0"), Some(&json!(10)));
    assert_eq!(resolve_path(&object, "a.b.1.c"), Some(&json!(1)));
    assert_eq!(resolve_path(&object, "a.b.01"), None);
    assert_eq!(resolve_path(&object, "a.b.2"), None);
    assert_eq!(resolve_path(&object, "s.length"), None);
    assert_eq!(resolve_path(&object, "n"), Some(&Value::Null));
    assert_eq!(resolve_path(&object, "missing.x"), None);
    assert_eq!(resolve_path(&object, ""), None);
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

const OPERATORS: &[&str] = &[
    "$eq",
    "$ne",
    "$lt",
    "$lte",
    "$gt",
    "$gte",
    "$in",
    "$nin",
    "$all",
    "$containedBy",
    "$exists",
    "$regex",
    "$options",
    "$nearSphere",
    "$maxDistance",
    "$maxDistanceInRadians",
    "$maxDistanceInMiles",
    "$maxDistanceInKilometers",
    "$within",
    "$box",
    "$geoWithin",
    "$polygon",
    "$centerSphere",
    "$geoIntersects",
    "$point",
    "$relativeTime",
    "$or",
    "$and",
    "$nor",
    "$select",
    "$inQuery",
    "$relatedTo",
    "$text",
    "$foo",
];
const FIELDS: &[&str] = &["a", "b", "a.b", "a.0", "tags", "loc", "createdAt", "owner", "x.y.z", "0"];
const STRINGS: &[&str] = &[
    "",
    "a",
    "abc",
    "u1",
    "(a+)+b",
    "\\Q",
    "\\E",
    "\\Qa.b\\E",
    "\\",
    "[",
    "(?=x)",
    "(a)\\1",
    "^\\Qa",
    "imsux",
    "g",
    "now",
    "in 2 hours",
    "3 days ago",
    "in",
    "ago",
    "in 1 yr 2 mo",
    "2026-01-01T00:00:00Z",
    "2026-01-01",
    "é",
    "a{99999}",
    "\\w{500}",
    "\\x{110000}",
    "\\p{Foo}",
];
const TYPES: &[&str] = &["Date", "Pointer", "Object", "GeoPoint", "Bytes", "File", "Polygon", "Relation", "Nope"];

fn number(rng: &mut Rng) -> Value {
    match rng.below(6) {
        0 => json!(0),
        1 => json!(rng.below(200) as i64 - 100),
        2 => json!((rng.below(3600) as f64 - 1800.0) / 10.0),
        3 => json!(f64::MAX),
        4 => json!(i64::MIN),
        _ => json!(u64::MAX),
    }
}

fn typed(rng: &mut Rng) -> Value {
    let mut map = Map::new();
    map.insert("__type".into(), json!(rng.pick(TYPES)));
    for key in ["iso", "className", "objectId", "latitude", "longitude", "base64", "name", "url", "coordinates"] {
        if rng.chance(40) {
            let value = match key {
                "latitude" | "longitude" => number(rng),
                "coordinates" => {
                    let n = rng.below(6);
                    Value::Array((0..n).map(|_| json!([number(rng), number(rng)])).collect())
                }
                _ if rng.chance(80) => json!(rng.pick(STRINGS)),
                _ => arbitrary(rng, 1),
            };
            map.insert(key.into(), value);
        }
    }
    Value::Object(map)
}

fn arbitrary(rng: &mut Rng, depth: usize) -> Value {
    let leaf = depth == 0 || rng.chance(40);
    match rng.below(if leaf { 6 } else { 9 }) {
        0 => Value::Null,
        1 => json!(rng.chance(50)),
        2 => number(rng),
        3 | 4 => json!(rng.pick(STRINGS)),
        5 => typed(rng),
        6 => Value::Array((0..rng.below(5)).map(|_| arbitrary(rng, depth - 1)).collect()),
        _ => {
            let mut map = Map::new();
            for _ in 0..rng.below(4) {
                let key = if rng.chance(50) { *rng.pick(OPERATORS) } else { *rng.pick(FIELDS) };
                map.insert(key.to_string(), arbitrary(rng, depth - 1));
            }
            Value::Object(map)
        }
    }
}

const FIELD_OPERATORS: &[&str] = &[
    "$eq",
    "$ne",
    "$lt",
    "$lte",
    "$gt",
    "$gte",
    "$in",
    "$nin",
    "$all",
    "$containedBy",
    "$exists",
    "$regex",
    "$nearSphere",
    "$within",
    "$geoWithin",
    "$geoIntersects",
];
const RELATIVE_TIMES: &[&str] = &["now", "in 2 hours", "3 days ago", "in 1 yr 2 mo", "10 mins ago", "in 0 sec", "soon"];
const OPTIONS: &[&str] = &["", "i", "m", "s", "x", "u", "imsux", "g"];

fn point(rng: &mut Rng) -> Value {
    json!({"__type": "GeoPoint", "latitude": rng.below(181) as f64 - 90.0, "longitude": rng.below(361) as f64 - 180.0})
}

/// A plausible operand for `op`, usually well-formed, sometimes not.
fn operand_for(rng: &mut Rng, op: &str) -> Value {
    if rng.chance(10) {
        return arbitrary(rng, 2);
    }
    match op {
        "$all" if rng.chance(30) => {
            Value::Array((0..1 + rng.below(3)).map(|_| json!({"$regex": rng.pick(STRINGS)})).collect())
        }
        "$in" | "$nin" | "$all" | "$containedBy" => {
            Value::Array((0..rng.below(5)).map(|_| arbitrary(rng, 1)).collect())
        }
        "$exists" => json!(rng.chance(50)),
        "$regex" => json!(rng.pick(STRINGS)),
        "$lt" | "$lte" | "$gt" | "$gte" if rng.chance(30) => json!({"$relativeTime": rng.pick(RELATIVE_TIMES)}),
        "$nearSphere" => point(rng),
        "$within" => json!({"$box": [point(rng), point(rng)]}),
        "$geoWithin" if rng.chance(50) => {
            json!({"$polygon": (0..2 + rng.below(5)).map(|_| point(rng)).collect::<Vec<_>>()})
        }
        "$geoWithin" => {
            json!({"$centerSphere": [[rng.below(361) as f64 - 180.0, rng.below(181) as f64 - 90.0], rng.below(4)]})
        }
        "$geoIntersects" => json!({"$point": point(rng)}),
        _ => arbitrary(rng, 2),
    }
}

fn structured_where(rng: &mut Rng, depth: usize) -> Map<String, Value> {
    let mut where_ = Map::new();
    for _ in 0..1 + rng.below(3) {
        if depth < 4 && rng.chance(20) {
            let branches = (0..1 + rng.below(3)).map(|_| Value::Object(structured_where(rng, depth + 1))).collect();
            where_.insert((*rng.pick(&["$or", "$and", "$nor"])).to_string(), Value::Array(branches));
            continue;
        }
        let field = (*rng.pick(FIELDS)).to_string();
        if rng.chance(15) {
            where_.insert(field, arbitrary(rng, 2));
            continue;
        }
        let mut ops = Map::new();
        for _ in 0..1 + rng.below(2) {
            let op = if rng.chance(85) { *rng.pick(FIELD_OPERATORS) } else { *rng.pick(OPERATORS) };
            ops.insert(op.to_string(), operand_for(rng, op));
            if op == "$regex" && rng.chance(50) {
                ops.insert("$options".into(), json!(rng.pick(OPTIONS)));
            }
            if op == "$nearSphere" && rng.chance(60) {
                let distance =
                    ["$maxDistance", "$maxDistanceInRadians", "$maxDistanceInMiles", "$maxDistanceInKilometers"];
                ops.insert((*rng.pick(&distance)).to_string(), json!(rng.below(4000)));
            }
        }
        where_.insert(field, Value::Object(ops));
    }
    where_
}

fn arbitrary_object(rng: &mut Rng) -> Map<String, Value> {
    let mut object = Map::new();
    for _ in 0..rng.below(6) {
        let field = rng.pick(FIELDS).split('.').next().unwrap_or("a").to_string();
        let value = match rng.below(10) {
            0 => json!({"__type": "Polygon", "coordinates": [[-50, -100], [-50, 100], [50, 100], [50, -100]]}),
            1 | 2 => point(rng),
            3 => Value::Array((0..rng.below(4)).map(|_| point(rng)).collect()),
            _ => arbitrary(rng, 3),
        };
        object.insert(field, value);
    }
    object
}

/// Thousands of arbitrary wheres and objects: compiling and matching never panic, and a query
/// that compiles answers the same twice. The CI run is 4,000 wheres; `LIVEGATE_FUZZ_ITERATIONS`
/// (and `LIVEGATE_FUZZ_SEED`) run it longer, as for the request decoder.
#[test]
fn never_panics_on_arbitrary_input() {
    let rounds: usize = std::env::var("LIVEGATE_FUZZ_ITERATIONS").ok().and_then(|n| n.parse().ok()).unwrap_or(4_000);
    let seed = std::env::var("LIVEGATE_FUZZ_SEED").ok().and_then(|n| n.parse().ok()).unwrap_or(1);
    let mut rng = Rng::new(seed);
    let objects: Vec<Map<String, Value>> = (0..64).map(|_| arbitrary_object(&mut rng)).collect();
    let (mut compiled, mut matched) = (0, 0);
    for round in 0..rounds {
        let where_ = if round % 3 == 0 {
            match arbitrary(&mut rng, 4) {
                Value::Object(map) => map,
                other => obj(json!({"a": other})),
            }
        } else {
            structured_where(&mut rng, 0)
        };
        let Ok(query) = Query::compile(&where_, QueryLimits::default()) else { continue };
        compiled += 1;
        for _ in 0..8 {
            let object = &objects[rng.below(objects.len())];
            let first = query.matches(object);
            assert_eq!(first, query.matches(object), "{where_:?}");
            matched += usize::from(first);
        }
    }
    // The generator must exercise the matcher, not only the refusals.
    assert!(compiled > rounds / 4, "only {compiled} of {rounds} wheres compiled");
    assert!(matched > rounds / 40, "only {matched} matches");
}

#[test]
fn query_error_is_an_error_with_its_message() {
    let error = compile(json!({"a": {"$exists": 1}})).unwrap_err();
    assert_eq!(error.message(), "a.$exists must be a boolean");
    assert_eq!(error.to_string(), error.message());
    let boxed: Box<dyn std::error::Error> = Box::new(error.clone());
    assert_eq!(boxed.to_string(), error.message());
}
