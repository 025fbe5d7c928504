//! The query language end to end: subscriptions over WebSocket, rows written with SQL.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::TestApp;

/// Subscribes `where_` as requestId 1, writes `rows` (SQL values lists for (room, body, n, tags,
/// place, owner)), and returns the `body` of every create received, in order.
async fn bodies_matching(app: &TestApp, where_: Value, rows: &[&str]) -> Vec<String> {
    let mut client = app.subscriber(where_).await;
    for row in rows {
        app.db.execute(&format!("insert into messages (room, body, n, tags, place, owner) values {row}")).await;
    }
    // Every matching create arrives well within the quiet period that ends the collection.
    let mut bodies = Vec::new();
    while let Some(frame) = client.recv_within(Duration::from_millis(800)).await {
        assert_eq!(frame["op"], "create", "{frame}");
        bodies.push(frame["object"]["body"].as_str().unwrap_or_default().to_string());
    }
    bodies
}

fn geo(lat: f64, lng: f64) -> String {
    format!("'{{\"__type\":\"GeoPoint\",\"latitude\":{lat},\"longitude\":{lng}}}'")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regex_all_geo_and_pointers_over_the_wire() {
    let app = TestApp::spawn().await;
    let pointer = |id: &str| format!("'{{\"__type\":\"Pointer\",\"className\":\"_User\",\"objectId\":\"{id}\"}}'");
    let rows = [
        format!("('a', 'Hello world', 1, '{{x,y}}', {}, {})", geo(48.85, 2.35), pointer("u1")),
        format!("('a', 'hello there', 2, '{{x}}', {}, {})", geo(40.71, -74.0), pointer("u2")),
        format!("('b', 'a.b*c', 3, '{{y}}', {}, null)", geo(48.86, 2.36)),
    ];
    let rows: Vec<&str> = rows.iter().map(String::as_str).collect();

    let regex = bodies_matching(&app, json!({"body": {"$regex": "^hello", "$options": "i"}}), &rows).await;
    assert_eq!(regex, ["Hello world", "hello there"]);

    let quoted = bodies_matching(&app, json!({"body": {"$regex": "\\Qa.b*\\E"}}), &rows).await;
    assert_eq!(quoted, ["a.b*c"]);

    let all = bodies_matching(&app, json!({"tags": {"$all": ["x", "y"]}}), &rows).await;
    assert_eq!(all, ["Hello world"]);

    let paris = json!({"__type": "GeoPoint", "latitude": 48.85, "longitude": 2.35});
    let near =
        bodies_matching(&app, json!({"place": {"$nearSphere": paris, "$maxDistanceInKilometers": 10}}), &rows).await;
    assert_eq!(near, ["Hello world", "a.b*c"]);

    let sw = json!({"__type": "GeoPoint", "latitude": 40, "longitude": -75});
    let ne = json!({"__type": "GeoPoint", "latitude": 41, "longitude": -73});
    let boxed = bodies_matching(&app, json!({"place": {"$within": {"$box": [sw, ne]}}}), &rows).await;
    assert_eq!(boxed, ["hello there"]);

    let owner = bodies_matching(
        &app,
        json!({"owner": {"$in": ["u2", {"__type": "Pointer", "className": "_User", "objectId": "nobody"}]}}),
        &rows,
    )
    .await;
    assert_eq!(owner, ["hello there"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_and_unevaluable_queries_are_refused_and_the_socket_stays_open() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    client.connect_parse().await;
    let refusals = [
        json!({"owner": {"$inQuery": {"where": {}, "className": "_User"}}}),
        json!({"$relatedTo": {"object": {"__type": "Pointer", "className": "A", "objectId": "1"}, "key": "r"}}),
        json!({"body": {"$regex": "(unclosed"}}),
        json!({"body": {"$regex": "a".repeat(5000)}}),
        json!({"place": {"$within": {"$box": [1, 2]}}}),
    ];
    let mut messages = Vec::new();
    for (i, where_) in refusals.iter().enumerate() {
        let id = i as i64 + 1;
        client
            .send(json!({"op": "subscribe", "requestId": id, "query": {"className": "messages", "where": where_}}))
            .await;
        let reply = client.recv().await;
        assert_eq!(reply["op"], "error", "{where_} -> {reply}");
        assert_eq!(reply["code"], 102, "{reply}");
        assert_eq!(reply["requestId"], id);
        assert_eq!(reply["reconnect"], false);
        messages.push(reply["error"].as_str().unwrap_or_default().to_string());
    }
    assert!(messages[0].contains("$inQuery"), "{}", messages[0]);
    assert!(messages[1].contains("$relatedTo"), "{}", messages[1]);
    // Catastrophic backtracking is not possible: this subscription works and matches quickly.
    client.subscribe(10, "messages", json!({"body": {"$regex": "(a+)+b"}})).await;
    app.db.execute(&format!("insert into messages (room, body) values ('r', '{}')", "a".repeat(30))).await;
    app.db.execute("insert into messages (room, body) values ('r', 'aaab')").await;
    let create = client.expect_event("create").await;
    assert_eq!(create["object"]["body"], "aaab");
}
