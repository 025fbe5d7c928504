//! Snapshots: the rows of a query at a position, then exactly the changes after it, on both
//! transports and under concurrent writers; Parse's `query` op; the limits.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::rng::Rng;
use crate::support::sse::{encode, SseClient};
use crate::support::{TestApp, WsClient};

/// A client's view of its query: objects by id, built from a snapshot and then events.
#[derive(Debug, Default)]
struct View {
    rows: BTreeMap<String, i64>,
}

impl View {
    fn put(&mut self, object: &Value, who: &str, create: bool) {
        let id = object["objectId"].as_str().expect("objectId").to_string();
        let n = object["n"].as_i64().expect("n");
        let before = self.rows.insert(id.clone(), n);
        if create {
            assert!(before.is_none(), "{who}: a create for {id}, which it already had");
        }
    }

    fn apply(&mut self, op: &str, object: &Value, who: &str) {
        match op {
            "create" => self.put(object, who, true),
            "enter" | "update" => self.put(object, who, false),
            "leave" | "delete" => {
                let id = object["objectId"].as_str().expect("objectId");
                assert!(self.rows.remove(id).is_some(), "{who}: a {op} for {id}, which it did not have");
            }
            other => panic!("{who}: unexpected op {other}"),
        }
    }
}

/// What the table holds for `room = 'hot' and n >= 50` (the query under test).
async fn expected(app: &TestApp) -> BTreeMap<String, i64> {
    let rows: Vec<(i64, i32)> = sqlx::query_as("select id, n from messages where room = 'hot' and n >= 50 order by id")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    rows.into_iter().map(|(id, n)| (id.to_string(), i64::from(n))).collect()
}

fn query() -> Value {
    json!({"room": "hot", "n": {"$gte": 50}})
}

/// A WebSocket client: snapshot, then events until told to stop and the stream is quiet.
async fn websocket_view(port: u16, stop: Arc<AtomicBool>, who: String) -> View {
    let mut ws = WsClient::connect(&format!("ws://127.0.0.1:{port}/")).await;
    ws.connect_parse().await;
    ws.send(json!({"op": "subscribe", "requestId": 1, "snapshot": true,
        "query": {"className": "messages", "where": query()}}))
        .await;
    let result = ws.recv().await;
    assert_eq!(result["op"], "result", "{who}: the result comes first: {result}");
    let mut view = View::default();
    for object in result["results"].as_array().unwrap() {
        view.put(object, &who, true);
    }
    let mut subscribed = false;
    loop {
        let wait = if stop.load(Ordering::Relaxed) { Duration::from_millis(1500) } else { Duration::from_secs(10) };
        let Some(frame) = ws.recv_within(wait).await else {
            assert!(stop.load(Ordering::Relaxed), "{who}: silent while writers run");
            break;
        };
        match frame["op"].as_str().unwrap() {
            "subscribed" => subscribed = true,
            op => view.apply(op, &frame["object"], &who),
        }
    }
    assert!(subscribed, "{who}: subscribed");
    view
}

/// An SSE client: `snapshot=true`, then events.
async fn sse_view(port: u16, stop: Arc<AtomicBool>, who: String) -> View {
    let path = format!("/events/messages?snapshot=true&where={}", encode(&query().to_string()));
    let mut sse = SseClient::get(port, &path, &[]).await;
    assert_eq!(sse.status, 200, "{who}");
    let mut view = View::default();
    let mut snapshot_done = false;
    loop {
        let wait = if stop.load(Ordering::Relaxed) { Duration::from_millis(1500) } else { Duration::from_secs(10) };
        let Some(event) = sse.next_event_within(wait).await else {
            assert!(stop.load(Ordering::Relaxed), "{who}: silent while writers run");
            break;
        };
        match event.name() {
            "snapshot" => {
                assert!(!snapshot_done, "{who}: snapshot chunks come first");
                for object in event.json()["objects"].as_array().unwrap() {
                    view.put(object, &who, true);
                }
            }
            "subscribed" => snapshot_done = true,
            op => {
                snapshot_done = true;
                view.apply(op, &event.json()["object"], &who);
            }
        }
    }
    view
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_then_events_equal_the_table_under_concurrent_writers() {
    let app = TestApp::spawn_with(|c| c.limits.snapshot_rows = 100_000).await;
    app.db.execute("insert into messages (room, n) select case when i % 3 = 0 then 'cold' else 'hot' end, i % 100 from generate_series(1, 600) i").await;
    let stop = Arc::new(AtomicBool::new(false));
    // Four writers: inserts, updates that move rows in and out of the query, deletes.
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let (url, stop) = (app.db.url.clone(), stop.clone());
            tokio::spawn(async move {
                let pool = sqlx::PgPool::connect(&url).await.unwrap();
                let mut rng = Rng::new(w + 1);
                while !stop.load(Ordering::Relaxed) {
                    let n = (rng.next() % 100) as i32;
                    let id = (rng.next() % 700) as i64 + 1;
                    let sql = match rng.next() % 4 {
                        0 => "insert into messages (room, n) values ('hot', $1)",
                        1 => "update messages set n = $1 where id = $2",
                        2 => "update messages set room = case when room = 'hot' then 'cold' else 'hot' end, n = $1 where id = $2",
                        _ => "delete from messages where id = $2 and $1 >= 0",
                    };
                    let _ = sqlx::query(sql).bind(n).bind(id).execute(&pool).await;
                }
            })
        })
        .collect();
    // 50 clients on both transports take their snapshots at random moments meanwhile.
    let mut rng = Rng::new(99);
    let mut clients = Vec::new();
    for i in 0..50 {
        tokio::time::sleep(Duration::from_millis(rng.next() % 40)).await;
        let (port, stop) = (app.port, stop.clone());
        let who = format!("client {i}");
        clients.push(if i % 2 == 0 {
            tokio::spawn(websocket_view(port, stop, who))
        } else {
            tokio::spawn(sse_view(port, stop, who))
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    app.wait_until_published().await;
    let expected = expected(&app).await;
    assert!(expected.len() > 100, "the query holds rows: {}", expected.len());
    for (i, client) in clients.into_iter().enumerate() {
        let view = client.await.unwrap();
        assert_eq!(view.rows, expected, "client {i}: snapshot + events = the table");
    }
}

#[tokio::test]
async fn parse_query_op_answers_the_current_rows_as_events_carry_them() {
    let app = TestApp::spawn_with(|c| {
        c.classes.insert(
            "messages".into(),
            livegate::auth::rules::ClassRule { protected_fields: vec!["secret_note".into()], ..Default::default() },
        );
    })
    .await;
    app.db
        .execute(
            "insert into messages (room, body, n, secret_note) values \
             ('r', 'public', 1, 'hidden'), ('r', 'also', 2, 'hidden'), ('other', 'elsewhere', 3, null)",
        )
        .await;
    app.wait_until_published().await;
    let mut ws = app.subscriber(json!({"room": "r"})).await;
    ws.send(json!({"op": "query", "requestId": 1})).await;
    let result = ws.recv().await;
    assert_eq!(result["op"], "result", "{result}");
    assert_eq!(result["requestId"], 1);
    assert!(result["clientId"].is_string());
    let results = result["results"].as_array().unwrap();
    let bodies: Vec<&str> = results.iter().map(|o| o["body"].as_str().unwrap()).collect();
    assert_eq!(bodies.len(), 2, "{result}");
    assert!(bodies.contains(&"public") && bodies.contains(&"also"), "only the query's rows: {result}");
    assert!(results.iter().all(|o| o.get("secret_note").is_none()), "protected fields stripped: {result}");
    assert!(results.iter().all(|o| o["className"] == "messages" && o["objectId"].is_string()));
    // The same object an event would carry.
    app.db.execute("insert into messages (room, body, n) values ('r', 'later', 4)").await;
    let event = ws.expect_event("create").await;
    ws.send(json!({"op": "query", "requestId": 1})).await;
    let again = ws.recv().await;
    let later = again["results"].as_array().unwrap().iter().find(|o| o["body"] == "later").cloned().unwrap();
    assert_eq!(later, event["object"]);
    // An unknown subscription, and one before connect.
    ws.send(json!({"op": "query", "requestId": 7})).await;
    assert_eq!(ws.recv().await["code"], 2);
}

#[tokio::test]
async fn snapshots_past_the_row_limit_are_refused_clearly_on_both_transports() {
    let app = TestApp::spawn_with(|c| c.limits.snapshot_rows = 5).await;
    app.db.execute("insert into messages (room, n) select 'big', i from generate_series(1, 6) i").await;
    let mut ws = app.client().await;
    ws.connect_parse().await;
    ws.send(json!({"op": "subscribe", "requestId": 3, "snapshot": true,
        "query": {"className": "messages", "where": {"room": "big"}}}))
        .await;
    let refused = ws.recv().await;
    assert_eq!(
        (refused["op"].as_str(), refused["code"].as_i64(), refused["requestId"].as_i64()),
        (Some("error"), Some(155), Some(3))
    );
    assert!(refused["error"].as_str().unwrap().contains("limits.snapshot_rows (5)"), "{refused}");
    // Without the snapshot, the same subscription is fine; a narrower snapshot too.
    ws.send(json!({"op": "subscribe", "requestId": 4, "snapshot": true,
        "query": {"className": "messages", "where": {"room": "big", "n": {"$lte": 5}}}}))
        .await;
    let result = ws.recv().await;
    assert_eq!(result["results"].as_array().map(Vec::len), Some(5), "{result}");
    assert_eq!(ws.recv().await["op"], "subscribed");
    let path = format!("/events/messages?snapshot=true&where={}", encode(r#"{"room":"big"}"#));
    let mut sse = SseClient::get(app.port, &path, &[]).await;
    assert_eq!(sse.status, 413);
    assert_eq!(sse.json_body().await["code"], 155);
    let path = format!("/events/messages?snapshot=maybe&where={}", encode(r#"{"room":"big"}"#));
    assert_eq!(SseClient::get(app.port, &path, &[]).await.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_cannot_finish_in_time_is_refused_with_124() {
    let app = TestApp::spawn_with(|c| c.limits.snapshot_timeout_ms = 300).await;
    let mut locker = app.db.pool.begin().await.unwrap();
    sqlx::query("lock table messages in access exclusive mode").execute(&mut *locker).await.unwrap();
    let mut ws = app.client().await;
    ws.connect_parse().await;
    ws.send(json!({"op": "subscribe", "requestId": 1, "snapshot": true,
        "query": {"className": "messages", "where": {}}}))
        .await;
    let refused = ws.recv().await;
    assert_eq!(refused["code"], 124, "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("limits.snapshot_timeout_ms (300 ms)"), "{refused}");
    locker.rollback().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_position_gets_the_gap_then_a_fresh_snapshot_on_both_transports() {
    let app = TestApp::spawn_with(|c| c.limits.replay_changes = 3).await;
    app.db.execute("insert into messages (room, n) select 'gap', i from generate_series(1, 10) i").await;
    app.wait_until_published().await;
    let epoch: String = sqlx::query_scalar("select replace(epoch::text, '-', '') from livegate.stream")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    // Ten changes behind, with replays limited to three: the position cannot be honoured.
    let old = format!("0-{epoch}");
    let mut sse = SseClient::get(
        app.port,
        &format!("/events/messages?snapshot=true&where={}", encode(r#"{"room":"gap"}"#)),
        &[("Last-Event-ID", old.as_str())],
    )
    .await;
    assert_eq!(sse.status, 200);
    let gap = sse.expect("gap").await;
    assert_eq!((gap.json()["reason"].as_str(), gap.json()["snapshot"].as_bool()), (Some("expired"), Some(true)));
    assert!(gap.id.is_none(), "a gap a snapshot follows does not move Last-Event-ID");
    let snapshot = sse.expect("snapshot").await;
    assert_eq!(snapshot.json()["reset"], true);
    assert_eq!(snapshot.json()["objects"].as_array().map(Vec::len), Some(10));
    let subscribed = sse.expect("subscribed").await;
    app.db.execute("insert into messages (room, n) values ('gap', 11)").await;
    let create = sse.expect("create").await;
    let offset = |id: String| id.split('-').next().unwrap().parse::<i64>().unwrap();
    assert_eq!(offset(create.id()), offset(subscribed.id()) + 1, "live from the snapshot's position");

    let mut ws = app.client().await;
    ws.connect_parse().await;
    let other_epoch = format!("0-{}", uuid::Uuid::new_v4().simple());
    ws.send(json!({"op": "subscribe", "requestId": 1, "since": other_epoch, "snapshot": true,
        "query": {"className": "messages", "where": {"room": "gap"}}}))
        .await;
    let gap = ws.recv().await;
    assert_eq!(
        (gap["op"].as_str(), gap["reason"].as_str(), gap["snapshot"].as_bool()),
        (Some("gap"), Some("reset"), Some(true)),
        "{gap}"
    );
    let result = ws.recv().await;
    assert_eq!(result["op"], "result", "{result}");
    assert_eq!(result["results"].as_array().map(Vec::len), Some(11));
    let subscribed = ws.recv().await;
    assert_eq!(subscribed["op"], "subscribed");
    assert!(subscribed["position"].is_string());
    // A position that can be honoured replays, with no snapshot.
    let mut resumed = app.client().await;
    resumed.connect_parse().await;
    resumed
        .send(json!({"op": "subscribe", "requestId": 1, "since": subscribed["position"], "snapshot": true,
            "query": {"className": "messages", "where": {"room": "gap"}}}))
        .await;
    app.db.execute("insert into messages (room, n) values ('gap', 12)").await;
    let mut ops = Vec::new();
    while ops.len() < 2 {
        ops.push(resumed.recv().await["op"].as_str().unwrap().to_string());
    }
    assert!(!ops.contains(&"result".to_string()), "{ops:?}");
}

#[tokio::test]
async fn sse_streams_filter_ops_and_carry_timestamps_and_changes() {
    let app = TestApp::spawn().await;
    let where_ = encode(r#"{"room":"seed"}"#);
    let mut filtered =
        SseClient::get(app.port, &format!("/events/messages?ops=create,delete&where={where_}"), &[]).await;
    let mut changes = SseClient::get(app.port, &format!("/events/messages?changes=true&where={where_}"), &[]).await;
    filtered.expect("subscribed").await;
    changes.expect("subscribed").await;
    app.db.execute("insert into messages (room, body, n) values ('seed', 'a', 1)").await;
    app.db.execute("update messages set body = 'b' where room = 'seed'").await;
    app.db.execute("delete from messages where room = 'seed'").await;
    let create = filtered.next_event().await;
    assert_eq!(create.name(), "create");
    let timestamp = create.json()["timestamp"].as_str().unwrap().to_string();
    assert!(timestamp.ends_with('Z') && timestamp.len() == 24, "ISO-8601 capture time: {timestamp}");
    assert_eq!(filtered.next_event().await.name(), "delete", "the update is not sent");
    assert_eq!(changes.expect("create").await.json().get("changes"), None);
    let update = changes.expect("update").await;
    assert_eq!(update.json()["changes"], json!(["body"]), "{:?}", update.data);
    assert!(update.json()["timestamp"].is_string());
    let path = format!("/events/messages?ops=create,moved&where={where_}");
    let mut bad = SseClient::get(app.port, &path, &[]).await;
    assert_eq!(bad.status, 400);
    assert!(bad.json_body().await["error"].as_str().unwrap().contains("\"moved\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_while_the_database_is_away_is_an_error_not_a_hang() {
    let (app, proxy) = crate::feed::behind_proxy().await;
    let mut ws = app.client().await;
    ws.connect_parse().await;
    proxy.cut();
    let asked = std::time::Instant::now();
    ws.send(json!({"op": "subscribe", "requestId": 1, "snapshot": true,
        "query": {"className": "messages", "where": {}}}))
        .await;
    let refused = ws.recv().await;
    assert_eq!((refused["op"].as_str(), refused["code"].as_i64()), (Some("error"), Some(1)), "{refused}");
    assert!(refused["error"].as_str().unwrap().starts_with("A snapshot cannot be taken now"), "{refused}");
    assert!(asked.elapsed() < Duration::from_secs(8), "answered within the connect timeout: {:?}", asked.elapsed());
    proxy.restore();
    ws.send(json!({"op": "subscribe", "requestId": 2, "snapshot": true,
        "query": {"className": "messages", "where": {}}}))
        .await;
    let mut frame = ws.recv().await;
    for _ in 0..20 {
        if frame["op"] == "result" {
            break;
        }
        // The pool may still hand out a connection the cut broke: the client is told, retries.
        assert_eq!(frame["code"], 1, "{frame}");
        tokio::time::sleep(Duration::from_millis(250)).await;
        ws.send(json!({"op": "subscribe", "requestId": 2, "snapshot": true,
            "query": {"className": "messages", "where": {}}}))
            .await;
        frame = ws.recv().await;
    }
    assert_eq!(frame["op"], "result", "snapshots work again once the database is back: {frame}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_stream_whose_position_was_pruned_gets_a_gap_and_a_fresh_snapshot() {
    let app = TestApp::spawn_with(|c| {
        c.history.max_changes = 5;
        c.history.prune_interval_ms = 100;
    })
    .await;
    let path = format!("/events/messages?snapshot=true&where={}", encode(r#"{"room":"kept"}"#));
    let mut sse = SseClient::get(app.port, &path, &[]).await;
    assert_eq!(sse.expect("snapshot").await.json()["objects"], json!([]));
    let old = sse.expect("subscribed").await.id();
    drop(sse);
    app.db.execute("insert into messages (room, n) select 'kept', i from generate_series(1, 20) i").await;
    app.db.execute("delete from messages where n > 15").await;
    let old_offset: i64 = old.split('-').next().unwrap().parse().unwrap();
    let mut floor = 0i64;
    for _ in 0..100 {
        floor = sqlx::query_scalar("select floor from livegate.stream").fetch_one(&app.db.pool).await.unwrap();
        if floor > old_offset + 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(floor > old_offset + 10, "the pruner moved past the stream's position");
    let mut sse = SseClient::get(app.port, &path, &[("Last-Event-ID", old.as_str())]).await;
    let gap = sse.expect("gap").await;
    assert_eq!((gap.json()["reason"].as_str(), gap.id.as_deref()), (Some("expired"), None));
    let mut objects = Vec::new();
    let mut first = true;
    loop {
        let event = sse.next_event().await;
        match event.name() {
            "snapshot" => {
                assert_eq!(event.json().get("reset").is_some(), first, "only the first chunk resets");
                first = false;
                objects.extend(event.json()["objects"].as_array().unwrap().iter().map(|o| o["n"].as_i64().unwrap()));
            }
            "subscribed" => break,
            other => panic!("unexpected {other} before subscribed"),
        }
    }
    objects.sort();
    assert_eq!(objects, (1..=15).collect::<Vec<_>>(), "the table as it is now");
}

#[tokio::test]
async fn a_snapshot_larger_than_the_send_queue_allows_is_refused_not_cut_off() {
    let app = TestApp::spawn_with(|c| c.limits.send_queue_bytes = 8_192).await;
    app.db
        .execute("insert into messages (room, body) select 'wide', repeat('x', 200) from generate_series(1, 40)")
        .await;
    let mut ws = app.client().await;
    ws.connect_parse().await;
    ws.send(json!({"op": "subscribe", "requestId": 1, "snapshot": true,
        "query": {"className": "messages", "where": {"room": "wide"}}}))
        .await;
    let refused = ws.recv().await;
    assert_eq!(refused["code"], 155, "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("half of limits.send_queue_bytes (4096 bytes)"), "{refused}");
    // The connection stays, and a narrower snapshot that fits is served.
    ws.send(json!({"op": "subscribe", "requestId": 2, "snapshot": true,
        "query": {"className": "messages", "where": {"room": "wide", "id": {"$lte": 10}}, "keys": ["room"]}}))
        .await;
    let result = ws.recv().await;
    assert_eq!(result["results"].as_array().map(Vec::len), Some(10), "{result}");
}
