//! Operating the gateway, from the outside: `/metrics` under real traffic (parsed by a
//! Prometheus text-format parser we did not write), `/ready` and `/health`, a graceful drain on
//! SIGTERM (WebSocket 1001, SSE's final event, a resume on a second gateway that loses
//! nothing), what the logs may contain, and the command line.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::metrics::Scrape;
use crate::support::sse::{encode, free_port, GatewayProcess, SseClient};
use crate::support::{get, TestApp, TestDb, WsClient, MESSAGES, PATIENCE};

/// Scrapes until `check` holds (counters are added when a connection's queue runs dry, gauges
/// when a connection has left the hub), or panics with the last scrape's values.
async fn scrape_until(port: u16, what: &str, check: impl Fn(&Scrape) -> bool) -> Scrape {
    for _ in 0..200 {
        let scrape = Scrape::of(port, &[]).await;
        if check(&scrape) {
            return scrape;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("metrics never showed {what}");
}

const EVERY_METRIC: &[&str] = &[
    "livegate_connections",
    "livegate_subscriptions",
    "livegate_distinct_queries",
    "livegate_events_sent_total",
    "livegate_bytes_sent_total",
    "livegate_disconnects_total",
    "livegate_subscribe_refusals_total",
    "livegate_feed_position",
    "livegate_feed_head",
    "livegate_feed_lag_seconds",
    "livegate_publish_seconds",
    "livegate_replays_total",
    "livegate_replayed_changes_total",
    "livegate_gaps_total",
    "livegate_history_changes",
    "livegate_history_floor",
    "livegate_notify_queue_usage",
    "livegate_database_reconnects_total",
    "livegate_token_checks_total",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_real_traffic() {
    let app = TestApp::spawn().await;
    let scrape = Scrape::of(app.port, &[]).await;
    for name in EVERY_METRIC {
        assert!(scrape.names().iter().any(|n| n.starts_with(name)), "{name} is exposed: {:?}", scrape.names());
    }
    let mut sockets = Vec::new();
    for _ in 0..3 {
        sockets.push(app.subscriber(json!({"room": "metrics"})).await);
    }
    let mut scanned = app.client().await;
    scanned.connect_parse().await;
    scanned.subscribe(1, "messages", json!({"n": {"$gt": 0}})).await;
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut stream = SseClient::subscribe(app.port, "messages", &json!({"room": "metrics"}), "", &[]).await;
        stream.expect("subscribed").await;
        streams.push(stream);
    }
    let scrape = Scrape::of(app.port, &[]).await;
    assert_eq!(scrape.value("livegate_connections", &[("transport", "websocket")]), 4.0);
    assert_eq!(scrape.value("livegate_connections", &[("transport", "sse")]), 2.0);
    assert_eq!(scrape.value("livegate_subscriptions", &[("transport", "websocket")]), 4.0);
    assert_eq!(scrape.value("livegate_subscriptions", &[("transport", "sse")]), 1.0 * 2.0);
    assert_eq!(scrape.value("livegate_distinct_queries", &[("index", "indexed")]), 1.0);
    assert_eq!(scrape.value("livegate_distinct_queries", &[("index", "scanned")]), 1.0);

    // M inserts, each to 3 WebSockets and 2 streams.
    const M: usize = 5;
    for i in 0..M {
        app.db.execute(&format!("insert into messages (room, body) values ('metrics', 'm{i}')")).await;
    }
    for socket in &mut sockets {
        for _ in 0..M {
            socket.expect_event("create").await;
        }
    }
    for stream in &mut streams {
        for _ in 0..M {
            stream.expect("create").await;
        }
    }
    let events =
        |s: &Scrape, transport| s.value("livegate_events_sent_total", &[("transport", transport), ("op", "create")]);
    let scrape = scrape_until(app.port, "every event counted", |s| {
        events(s, "websocket") == (3 * M) as f64 && events(s, "sse") == (2 * M) as f64
    })
    .await;
    assert!(scrape.value("livegate_bytes_sent_total", &[("transport", "websocket")]) > (3 * M * 50) as f64);
    assert!(scrape.value("livegate_bytes_sent_total", &[("transport", "sse")]) > (2 * M * 50) as f64);
    let head = scrape.value("livegate_feed_head", &[]);
    assert!(head >= M as f64, "head {head}");
    app.wait_until_published().await;
    let scrape = Scrape::of(app.port, &[]).await;
    assert_eq!(scrape.value("livegate_feed_position", &[]), scrape.value("livegate_feed_head", &[]));
    assert_eq!(scrape.value("livegate_feed_lag_seconds", &[]), 0.0, "caught up");
    assert!(scrape.value("livegate_publish_seconds", &[]) >= M as f64, "every change observed");
    assert_eq!(scrape.value("livegate_history_changes", &[]), head);

    // A refusal by code; a client that leaves; then everyone leaves.
    scanned
        .send(json!({"op": "subscribe", "requestId": 2, "query": {"className": "messages", "where": {"$bad": 1}}}))
        .await;
    assert_eq!(scanned.recv().await["code"], 102);
    drop(scanned);
    let scrape = scrape_until(app.port, "the client disconnect", |s| {
        s.value("livegate_disconnects_total", &[("reason", "client")]) == 1.0
    })
    .await;
    assert_eq!(scrape.value("livegate_subscribe_refusals_total", &[("code", "102")]), 1.0);
    assert_eq!(scrape.value("livegate_connections", &[("transport", "websocket")]), 3.0);
    drop((sockets, streams));
    scrape_until(app.port, "no connection", |s| {
        s.value("livegate_connections", &[("transport", "websocket")]) == 0.0
            && s.value("livegate_connections", &[("transport", "sse")]) == 0.0
            && s.value("livegate_disconnects_total", &[("reason", "client")]) == 6.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_slow_consumers_replays_gaps_and_token_checks() {
    let app = TestApp::spawn_with(|c| c.limits.send_queue_bytes = 1024 * 1024).await;
    app.db.execute("insert into livegate.sessions (token, user_id) values ('good-token', 'u1')").await;
    let mut stalled = app.subscriber(json!({})).await;
    app.db
        .execute("insert into messages (room, body) select 'big', repeat('x', 10000) from generate_series(1, 2000)")
        .await;
    scrape_until(app.port, "the slow consumer cut off", |s| {
        s.value("livegate_disconnects_total", &[("reason", "slow_consumer")]) == 1.0
    })
    .await;
    assert_eq!(stalled.closed().await.map(u16::from), Some(1008));

    // A resume replays; a resume from another epoch gets a gap.
    app.wait_until_published().await;
    let floor = app.health().await["feedPosition"].as_i64().unwrap();
    let epoch: String = sqlx::query_scalar("select replace(epoch::text, '-', '') from livegate.stream")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    app.db.execute("insert into messages (room) values ('r1'), ('r1')").await;
    app.wait_until_published().await;
    let mut resumer = app.client().await;
    resumer.connect_parse().await;
    let since = format!("{floor}-{epoch}");
    resumer
        .send(json!({"op": "subscribe", "requestId": 1, "since": since, "sessionToken": "good-token",
        "query": {"className": "messages", "where": {"room": "r1"}}}))
        .await;
    resumer.expect_event("create").await;
    resumer.expect_event("create").await;
    let other_epoch = format!("{floor}-{}", uuid::Uuid::new_v4().simple());
    resumer
        .send(json!({"op": "subscribe", "requestId": 2, "since": other_epoch,
        "query": {"className": "messages", "where": {"room": "r2"}}}))
        .await;
    let mut frames = Vec::new();
    while !frames.iter().any(|f: &Value| f["op"] == "subscribed" && f["requestId"] == 2) {
        frames.push(resumer.recv().await);
    }
    assert!(frames.iter().any(|f| f["op"] == "gap" && f["requestId"] == 2 && f["reason"] == "reset"), "{frames:?}");
    resumer
        .send(json!({"op": "subscribe", "requestId": 3, "sessionToken": "bad-token",
        "query": {"className": "messages", "where": {}}}))
        .await;
    loop {
        if resumer.recv().await["code"] == 209 {
            break;
        }
    }
    let scrape = scrape_until(app.port, "replays, gaps and token checks", |s| {
        s.value("livegate_replayed_changes_total", &[("transport", "websocket")]) == 2.0
    })
    .await;
    assert_eq!(scrape.value("livegate_replays_total", &[("transport", "websocket")]), 2.0);
    assert_eq!(scrape.value("livegate_gaps_total", &[("transport", "websocket"), ("reason", "reset")]), 1.0);
    assert_eq!(scrape.value("livegate_token_checks_total", &[("kind", "session"), ("result", "accepted")]), 1.0);
    assert_eq!(scrape.value("livegate_token_checks_total", &[("kind", "session"), ("result", "invalid")]), 1.0);
    assert_eq!(scrape.value("livegate_subscribe_refusals_total", &[("code", "209")]), 1.0);
}

#[tokio::test]
async fn metrics_can_require_a_token_and_have_their_own_address() {
    let metrics_port = free_port();
    let app = TestApp::spawn_with(|c| {
        c.metrics.token = Some("scrape-secret".into());
        c.metrics.listen = Some(format!("127.0.0.1:{metrics_port}").parse().unwrap());
    })
    .await;
    let (status, body) = get(metrics_port, "/metrics", &[]).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["code"], 401);
    let (status, _) = get(metrics_port, "/metrics", &["Authorization: Bearer wrong"]).await;
    assert_eq!(status, 401);
    let scrape = Scrape::of(metrics_port, &["Authorization: Bearer scrape-secret"]).await;
    assert_eq!(scrape.value("livegate_connections", &[("transport", "sse")]), 0.0);
    assert_eq!(ready_within(metrics_port).await.0, 200, "probes are served beside it");
    let (status, body) = get(app.port, "/metrics", &["Authorization: Bearer scrape-secret"]).await;
    assert_eq!(status, 404, "not on the client listener: {body}");
    assert_eq!(get(metrics_port, "/events/messages", &[]).await.0, 404, "no client traffic on the metrics listener");
    assert_eq!(get(app.port, "/health", &[]).await.0, 200);
}

#[tokio::test]
async fn health_is_liveness_and_ready_reports_what_is_wrong() {
    let app = TestApp::spawn().await;
    let (status, body) = ready_within(app.port).await;
    assert_eq!((status, body["status"].as_str(), body["reason"].clone()), (200, Some("ready"), Value::Null), "{body}");
    assert_eq!(body["lagMs"], 0);
    assert_eq!(app.health().await["status"], "ok");
}

/// `/ready` on `port` once it says 200 (the listener connects just after start), or its last
/// answer after a few seconds.
async fn ready_within(port: u16) -> (u16, Value) {
    let mut answer = (0, String::new());
    for _ in 0..100 {
        answer = get(port, "/ready", &[]).await;
        if answer.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (answer.0, serde_json::from_str(&answer.1).unwrap_or(Value::Null))
}

/// A JSON log line's message and fields.
fn fields(line: &Value) -> &Value {
    &line["fields"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_clients_to_another_gateway_without_loss() {
    let db = TestDb::create().await;
    db.execute(MESSAGES).await;
    let (port_a, port_b) = (free_port(), free_port());
    let drain = [("LIVEGATE_SERVER__DRAIN_DELAY_MS", "700"), ("LIVEGATE_LOG__FORMAT", "json")];
    let mut a = GatewayProcess::start_with(&db.url, port_a, &drain).await;
    let b = GatewayProcess::start(&db.url, port_b).await;

    let mut ws = WsClient::connect(&format!("ws://127.0.0.1:{port_a}/")).await;
    ws.connect_parse().await;
    ws.send(
        json!({"op": "subscribe", "requestId": 1, "since": "now", "query": {"className": "messages", "where": {}}}),
    )
    .await;
    let subscribed = ws.recv().await;
    assert_eq!(subscribed["op"], "subscribed", "{subscribed}");
    let mut ws_last = subscribed["position"].as_str().unwrap().to_string();
    let mut sse = SseClient::subscribe(port_a, "messages", &json!({}), "", &[]).await;
    sse.expect("subscribed").await;

    // A writer keeps inserting throughout: before, during and after the drain.
    let writer_db = db.url.clone();
    let writer = tokio::spawn(async move {
        let pool = sqlx::PgPool::connect(&writer_db).await.unwrap();
        for i in 0..150 {
            sqlx::query("insert into messages (n) values ($1)").bind(i).execute(&pool).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let mut ws_seen = BTreeMap::new();
    let mut sse_seen = BTreeMap::new();
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.signal(libc::SIGTERM);
    // At once: not ready, and no new connections.
    let mut refused = false;
    for _ in 0..40 {
        let (status, body) = get(port_a, "/ready", &[]).await;
        if status == 503 {
            assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["reason"], "shutting down");
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "/ready turned 503 during the drain delay");
    let (status, body) = get(port_a, "/events/messages", &[]).await;
    assert_eq!(status, 503, "a new stream is refused while draining: {body}");
    assert!(body.contains("shutting down"), "{body}");

    // The WebSocket gets every event, then 1001.
    let close = loop {
        match tokio::time::timeout(PATIENCE, futures_util::StreamExt::next(&mut ws.socket)).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text)))) => {
                let frame: Value = serde_json::from_str(&text).unwrap();
                if frame["op"] == "create" {
                    ws_last = frame["position"].as_str().unwrap().to_string();
                    assert!(ws_seen.insert(frame["object"]["n"].as_i64().unwrap(), ()).is_none(), "no duplicate");
                }
            }
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame)))) => {
                break frame.map(|f| u16::from(f.code))
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("the WebSocket ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(close, Some(1001), "going away");
    // The stream gets every event, then `shutdown` with its position, then ends.
    let sse_last = loop {
        let event = sse.next_event_within(PATIENCE).await.expect("the stream ends with a shutdown event");
        match event.name() {
            "create" => {
                assert!(sse_seen.insert(event.json()["object"]["n"].as_i64().unwrap(), ()).is_none());
            }
            "shutdown" => {
                assert_eq!(event.json()["position"], event.id().as_str());
                break event.id();
            }
            other => panic!("unexpected event {other}"),
        }
    };
    assert!(sse.next_event_within(Duration::from_secs(3)).await.is_none(), "the stream ended");
    assert_eq!(a.exited_within(Duration::from_secs(10)).await, Some(0), "exits cleanly within shutdown_timeout_ms");

    // Both resume on the other gateway from where they stopped.
    let mut ws = WsClient::connect(&format!("ws://127.0.0.1:{port_b}/")).await;
    ws.connect_parse().await;
    ws.send(
        json!({"op": "subscribe", "requestId": 1, "since": ws_last, "query": {"className": "messages", "where": {}}}),
    )
    .await;
    let since = encode(&sse_last);
    let mut sse = SseClient::get(port_b, &format!("/events/messages?since={since}"), &[]).await;
    writer.await.unwrap();
    while ws_seen.len() < 150 {
        let frame = ws.recv().await;
        if frame["op"] == "create" {
            assert!(ws_seen.insert(frame["object"]["n"].as_i64().unwrap(), ()).is_none(), "no duplicate on resume");
        }
    }
    while sse_seen.len() < 150 {
        let event = sse.next_event().await;
        if event.name() == "create" {
            assert!(sse_seen.insert(event.json()["object"]["n"].as_i64().unwrap(), ()).is_none());
        }
    }
    assert_eq!(ws_seen.keys().copied().collect::<Vec<_>>(), (0..150).collect::<Vec<_>>());
    assert_eq!(sse_seen.keys().copied().collect::<Vec<_>>(), (0..150).collect::<Vec<_>>());

    let lines = a.json_lines();
    let closed: Vec<&Value> = lines.iter().filter(|l| fields(l)["message"] == "connection closed").collect();
    assert!(
        closed.iter().filter(|l| fields(l)["reason"] == "shutdown").count() >= 2,
        "both connections logged as closed by the shutdown: {closed:?}"
    );
    b.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_carry_no_token_key_or_row_data() {
    let db = TestDb::create().await;
    db.execute(MESSAGES).await;
    let port = free_port();
    let env = [
        ("LIVEGATE_LOG__FORMAT", "json"),
        ("LIVEGATE_LOG__LEVEL", "INFO"),
        ("LIVEGATE_KEYS__MASTER_KEY", "master-SECRET-5678"),
    ];
    let gateway = GatewayProcess::start_with(&db.url, port, &env).await;
    db.execute("insert into livegate.sessions (token, user_id) values ('tok-SECRET-1234', 'u1')").await;
    let mut ws = WsClient::connect(&format!("ws://127.0.0.1:{port}/")).await;
    ws.send(json!({"op": "connect", "applicationId": "app", "masterKey": "master-SECRET-5678",
        "sessionToken": "tok-SECRET-1234"}))
        .await;
    assert_eq!(ws.recv().await["op"], "connected");
    ws.subscribe(1, "messages", json!({"body": "ROW-DATA-abcdef"})).await;
    ws.send(json!({"op": "subscribe", "requestId": 2, "sessionToken": "bad-SECRET-9999",
        "query": {"className": "messages", "where": {}}}))
        .await;
    assert_eq!(ws.recv().await["code"], 209);
    let path = "/events/messages?sessionToken=tok-SECRET-1234&where=".to_string() + &encode(r#"{"n":{"$gt":0}}"#);
    let mut sse = SseClient::get(port, &path, &[("Authorization", "Bearer bad-SECRET-bearer")]).await;
    assert_eq!(sse.status, 401);
    let _ = sse.json_body().await;
    db.execute("insert into messages (body, n) values ('ROW-DATA-abcdef', 1)").await;
    ws.expect_event("create").await;
    drop(ws);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let lines = gateway.json_lines();
    let text = gateway.stderr().join("\n");
    for secret in ["SECRET", "ROW-DATA"] {
        assert!(!text.contains(secret), "a log line carries {secret}:\n{text}");
    }
    assert!(lines.iter().all(|l| l["level"] != "DEBUG" && l["level"] != "TRACE"), "info and above only");
    let messages: Vec<&str> = lines.iter().filter_map(|l| fields(l)["message"].as_str()).collect();
    for expected in ["livegate listening", "connection opened", "connection closed", "subscription refused"] {
        assert!(messages.contains(&expected), "a {expected:?} line: {messages:?}");
    }
    let closed = lines.iter().find(|l| fields(l)["message"] == "connection closed").unwrap();
    assert_eq!(fields(closed)["transport"], "websocket");
    assert_eq!(fields(closed)["reason"], "client");
    assert!(fields(closed)["duration_ms"].as_u64().is_some(), "{closed}");
    let refused: Vec<&Value> = lines.iter().filter(|l| fields(l)["message"] == "subscription refused").collect();
    assert!(refused.iter().any(|l| fields(l)["code"] == 209), "{refused:?}");
    gateway.kill().await;
}

/// Runs the binary with `args` and a config file holding `config`: exit code, stdout, stderr.
async fn livegate(args: &[&str], config: &str) -> (i32, String, String) {
    let dir = std::env::temp_dir().join(format!("livegate-cli-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_livegate"))
        .args(args)
        .arg("--config")
        .arg(&path)
        .env_remove("LIVEGATE_CONFIG")
        .env_remove("DATABASE_URL")
        .output()
        .await
        .expect("run livegate");
    let _ = std::fs::remove_dir_all(&dir);
    let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).to_string();
    (output.status.code().unwrap_or(-1), text(output.stdout), text(output.stderr))
}

#[tokio::test]
async fn the_command_line_checks_config_migrates_and_watches() {
    let config = r#"
        [database]
        url = "postgres://admin:pw-SECRET@127.0.0.1:5432/somewhere"
        [keys]
        master_key = "master-SECRET"
        [metrics]
        token = "metrics-SECRET"
        [log]
        level = "VERBOSE"
    "#;
    let (code, out, err) = livegate(&["check-config"], config).await;
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("SECRET"), "secrets are masked:\n{out}");
    assert!(out.contains("master_key = \"****\"") && out.contains("admin:****@127.0.0.1"), "{out}");
    assert!(out.contains("drain_delay_ms = 1000"), "defaults are shown: {out}");
    let (code, _, err) = livegate(&["check-config"], "[server]\nready_max_lag_ms = 0\n").await;
    assert_eq!(
        (code, err.trim()),
        (2, "livegate: error: invalid configuration: server.ready_max_lag_ms must be greater than 0")
    );
    let (code, _, err) = livegate(&["check-config"], "[log]\nlevel = \"loud\"\n").await;
    assert_eq!(code, 2);
    assert!(err.contains("log.level \"loud\" is not a level"), "{err}");
    let (code, _, err) = livegate(&["check-config"], "[nope]\n").await;
    assert_eq!(code, 2, "{err}");

    let db = TestDb::create().await;
    db.execute("create table items (id int primary key, name text)").await;
    let config = format!("[database]\nurl = \"{}\"\n", db.url);
    let (code, out, err) = livegate(&["migrate"], &config).await;
    assert_eq!((code, out.trim()), (0, "migrated"), "{err}");
    let (code, out, err) = livegate(&["watch", "items"], &config).await;
    assert_eq!((code, out.trim()), (0, "watching items"), "{err}");
    let triggers = || async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from pg_trigger where tgrelid = 'items'::regclass and not tgisinternal",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
    };
    assert_eq!(triggers().await, 2, "capture and truncate triggers");
    db.execute("insert into items values (1, 'a')").await;
    let captured: i64 = sqlx::query_scalar("select count(*) from livegate.changes").fetch_one(&db.pool).await.unwrap();
    assert_eq!(captured, 1);
    let (code, _, err) = livegate(&["unwatch", "items"], &config).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(triggers().await, 0);
    let (code, _, err) = livegate(&["watch", "missing_table"], &config).await;
    assert_eq!(code, 1);
    assert!(err.contains("cannot watch table missing_table"), "{err}");
    let (code, out, _) = livegate(&["--version"], "").await;
    assert_eq!((code, out.trim()), (0, concat!("livegate ", env!("CARGO_PKG_VERSION"))));
    let (code, out, _) = livegate(&["watch", "--help"], "").await;
    assert_eq!(code, 0);
    assert!(out.contains("TABLE"), "{out}");
}
