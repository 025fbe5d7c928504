//! The Parse LiveQuery protocol over a real WebSocket, fed by rows written with SQL.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::{TestApp, WsClient};

const QUIET: Duration = Duration::from_millis(700);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_five_events_follow_the_decision_table() {
    let app = TestApp::spawn().await;
    let mut client = app.subscriber(json!({"room": "a"})).await;

    app.db
        .execute("insert into messages (room, body, _internal, due) values ('a', 'hello', 'hidden', '2026-12-01')")
        .await;
    let create = client.expect_event("create").await;
    let object = &create["object"];
    assert_eq!(object["className"], "messages");
    assert_eq!(object["objectId"], "1");
    assert_eq!(object["room"], "a");
    assert_eq!(object["due"], json!({"__type": "Date", "iso": "2026-12-01T00:00:00.000Z"}));
    assert!(object["createdAt"].as_str().unwrap().ends_with('Z'));
    assert!(object.get("_internal").is_none(), "underscore columns never reach a client");
    assert!(object.get("created_at").is_none());
    assert!(create.get("original").is_none());
    assert_eq!(create["requestId"], 1);

    app.db.execute("update messages set body = 'edited' where id = 1").await;
    let update = client.expect_event("update").await;
    assert_eq!(update["object"]["body"], "edited");
    assert_eq!(update["original"]["body"], "hello");

    app.db.execute("update messages set room = 'b' where id = 1").await;
    let leave = client.expect_event("leave").await;
    assert_eq!(leave["object"]["room"], "b");
    assert_eq!(leave["original"]["room"], "a");

    app.db.execute("update messages set body = 'elsewhere' where id = 1").await;
    app.db.execute("insert into messages (room) values ('b')").await;
    app.db.execute("update messages set room = 'a' where id = 1").await;
    let enter = client.expect_event("enter").await;
    assert_eq!(enter["object"]["room"], "a");
    assert_eq!(enter["original"]["room"], "b");

    app.db.execute("delete from messages where id = 1").await;
    let delete = client.expect_event("delete").await;
    assert_eq!(delete["object"]["objectId"], "1");
    assert!(delete.get("original").is_none());
    client.expect_silence(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_carry_parse_codes_and_keep_the_socket_open() {
    let app = TestApp::spawn().await;
    // Any path upgrades, as in Parse.
    let mut client = WsClient::connect(&format!("ws://127.0.0.1:{}/some/deep/path", app.port)).await;

    client.send(json!({"op": "subscribe", "requestId": 1, "query": {"className": "messages", "where": {}}})).await;
    assert_eq!(
        client.recv().await,
        json!({"op": "error", "error": "Can not find this client, make sure you connect to server before subscribing", "code": 2, "reconnect": true, "requestId": null})
    );
    client.send(json!({"op": "unsubscribe", "requestId": 1})).await;
    assert_eq!(
        client.recv().await["error"],
        "Can not find this client, make sure you connect to server before unsubscribing"
    );

    // Not JSON: ignored, no reply, socket stays open.
    client.send_text("{this is not json").await;
    client.expect_silence(Duration::from_millis(300)).await;

    client.send(json!({"op": "connect"})).await;
    assert_eq!(
        client.recv().await,
        json!({"op": "error", "error": "Missing required property: applicationId", "code": 1, "reconnect": true, "requestId": null})
    );
    client.send(json!({"op": "dance"})).await;
    assert_eq!(client.recv().await["error"], "No enum match for: \"dance\"");

    client.send(json!({"op": "connect", "applicationId": "app", "installationId": "device-1"})).await;
    let connected = client.recv().await;
    let client_id = connected["clientId"].as_str().unwrap().to_string();
    assert_eq!(connected, json!({"op": "connected", "clientId": client_id, "installationId": "device-1"}));

    client.send(json!({"op": "subscribe", "requestId": 1, "query": {"className": "messages", "where": {}, "fields": ["a"]}})).await;
    assert_eq!(
        client.recv().await,
        json!({"op": "error", "error": "Additional properties not allowed", "code": 1, "reconnect": true, "requestId": null})
    );

    client.send(json!({"op": "unsubscribe", "requestId": 4})).await;
    assert_eq!(
        client.recv().await,
        json!({"op": "error", "error": format!("Cannot find subscription with clientId {client_id} subscriptionId 4. Make sure you subscribe to live query server before unsubscribing."), "code": 2, "reconnect": true, "requestId": null})
    );

    client
        .send(
            json!({"op": "subscribe", "requestId": 2, "query": {"className": "messages", "where": {"n": {"$foo": 1}}}}),
        )
        .await;
    assert_eq!(
        client.recv().await,
        json!({"op": "error", "error": "Invalid query operator: $foo", "code": 102, "reconnect": false, "requestId": 2})
    );

    // Still connected and working after every error above.
    client.send(json!({"op": "subscribe", "requestId": 3, "query": {"className": "messages", "where": {}}})).await;
    assert_eq!(
        client.recv().await,
        json!({"op": "subscribed", "clientId": client_id, "installationId": "device-1", "requestId": 3})
    );
    app.db.execute("insert into messages (room) values ('x')").await;
    let create = client.expect_event("create").await;
    assert_eq!(create["installationId"], "device-1");
    assert_eq!(create["clientId"], client_id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_pairs_are_enforced_at_connect() {
    let app = TestApp::spawn_with(|c| c.keys.javascript_key = Some("js-key".into())).await;
    let mut client = app.client().await;
    client.send(json!({"op": "connect", "applicationId": "app", "javascriptKey": "wrong"})).await;
    assert_eq!(
        client.recv().await,
        json!({"op": "error", "error": "Key in request is not valid", "code": 4, "reconnect": true, "requestId": null})
    );
    client.send(json!({"op": "connect", "applicationId": "app"})).await;
    assert_eq!(client.recv().await["code"], 4);
    client.send(json!({"op": "connect", "applicationId": "app", "javascriptKey": "js-key"})).await;
    assert_eq!(client.recv().await["op"], "connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_share_one_query_evaluation() {
    let app = TestApp::spawn().await;
    let mut first = app.subscriber(json!({"room": "r", "n": {"$gte": 1}})).await;
    let mut second = app.client().await;
    second.connect_parse().await;
    second.subscribe(7, "messages", json!({"n": {"$gte": 1}, "room": "r"})).await;
    let health = app.health().await;
    assert_eq!(health["subscriptions"], 2);
    assert_eq!(health["distinctQueries"], 1, "same class and where, other key order: one group");

    app.db.execute("insert into messages (room, n) values ('r', 1), ('r', 0), ('s', 5)").await;
    let a = first.expect_event("create").await;
    let b = second.expect_event("create").await;
    assert_eq!(a["object"], b["object"]);
    assert_eq!(a["requestId"], 1);
    assert_eq!(b["requestId"], 7);
    first.expect_silence(QUIET).await;
    second.expect_silence(Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_project_and_watch_filters() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    client.connect_parse().await;
    client
        .send(json!({"op": "subscribe", "requestId": 1, "query": {"className": "messages", "where": {}, "keys": ["body"], "watch": ["n"]}}))
        .await;
    assert_eq!(client.recv().await["op"], "subscribed");

    app.db.execute("insert into messages (room, body) values ('a', 'no n yet')").await;
    app.db.execute("insert into messages (room, body, n) values ('a', 'with n', 1)").await;
    let create = client.expect_event("create").await;
    let object = create["object"].as_object().unwrap();
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["body", "className", "createdAt", "objectId", "updatedAt"]);
    assert_eq!(object["body"], "with n");

    app.db.execute("update messages set body = 'only body changed' where id = 2").await;
    app.db.execute("update messages set n = 2, body = 'n changed' where id = 2").await;
    let update = client.expect_event("update").await;
    assert_eq!(update["object"]["body"], "n changed");
    assert_eq!(update["original"]["body"], "only body changed");
    assert!(update["object"].get("n").is_none(), "n is watched but not projected");
    client.expect_silence(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_unsubscribe_and_disconnect_leave_nothing_behind() {
    let app = TestApp::spawn().await;
    let mut client = app.subscriber(json!({"room": "a"})).await;
    client
        .send(json!({"op": "update", "requestId": 1, "query": {"className": "messages", "where": {"room": "b"}}}))
        .await;
    assert_eq!(client.recv().await["op"], "subscribed");
    assert_eq!(app.health().await["subscriptions"], 1);

    app.db.execute("insert into messages (room) values ('a'), ('b')").await;
    assert_eq!(client.expect_event("create").await["object"]["room"], "b");
    client.expect_silence(QUIET).await;

    client.send(json!({"op": "unsubscribe", "requestId": 1})).await;
    assert_eq!(client.recv().await["op"], "unsubscribed");
    app.db.execute("insert into messages (room) values ('b')").await;
    client.expect_silence(QUIET).await;
    client.send(json!({"op": "unsubscribe", "requestId": 1})).await;
    assert_eq!(client.recv().await["code"], 2, "a second unsubscribe finds nothing");

    client.subscribe(2, "messages", json!({})).await;
    client.subscribe(3, "messages", json!({"n": 1})).await;
    assert_eq!(app.health().await["subscriptions"], 2);
    drop(client);
    let health = app.wait_for_health(|h| h["connections"] == 0).await;
    assert_eq!(health["subscriptions"], 0);
    assert_eq!(health["distinctQueries"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_of_100_kb_arrives_whole() {
    let app = TestApp::spawn().await;
    let mut client = app.subscriber(json!({})).await;
    let body: String = (0..100 * 1024).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    sqlx::query("insert into messages (room, body) values ('big', $1)")
        .bind(&body)
        .execute(&app.db.pool)
        .await
        .unwrap();
    let create = client.expect_event("create").await;
    assert_eq!(create["object"]["body"].as_str().unwrap(), body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_above_the_limit_are_refused() {
    let app = TestApp::spawn_with(|c| c.websocket.max_frame_bytes = 1024).await;
    let mut client = app.client().await;
    client.connect_parse().await;
    let huge = json!({"op": "subscribe", "requestId": 1, "query": {"className": "messages", "where": {"body": "x".repeat(4096)}}});
    client.send(huge).await;
    assert_eq!(client.closed().await, Some(CloseCode::Size));
    // Others are not disturbed.
    let mut other = app.subscriber(json!({})).await;
    app.db.execute("insert into messages (room) values ('a')").await;
    other.expect_event("create").await;
}

/// Opens a raw WebSocket (handshake only) that never reads or answers anything afterwards.
async fn raw_silent_socket(port: u16) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let request = "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_miss_a_pong_are_dropped_and_live_ones_kept() {
    let app = TestApp::spawn_with(|c| c.websocket.timeout_ms = 200).await;
    let mut live = app.subscriber(json!({})).await;
    let mut silent = raw_silent_socket(app.port).await;

    // The silent peer receives pings, never answers, and the server drops it within two
    // intervals (plus scheduling slack): reading then reaches the end of the stream.
    let dropped = tokio::spawn(async move {
        let mut buffer = vec![0u8; 4096];
        tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                match silent.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => continue,
                }
            }
        })
        .await
    });
    // Meanwhile the live client keeps reading, which answers each ping.
    live.expect_silence(Duration::from_millis(1500)).await;
    assert!(dropped.await.unwrap().is_ok(), "the silent peer was not dropped");
    let health = app.wait_for_health(|h| h["connections"] == 1).await;
    assert_eq!(health["subscriptions"], 1);

    app.db.execute("insert into messages (room) values ('still here')").await;
    live.expect_event("create").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_alone() {
    let app = TestApp::spawn_with(|c| c.limits.send_queue = 128).await;
    let mut reader = app.subscriber(json!({})).await;
    let _stalled = app.subscriber(json!({})).await; // never read again
                                                    // 16 MB in all: far more than the socket buffers, the transport's channel and the queue
                                                    // hold, written in bursts the reader keeps up with.
    let body = "x".repeat(16 * 1024);
    for batch in 0..50 {
        let sql = format!(
            "insert into messages (room, body) select 'flood', '{body}' || g from generate_series({}, {}) g",
            batch * 20,
            batch * 20 + 19
        );
        app.db.execute(&sql).await;
        for _ in 0..20 {
            reader.expect_event("create").await;
        }
    }
    let health = app.wait_for_health(|h| h["connections"] == 1).await;
    assert_eq!(health["subscriptions"], 1, "only the reader remains");
}

/// A requestId is a JavaScript number, as in Parse Server: `1e15` and `1000000000000000` are
/// one id, echoed as JavaScript prints it (plain digits), and `-0` is `0`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_javascript_numbers() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    client.connect_parse().await;
    client.send_text(r#"{"op":"subscribe","requestId":1e15,"query":{"className":"messages","where":{}}}"#).await;
    let subscribed = client.expect_event("subscribed").await;
    // `== u64` holds only for a number written as an integer (not `1e15` nor `1000000000000000.0`).
    assert!(subscribed["requestId"] == 1_000_000_000_000_000u64, "{subscribed}");
    app.db.execute("insert into messages (room) values ('a')").await;
    let create = client.expect_event("create").await;
    assert!(create["requestId"] == 1_000_000_000_000_000u64, "{create}");
    client.send_text(r#"{"op":"unsubscribe","requestId":1000000000000000}"#).await;
    let unsubscribed = client.expect_event("unsubscribed").await;
    assert!(unsubscribed["requestId"] == 1_000_000_000_000_000u64, "{unsubscribed}");

    client.send_text(r#"{"op":"subscribe","requestId":-0,"query":{"className":"messages","where":{}}}"#).await;
    let subscribed = client.expect_event("subscribed").await;
    assert!(subscribed["requestId"] == 0u64, "echoed as 0, not -0.0: {subscribed}");
    client.send(json!({"op": "unsubscribe", "requestId": 0})).await;
    let unsubscribed = client.expect_event("unsubscribed").await;
    assert!(unsubscribed["requestId"] == 0u64, "{unsubscribed}");
    assert_eq!(app.health().await["subscriptions"], 0);
}

/// A `where` holding a number beyond f64 is refused with 102 and the request's id (serde_json
/// refuses the whole frame; it used to go unanswered), and the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_where_number_beyond_f64_is_refused_with_102() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    client.connect_parse().await;
    client.send_text(r#"{"op":"subscribe","requestId":7,"query":{"className":"messages","where":{"n":1e400}}}"#).await;
    let error = client.expect_event("error").await;
    assert_eq!(
        error,
        json!({"op": "error", "error": "number 1e400 is out of range", "code": 102, "reconnect": false, "requestId": 7})
    );
    // Outside a `where`: the frame fails the schema.
    client.send_text(r#"{"op":"subscribe","requestId":-1e400,"query":{"className":"messages","where":{}}}"#).await;
    let error = client.expect_event("error").await;
    assert_eq!(
        error,
        json!({"op": "error", "error": "number -1e400 is out of range", "code": 1, "reconnect": true, "requestId": null})
    );
    // A string is only a string.
    client.subscribe(8, "messages", json!({"body": "1e400"})).await;
    client.subscribe(9, "messages", json!({"n": 1})).await;
    app.db.execute("insert into messages (n, body) values (1, 'x'), (2, '1e400')").await;
    let first = client.recv().await;
    let second = client.recv().await;
    let mut got = [
        (first["requestId"].clone(), first["object"]["n"].clone()),
        (second["requestId"].clone(), second["object"]["n"].clone()),
    ];
    got.sort_by_key(|(id, _)| id.as_i64());
    assert_eq!(got, [(json!(8), json!(2)), (json!(9), json!(1))]);
    assert_eq!(app.health().await["subscriptions"], 2);
}

/// tv4's uniqueness check of `keys`/`watch` in linear time: two 10,000-name lists cost ~6 s of
/// CPU in a debug build when every pair was compared, milliseconds now; same message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_keys_lists_are_checked_in_linear_time() {
    let app = TestApp::spawn_with(|c| {
        c.websocket.max_frame_bytes = 1 << 20;
        c.limits.field_list = 10_000;
    })
    .await;
    let mut client = app.client().await;
    client.connect_parse().await;
    let names: Vec<String> = (0..10_000).map(|i| format!("f{i}")).collect();
    let mut repeated = names.clone();
    repeated.push("f9999".into());
    let query = |watch: &[String]| json!({"className": "messages", "where": {}, "keys": names, "watch": watch});

    let started = std::time::Instant::now();
    client.send(json!({"op": "subscribe", "requestId": 1, "query": query(&repeated)})).await;
    let error = client.expect_event("error").await;
    let elapsed = started.elapsed();
    println!("two 10,000-name lists refused in {elapsed:?}");
    assert_eq!(error["error"], "Array items are not unique (indices 9999 and 10000)", "{error}");
    assert_eq!(error["code"], 1);
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");

    client.send(json!({"op": "subscribe", "requestId": 2, "query": query(&names)})).await;
    let subscribed = client.expect_event("subscribed").await;
    assert_eq!(subscribed["requestId"], 2);
}
