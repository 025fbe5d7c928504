//! What one client may make the gateway spend, each limit from the outside: the refusal a client
//! sees (Parse code on the WebSocket, status and JSON over HTTP), and that a well-behaved client
//! beside it is not disturbed.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::sse::SseClient;
use crate::support::TestApp;

/// Rows of `bytes` bytes each, in one statement.
fn big_rows(count: usize, bytes: usize) -> String {
    format!("insert into messages (room, body) select 'big', repeat('x', {bytes}) from generate_series(1, {count})")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_is_cut_at_its_byte_budget_and_nobody_else_waits() {
    let app = TestApp::spawn_with(|c| c.limits.send_queue_bytes = 4 * 1024 * 1024).await;
    let mut stalled = app.subscriber(json!({})).await;
    let mut other = app.subscriber(json!({"room": "small"})).await;
    // 3,000 rows of 10 KB: far more than the socket buffers and the stalled client's budget.
    app.db.execute(&big_rows(3_000, 10_000)).await;
    app.db.execute("insert into messages (room) values ('small')").await;
    assert_eq!(other.expect_event("create").await["object"]["room"], "small", "nobody else waits");
    // It left the hub while its socket was still open (nothing read it).
    app.wait_for_health(|h| h["connections"] == 1).await;
    // Reading now, the stalled client finds what had been sent to it, then the close.
    assert_eq!(stalled.closed().await.map(u16::from), Some(1008), "send queue full");
}

#[tokio::test]
async fn unindexed_queries_are_budgeted_per_connection() {
    let app = TestApp::spawn_with(|c| c.limits.scanned_queries_per_connection = 2).await;
    let mut ws = app.client().await;
    ws.connect_parse().await;
    ws.subscribe(1, "messages", json!({"n": {"$gt": 1}})).await;
    ws.subscribe(2, "messages", json!({})).await;
    ws.send(json!({"op": "subscribe", "requestId": 3, "query": {"className": "messages", "where": {"n": {"$lt": 5}}}}))
        .await;
    let refusal = ws.recv().await;
    assert_eq!(
        (refusal["op"].as_str(), refusal["code"].as_i64(), refusal["requestId"].as_i64()),
        (Some("error"), Some(155), Some(3))
    );
    assert!(refusal["error"].as_str().unwrap().contains("unindexed queries on this connection (limit 2)"), "{refusal}");
    ws.subscribe(4, "messages", json!({"room": "lobby", "n": {"$lt": 5}})).await;
    app.db.execute("insert into messages (room, n) values ('lobby', 2)").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(ws.expect_event("create").await["requestId"].as_i64().unwrap());
    }
    ids.sort();
    assert_eq!(ids, [1, 2, 4], "the refused one delivers nothing, the others everything");
}

#[tokio::test]
async fn long_field_lists_are_refused_on_both_transports() {
    let app = TestApp::spawn_with(|c| c.limits.field_list = 3).await;
    let mut ws = app.client().await;
    ws.connect_parse().await;
    ws.send(json!({"op": "subscribe", "requestId": 1,
        "query": {"className": "messages", "where": {}, "keys": ["a", "b", "c", "d"]}}))
        .await;
    let refusal = ws.recv().await;
    assert_eq!(refusal["code"], 102);
    assert_eq!(refusal["error"], "keys lists 4 fields, more than limits.field_list (3)");
    let mut sse = SseClient::subscribe(app.port, "messages", &json!({}), "&watch=a,b,c,d", &[]).await;
    assert_eq!(sse.status, 400);
    assert_eq!(
        sse.json_body().await,
        json!({"code": 102, "error": "watch lists 4 fields, more than limits.field_list (3)"})
    );
}

#[tokio::test]
async fn a_resume_further_behind_than_the_replay_limit_gets_an_expired_gap_at_once() {
    let app = TestApp::spawn_with(|c| c.limits.replay_changes = 10).await;
    let mut sse = SseClient::subscribe(app.port, "messages", &json!({}), "", &[]).await;
    let old = sse.expect("subscribed").await.id();
    drop(sse);
    app.db.execute("insert into messages (room) select 'r' from generate_series(1, 25)").await;
    app.wait_until_published().await;
    let mut sse = SseClient::subscribe(app.port, "messages", &json!({}), "", &[("Last-Event-ID", &old)]).await;
    let gap = sse.expect("gap").await;
    assert_eq!(gap.json()["reason"], "expired");
    sse.expect("subscribed").await;
    app.db.execute("insert into messages (room) values ('after')").await;
    assert_eq!(sse.expect("create").await.json()["object"]["room"], "after");
}

/// Opens a raw HTTP connection and sends `request`; returns the status line's code.
async fn status_of(port: u16, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buffer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await.expect("answers").unwrap();
    let text = String::from_utf8_lossy(&buffer[..n]).to_string();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn connections_per_address_are_capped_and_given_back() {
    let app = TestApp::spawn_with(|c| {
        c.limits.connections_per_ip = 3;
        c.limits.sse_streams_per_ip = 1;
    })
    .await;
    let first = app.client().await;
    let _second = app.client().await;
    let sse = SseClient::subscribe(app.port, "messages", &json!({}), "", &[]).await;
    assert_eq!(sse.status, 200);
    let upgrade = format!(
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        app.port
    );
    let (status, text) = status_of(app.port, &upgrade).await;
    assert_eq!(status, 429, "{text}");
    assert!(text.contains("limits.connections_per_ip = 3"), "{text}");
    drop(first);
    app.wait_for_health(|h| h["connections"] == 2).await;
    // One SSE stream per address here: a second gets 429 while the first is open.
    let mut second_sse = SseClient::subscribe(app.port, "messages", &json!({}), "", &[]).await;
    assert_eq!(second_sse.status, 429);
    let body = second_sse.json_body().await;
    assert_eq!(body["code"], 429);
    assert!(body["error"].as_str().unwrap().contains("limits.sse_streams_per_ip = 1"), "{body}");
    let mut again = app.client().await;
    again.connect_parse().await;
    drop(sse);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_sse_streams_leave_the_hub_once_their_queue_fills() {
    let app = TestApp::spawn_with(|c| c.limits.send_queue_bytes = 256 * 1024).await;
    let mut streams = Vec::new();
    for _ in 0..20 {
        let stream = SseClient::subscribe(app.port, "messages", &json!({}), "", &[]).await;
        assert_eq!(stream.status, 200);
        streams.push(stream); // never read again
    }
    app.wait_for_health(|h| h["subscriptions"] == 20).await;
    app.db.execute(&big_rows(2_000, 10_000)).await;
    // Their sockets are still open, but they hold nothing in the hub any more.
    for _ in 0..40 {
        if app.health().await["connections"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(app.health().await["connections"], 0, "unread streams left the hub");
    let mut ws = app.subscriber(json!({"room": "fresh"})).await;
    app.db.execute("insert into messages (room) values ('fresh')").await;
    assert_eq!(ws.expect_event("create").await["object"]["room"], "fresh");
    drop(streams);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_token_lookup_never_holds_up_the_connections_events() {
    let app = TestApp::spawn_with(|c| {
        c.sessions.query =
            "select user_id, roles, expires_at from livegate.sessions, pg_sleep(2) where token = $1".into();
    })
    .await;
    app.db.execute("insert into livegate.sessions (token, user_id) values ('slow', 'u1')").await;
    let mut ws = app.subscriber(json!({"room": "lobby"})).await;
    ws.send(json!({"op": "subscribe", "requestId": 2, "sessionToken": "slow",
        "query": {"className": "messages", "where": {"room": "other"}}}))
        .await;
    let started = std::time::Instant::now();
    app.db.execute("insert into messages (room) values ('lobby')").await;
    let event = ws.expect_event("create").await;
    assert_eq!(event["requestId"], 1);
    assert!(
        started.elapsed() < Duration::from_millis(1_500),
        "delivered while the lookup ran: {:?}",
        started.elapsed()
    );
    let subscribed = ws.recv().await;
    assert_eq!((subscribed["op"].as_str(), subscribed["requestId"].as_i64()), (Some("subscribed"), Some(2)));
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_quota() {
    let app = TestApp::spawn_with(|c| {
        c.server.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        c.limits.connections_per_ip = 1;
    })
    .await;
    let port = app.port;
    let stream = |client: &'static str| async move {
        SseClient::subscribe(port, "messages", &json!({}), "", &[("X-Forwarded-For", client)]).await
    };
    let first = stream("203.0.113.1").await;
    let second = stream("198.51.100.7, 203.0.113.2").await;
    assert_eq!((first.status, second.status), (200, 200), "two clients behind one proxy");
    let mut again = stream("203.0.113.1").await;
    assert_eq!(again.status, 429, "the same client twice");
    assert!(again.json_body().await["error"].as_str().unwrap().contains("connections_per_ip = 1"));
}

/// A WebSocket from `source` (another loopback address), upgraded; `None` when refused.
async fn websocket_from(source: [u8; 4], port: u16) -> Option<impl Sized> {
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.bind((std::net::Ipv4Addr::from(source), 0).into()).ok()?;
    let stream = socket.connect(([127, 0, 0, 1], port).into()).await.ok()?;
    let url = format!("ws://127.0.0.1:{port}/");
    tokio_tungstenite::client_async(url, stream).await.ok().map(|(socket, _)| socket)
}

/// An SSE stream opened from `source` and never read.
async fn sse_from(source: [u8; 4], port: u16) -> Option<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.bind((std::net::Ipv4Addr::from(source), 0).into()).ok()?;
    let mut stream = socket.connect(([127, 0, 0, 1], port).into()).await.ok()?;
    let request = format!("GET /events/messages HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    Some(stream)
}

/// The flood is CI-sized; `LIVEGATE_FLOOD` sets how many WebSockets (the whole machine's file
/// limit is the ceiling: this process holds both ends of every connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_from_one_address_leaves_others_served() {
    let flood: usize = std::env::var("LIVEGATE_FLOOD").ok().and_then(|n| n.parse().ok()).unwrap_or(2_000);
    // At 100 attempts a second, letting the whole flood in would take 20 s: however slow the
    // machine, some of it is refused.
    let app = TestApp::spawn_with(|c| c.limits.connection_rate_per_ip = 100).await;
    let port = app.port;
    let attempts: Vec<_> = (0..flood).map(|_| tokio::spawn(websocket_from([127, 0, 0, 2], port))).collect();
    let streams: Vec<_> = (0..200).map(|_| tokio::spawn(sse_from([127, 0, 0, 2], port))).collect();
    // Meanwhile, a client from another address connects and is served as usual.
    let started = std::time::Instant::now();
    let mut ws = app.subscriber(json!({"room": "calm"})).await;
    app.db.execute("insert into messages (room) values ('calm')").await;
    assert_eq!(ws.expect_event("create").await["object"]["room"], "calm");
    let served_in = started.elapsed();
    let mut open = Vec::new();
    for attempt in attempts {
        if let Some(socket) = attempt.await.unwrap() {
            open.push(socket);
        }
    }
    assert!(open.len() < flood, "the attempt rate of one address is capped ({} of {flood} got in)", open.len());
    assert!(!open.is_empty());
    assert!(served_in < Duration::from_secs(5), "the calm client waited {served_in:?}");
    let mut again = app.subscriber(json!({"room": "calm"})).await;
    app.db.execute("insert into messages (room) values ('calm')").await;
    again.expect_event("create").await;
    drop((open, streams));
}

#[tokio::test]
async fn an_sse_client_that_hangs_up_leaves_the_hub_at_once() {
    let app = TestApp::spawn().await;
    let mut sse = SseClient::subscribe(app.port, "messages", &json!({"room": "quiet"}), "", &[]).await;
    sse.expect("subscribed").await;
    app.wait_for_health(|h| h["connections"] == 1).await;
    let started = std::time::Instant::now();
    drop(sse);
    // Nothing is written to a quiet stream before its keep-alive (15 s): the hang-up is seen on
    // the socket.
    app.wait_for_health(|h| h["connections"] == 0).await;
    assert!(started.elapsed() < Duration::from_secs(3), "left after {:?}", started.elapsed());
}
