//! Server-Sent Events and lossless resume on both transports: Last-Event-ID, the WebSocket
//! `since` extension, a killed gateway, retention and epochs.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::sse::{encode, free_port, GatewayProcess, SseClient, SseEvent};
use crate::support::{TestApp, TestDb, MESSAGES, PATIENCE};

fn position_offset(id: &str) -> i64 {
    id.split('-').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_live_events_with_ids_and_keepalives() {
    let app = TestApp::spawn_with(|c| c.sse.keepalive_ms = 300).await;
    let mut sse = SseClient::subscribe(app.port, "messages", &json!({"room": "a"}), "&keys=body", &[]).await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    assert_eq!(sse.header("cache-control"), Some("no-cache, no-transform"));
    assert_eq!(sse.header("x-accel-buffering"), Some("no"));
    let retry = sse.next_block_within(PATIENCE).await.unwrap();
    assert_eq!(retry.retry, Some(2000), "{retry:?}");
    let subscribed = sse.expect("subscribed").await;
    assert_eq!(subscribed.json()["position"], subscribed.id());

    app.db.execute("insert into messages (id, room, body, n) values (1, 'a', 'hello', 5), (2, 'b', 'other', 1)").await;
    app.db.execute("update messages set body = 'edited' where id = 1").await;
    app.db.execute("update messages set room = 'b' where id = 1").await;
    app.db.execute("update messages set room = 'a' where id = 2").await;
    app.db.execute("delete from messages where id = 2").await;

    let mut events: Vec<SseEvent> = Vec::new();
    for _ in 0..5 {
        events.push(sse.next_event().await);
    }
    let names: Vec<&str> = events.iter().map(SseEvent::name).collect();
    assert_eq!(names, ["create", "update", "leave", "enter", "delete"]);
    let create = events[0].json();
    assert_eq!(create["object"]["objectId"], "1");
    assert_eq!(create["object"]["body"], "hello");
    assert!(create["object"].get("n").is_none(), "keys projects the object: {create}");
    assert!(create.get("original").is_none());
    let update = events[1].json();
    assert_eq!(update["object"]["body"], "edited");
    assert_eq!(update["original"]["body"], "hello");
    // Ids are positions: strictly increasing, and after the subscribed position.
    let offsets: Vec<i64> = events.iter().map(|e| position_offset(&e.id())).collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
    assert!(offsets[0] > position_offset(&subscribed.id()));

    // An idle stream gets keep-alive comments.
    let keepalive = sse.next_block_within(Duration::from_secs(2)).await.expect("a keep-alive");
    assert_eq!(keepalive.comment.as_deref(), Some("keep-alive"), "{keepalive:?}");

    drop(sse);
    app.wait_for_health(|h| h["subscriptions"] == 0 && h["connections"] == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_refuses_bad_requests_with_the_websocket_codes() {
    let app = TestApp::spawn().await;
    let where_ = json!({"a": {"$inQuery": {}}});

    // The WebSocket's answer to the same query, for comparison.
    let mut ws = app.client().await;
    ws.connect_parse().await;
    ws.send(json!({"op": "subscribe", "requestId": 1, "query": {"className": "messages", "where": where_}})).await;
    let ws_error = ws.recv().await;

    let mut sse = SseClient::subscribe(app.port, "messages", &where_, "", &[]).await;
    assert_eq!(sse.status, 400);
    assert!(sse.header("content-type").unwrap().starts_with("application/json"));
    let body = sse.json_body().await;
    assert_eq!(body["code"], 102);
    assert_eq!(body["error"], ws_error["error"], "the same message as on the WebSocket");

    let cases = [
        ("/events/messages?where=%7Bnot%20json", 1, "where is not valid JSON"),
        ("/events/messages?where=%5B1%5D", 1, "where must be a JSON object"),
        ("/events/messages?wehre=%7B%7D", 1, "unknown field `wehre`"),
        ("/events/messages?keys=a,,b", 1, "keys: empty field name"),
        ("/events/messages?watch=a,a", 1, "watch: a is listed twice"),
        ("/events/messages?since=12", 1, "since: invalid stream position"),
    ];
    for (path, code, message) in cases {
        let mut sse = SseClient::get(app.port, path, &[]).await;
        assert_eq!(sse.status, 400, "{path}");
        let body = sse.json_body().await;
        assert_eq!(body["code"], code, "{path}: {body}");
        assert!(body["error"].as_str().unwrap().contains(message), "{path}: {body}");
    }
    let mut sse = SseClient::get(app.port, "/events/messages", &[("Last-Event-ID", "garbage")]).await;
    assert_eq!(sse.status, 400);
    assert_eq!(sse.json_body().await["code"], 1);
    assert_eq!(app.health().await["subscriptions"], 0, "nothing was subscribed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resumes_after_a_client_drop_with_last_event_id() {
    let app = TestApp::spawn().await;
    let where_ = json!({"room": "a"});
    let mut sse = SseClient::subscribe(app.port, "messages", &where_, "", &[]).await;
    sse.expect("subscribed").await;
    app.db.execute("insert into messages (id, room, n) values (1, 'a', 1)").await;
    let last = sse.expect("create").await.id();
    drop(sse);

    // Missed while away: matching and non-matching changes of every kind.
    app.db.execute("insert into messages (id, room, n) values (2, 'a', 2), (3, 'b', 3)").await;
    app.db.execute("update messages set n = 10 where id = 1").await;
    app.db.execute("update messages set room = 'a' where id = 3").await;
    app.db.execute("delete from messages where id = 2").await;
    app.db.execute("insert into messages (id, room, n) values (4, 'b', 4)").await;
    app.wait_until_published().await;

    let mut sse = SseClient::subscribe(app.port, "messages", &where_, "", &[("Last-Event-ID", &last)]).await;
    assert_eq!(sse.status, 200);
    let missed: Vec<(String, String)> = {
        let mut out = Vec::new();
        for _ in 0..4 {
            let e = sse.next_event().await;
            out.push((e.name().to_string(), e.json()["object"]["objectId"].as_str().unwrap().to_string()));
        }
        out
    };
    assert_eq!(
        missed,
        [
            ("create".into(), "2".into()),
            ("update".into(), "1".into()),
            ("enter".into(), "3".into()),
            ("delete".into(), "2".into())
        ]
    );
    let subscribed = sse.expect("subscribed").await;
    app.db.execute("insert into messages (id, room) values (5, 'a')").await;
    let live = sse.expect("create").await;
    assert_eq!(live.json()["object"]["objectId"], "5");
    assert!(position_offset(&live.id()) > position_offset(&subscribed.id()));

    // The URL parameter does the same on a first connect; Last-Event-ID wins over it.
    let mut by_param =
        SseClient::subscribe(app.port, "messages", &where_, &format!("&since={}", encode(&last)), &[]).await;
    assert_eq!(by_param.expect("create").await.json()["object"]["objectId"], "2");
    let mut both = SseClient::subscribe(
        app.port,
        "messages",
        &where_,
        &format!("&since={}", encode(&last)),
        &[("Last-Event-ID", &subscribed.id())],
    )
    .await;
    assert_eq!(both.expect("create").await.id(), live.id(), "resumed from Last-Event-ID: only #5 was after it");
    assert_eq!(both.expect("subscribed").await.id(), live.id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_since_extension_resumes_and_plain_clients_see_no_positions() {
    let app = TestApp::spawn().await;
    let mut plain = app.subscriber(json!({})).await;
    let mut tracking = app.client().await;
    tracking.connect_parse().await;
    tracking
        .send(json!({"op": "subscribe", "requestId": 7, "query": {"className": "messages", "where": {"room": "a"}}, "since": "now"}))
        .await;
    let subscribed = tracking.recv().await;
    assert_eq!(subscribed["op"], "subscribed");
    assert!(subscribed["position"].is_string(), "{subscribed}");

    app.db.execute("insert into messages (id, room) values (1, 'a')").await;
    let event = tracking.expect_event("create").await;
    let last = event["position"].as_str().expect("events carry positions").to_string();
    let plain_event = plain.expect_event("create").await;
    assert!(plain_event.get("position").is_none(), "a Parse client never sees the extension: {plain_event}");
    drop(tracking);

    app.db.execute("insert into messages (id, room) values (2, 'a'), (3, 'b')").await;
    app.db.execute("update messages set body = 'x' where id = 1").await;
    app.wait_until_published().await;

    let mut back = app.client().await;
    back.connect_parse().await;
    back.send(json!({"op": "subscribe", "requestId": 7, "query": {"className": "messages", "where": {"room": "a"}}, "since": last}))
        .await;
    let create = back.expect_event("create").await;
    assert_eq!(create["object"]["objectId"], "2");
    assert_eq!(create["requestId"], 7);
    let update = back.expect_event("update").await;
    assert_eq!(update["object"]["objectId"], "1");
    assert!(
        position_offset(update["position"].as_str().unwrap()) > position_offset(create["position"].as_str().unwrap())
    );
    let subscribed = back.recv().await;
    assert_eq!(subscribed["op"], "subscribed", "subscribed follows the replay: {subscribed}");
    assert_eq!(subscribed["position"], update["position"]);
    app.db.execute("insert into messages (id, room) values (4, 'a')").await;
    assert_eq!(back.expect_event("create").await["object"]["objectId"], "4");

    // A malformed position is refused with the request's id; the socket stays usable.
    back.send(
        json!({"op": "subscribe", "requestId": 8, "query": {"className": "messages", "where": {}}, "since": "nope"}),
    )
    .await;
    let error = back.recv().await;
    assert_eq!((error["code"].as_i64(), error["requestId"].as_i64()), (Some(1), Some(8)), "{error}");
    // Unsubscribing while a replay may still be running cancels it for good: if it went live
    // first, the unsubscribe removes it; if not, it never goes live.
    app.db.execute("insert into messages (id, room) select g, 'bulk' from generate_series(1000, 2999) g").await;
    back.send(
        json!({"op": "subscribe", "requestId": 9, "query": {"className": "messages", "where": {}}, "since": last}),
    )
    .await;
    back.send(json!({"op": "unsubscribe", "requestId": 9})).await;
    let mut unsubscribed = false;
    while let Some(frame) = back.recv_within(Duration::from_millis(800)).await {
        if frame["requestId"] == 9 {
            assert!(!(unsubscribed && frame["op"] == "subscribed"), "went live after unsubscribing: {frame}");
            unsubscribed |= frame["op"] == "unsubscribed";
        }
    }
    assert!(unsubscribed);
    app.wait_for_health(|h| h["subscriptions"] == 2).await;
}

/// Every row written by the writers, in stream order, read back from the change table.
async fn stream_order(db: &TestDb) -> Vec<String> {
    sqlx::query_scalar("select new_row->>'body' from livegate.changes where op = 'INSERT' order by pos")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

/// A client that keeps reconnecting with its last position until it has `want` creates.
async fn sse_until(port: u16, want: usize) -> Vec<String> {
    let mut bodies = Vec::new();
    let mut last: Option<String> = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while bodies.len() < want {
        assert!(tokio::time::Instant::now() < deadline, "SSE client stuck at {} of {want}", bodies.len());
        let headers: Vec<(&str, &str)> = last.iter().map(|l| ("Last-Event-ID", l.as_str())).collect();
        let path = format!("/events/messages?where={}", encode("{}"));
        let Ok(mut sse) = SseClient::try_get(port, &path, &headers).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        while let Some(event) = sse.next_event_within(Duration::from_secs(5)).await {
            match event.name() {
                "create" => bodies.push(event.json()["object"]["body"].as_str().unwrap().to_string()),
                "subscribed" => {}
                other => panic!("unexpected {other}: {event:?}"),
            }
            last = Some(event.id());
            if bodies.len() == want {
                break;
            }
        }
    }
    bodies
}

/// The same over WebSocket with the `since` extension.
async fn ws_until(port: u16, want: usize) -> Vec<String> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let mut bodies = Vec::new();
    let mut since = "now".to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while bodies.len() < want {
        assert!(tokio::time::Instant::now() < deadline, "WebSocket client stuck at {} of {want}", bodies.len());
        let Ok((mut socket, _)) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/")).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let connect = json!({"op": "connect", "applicationId": "app"});
        let subscribe =
            json!({"op": "subscribe", "requestId": 1, "query": {"className": "messages", "where": {}}, "since": since});
        if socket.send(Message::text(connect.to_string())).await.is_err()
            || socket.send(Message::text(subscribe.to_string())).await.is_err()
        {
            continue;
        }
        while let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(5), socket.next()).await {
            let Message::Text(text) = message else { continue };
            let frame: Value = serde_json::from_str(&text).unwrap();
            match frame["op"].as_str() {
                Some("create") => bodies.push(frame["object"]["body"].as_str().unwrap().to_string()),
                Some("subscribed") | Some("connected") => {}
                _ => panic!("unexpected frame {frame}"),
            }
            if let Some(position) = frame["position"].as_str() {
                since = position.to_string();
            }
            if bodies.len() == want {
                break;
            }
        }
    }
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_loses_nothing_for_clients_that_resume() {
    let db = TestDb::create().await;
    db.execute(MESSAGES).await;
    let port = free_port();
    let gateway = GatewayProcess::start(&db.url, port).await;

    const WRITERS: usize = 3;
    const ROWS: usize = 150;
    let total = WRITERS * ROWS;
    let sse = tokio::spawn(sse_until(port, total));
    let ws = tokio::spawn(ws_until(port, total));
    // Both clients are subscribed before anything is written.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let pool = db.pool.clone();
            tokio::spawn(async move {
                for i in 0..ROWS {
                    sqlx::query("insert into messages (room, body) values ('r', $1)")
                        .bind(format!("{w}-{i}"))
                        .execute(&pool)
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(8)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    gateway.kill().await;
    // Writers carry on while no gateway runs.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let gateway = GatewayProcess::start(&db.url, port).await;
    for writer in writers {
        writer.await.unwrap();
    }
    let expected = stream_order(&db).await;
    assert_eq!(expected.len(), total);
    for (name, got) in [("SSE", sse.await.unwrap()), ("WebSocket", ws.await.unwrap())] {
        let unique: HashSet<&String> = got.iter().collect();
        assert_eq!(unique.len(), got.len(), "{name}: no duplicates");
        assert_eq!(got, expected, "{name}: every change exactly once, in stream order");
    }
    gateway.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_outside_retention_or_from_another_epoch_get_a_gap() {
    let app = TestApp::spawn_with(|c| {
        c.history.max_changes = 5;
        c.history.prune_interval_ms = 100;
    })
    .await;
    let mut sse = SseClient::subscribe(app.port, "messages", &json!({}), "", &[]).await;
    let old = sse.expect("subscribed").await.id();
    drop(sse);
    for i in 0..20 {
        app.db.execute(&format!("insert into messages (id, room) values ({i}, 'r')")).await;
    }
    // Wait for the pruner to move the floor past the old position and to trim the history to
    // its retention (it only prunes what was published, so one pass may not be enough).
    let (mut floor, mut retained) = (0i64, i64::MAX);
    for _ in 0..100 {
        floor = sqlx::query_scalar("select floor from livegate.stream").fetch_one(&app.db.pool).await.unwrap();
        retained = sqlx::query_scalar("select count(*) from livegate.changes").fetch_one(&app.db.pool).await.unwrap();
        if floor > position_offset(&old) && retained <= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(floor > position_offset(&old), "the pruner ran");
    assert!(retained <= 5, "retention keeps at most 5 changes, kept {retained}");

    let mut sse = SseClient::subscribe(app.port, "messages", &json!({}), "", &[("Last-Event-ID", &old)]).await;
    let gap = sse.expect("gap").await;
    assert_eq!(gap.json()["reason"], "expired");
    assert_eq!(gap.json()["position"], gap.id(), "the gap moves Last-Event-ID to where the stream continues");
    sse.expect("subscribed").await;
    app.db.execute("insert into messages (id, room) values (100, 'r')").await;
    assert_eq!(sse.expect("create").await.json()["object"]["objectId"], "100");

    // The same over WebSocket.
    let mut ws = app.client().await;
    ws.connect_parse().await;
    ws.send(json!({"op": "subscribe", "requestId": 1, "query": {"className": "messages", "where": {}}, "since": old}))
        .await;
    let gap = ws.recv().await;
    assert_eq!((gap["op"].as_str(), gap["reason"].as_str()), (Some("gap"), Some("expired")), "{gap}");
    assert_eq!(ws.recv().await["op"], "subscribed");

    // TRUNCATE of a watched table loses history: a new epoch, live clients are told at once, and
    // positions from the old epoch are refused.
    app.db.execute("truncate messages").await;
    let reset = sse.expect("gap").await;
    assert_eq!(reset.json()["reason"], "reset");
    let ws_reset = ws.recv().await;
    assert_eq!((ws_reset["op"].as_str(), ws_reset["reason"].as_str()), (Some("gap"), Some("reset")), "{ws_reset}");
    let old_epoch = gap["position"].as_str().unwrap().to_string();
    let mut stale = SseClient::subscribe(app.port, "messages", &json!({}), "", &[("Last-Event-ID", &old_epoch)]).await;
    assert_eq!(stale.expect("gap").await.json()["reason"], "reset");
    stale.expect("subscribed").await;
    app.db.execute("insert into messages (id, room) values (200, 'r')").await;
    assert_eq!(stale.expect("create").await.json()["object"]["objectId"], "200");
    assert_eq!(sse.expect("create").await.json()["object"]["objectId"], "200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribed_means_live_on_both_transports() {
    let app = TestApp::spawn().await;
    // A change committed right after the confirmation must never be missed.
    for i in 0..15 {
        let mut ws = app.client().await;
        ws.connect_parse().await;
        ws.send(json!({"op": "subscribe", "requestId": 1, "query": {"className": "messages", "where": {"n": i}}}))
            .await;
        assert_eq!(ws.recv().await["op"], "subscribed");
        app.db.execute(&format!("insert into messages (room, n) values ('ws', {i})")).await;
        assert_eq!(ws.expect_event("create").await["object"]["n"], i);

        let mut sse = SseClient::subscribe(app.port, "messages", &json!({"n": i, "room": "sse"}), "", &[]).await;
        // The response head is only sent once the subscription is live.
        assert_eq!(sse.status, 200);
        app.db.execute(&format!("insert into messages (room, n) values ('sse', {i})")).await;
        let event: Value = loop {
            let e = sse.next_event().await;
            if e.name() == "create" {
                break e.json();
            }
        };
        assert_eq!(event["object"]["n"], i);
    }
}

/// A database copied from another (as a dump restored into a new database is) keeps the old
/// epoch in its stream row, but it is not where the history was written: the gateway starts a new
/// epoch on it, and positions from the original are refused with a gap rather than trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_database_starts_a_new_epoch() {
    use sqlx::{Connection, Executor, PgConnection};
    let app = TestApp::spawn().await;
    let mut sse = SseClient::subscribe(app.port, "messages", &json!({}), "", &[]).await;
    sse.expect("subscribed").await;
    app.db.execute("insert into messages (id, room) values (1, 'r')").await;
    let position = sse.expect("create").await.id();
    drop(sse);
    app.stop().await;
    app.db.pool.close().await;

    // CREATE DATABASE ... TEMPLATE copies every row, the stream's epoch included: a restore.
    let copy = format!("{}_copy", app.db.name);
    let mut admin = PgConnection::connect(&format!("{}/postgres", crate::support::server_url())).await.unwrap();
    admin.execute(format!("create database {copy} template {}", app.db.name).as_str()).await.unwrap();
    let restored = TestDb {
        url: format!("{}/{copy}", crate::support::server_url()),
        pool: sqlx::PgPool::connect(&format!("{}/{copy}", crate::support::server_url())).await.unwrap(),
        name: copy,
    };
    let copied_epoch: String = sqlx::query_scalar("select replace(epoch::text, '-', '') from livegate.stream")
        .fetch_one(&restored.pool)
        .await
        .unwrap();
    assert!(position.ends_with(&copied_epoch), "the copy carries the original's epoch");

    let app = TestApp::spawn_on(restored, |c| c.feed.tables = vec!["messages".into()]).await;
    let mut sse = SseClient::subscribe(app.port, "messages", &json!({}), "", &[("Last-Event-ID", &position)]).await;
    let gap = sse.expect("gap").await;
    assert_eq!(gap.json()["reason"], "reset", "{gap:?}");
    sse.expect("subscribed").await;
    app.db.execute("insert into messages (id, room) values (2, 'r')").await;
    assert_eq!(sse.expect("create").await.json()["object"]["objectId"], "2");
}
