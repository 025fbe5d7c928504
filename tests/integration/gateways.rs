//! Several gateway processes on one database: every client receives every change once, a
//! client that moves from one gateway to another (WebSocket `since`, SSE `Last-Event-ID`)
//! receives exactly what it missed, and a gateway killed meanwhile changes nothing for the
//! clients of the others.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::Barrier;
use tokio_tungstenite::tungstenite::Message;

use crate::support::sse::{free_port, GatewayProcess, SseClient};
use crate::support::{TestDb, WsClient, MESSAGES};

const WRITERS: usize = 3;
const ROWS_PER_WRITER: usize = 100;
const ROWS: usize = WRITERS * ROWS_PER_WRITER;
/// How long a client may take to see every row once the writers are done.
const DEADLINE: Duration = Duration::from_secs(30);

/// What a client saw: every row's `n` once, and how often it had to reconnect.
#[derive(Debug, Default)]
struct Seen {
    rows: BTreeSet<i64>,
    reconnects: usize,
}

impl Seen {
    fn row(&mut self, object: &Value, who: &str) {
        let n = object["n"].as_i64().expect("n");
        assert!(self.rows.insert(n), "{who} received row {n} twice");
    }

    fn complete(&self) -> bool {
        self.rows.len() == ROWS
    }
}

/// How a client moves between gateways: it starts on `ports[0]`, moves on (voluntarily after
/// `roam_after` rows, or when its gateway goes away) to the next port that answers, and
/// resumes from the last position it received.
#[derive(Debug, Clone)]
struct Plan {
    who: &'static str,
    ports: Vec<u16>,
    roam_after: Option<usize>,
}

/// A Parse WebSocket client that resumes with `since`.
async fn websocket_client(plan: Plan, ready: Arc<Barrier>) -> Seen {
    let mut seen = Seen::default();
    let mut last = "now".to_string();
    let mut roamed = false;
    let mut at = 0;
    let mut first = Some(ready);
    let end = tokio::time::Instant::now() + DEADLINE;
    while !seen.complete() && tokio::time::Instant::now() < end {
        let port = plan.ports[at % plan.ports.len()];
        let Ok((socket, _)) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/")).await else {
            at += 1;
            continue;
        };
        let mut ws = WsClient { socket };
        ws.connect_parse().await;
        let subscribe = json!({"op": "subscribe", "requestId": 1, "since": last,
            "query": {"className": "messages", "where": {}}});
        ws.send(subscribe).await;
        loop {
            let next = tokio::time::timeout(Duration::from_secs(5), ws.socket.next()).await;
            let Ok(Some(Ok(Message::Text(text)))) = next else {
                if matches!(next, Ok(Some(Ok(_)))) {
                    continue; // pings
                }
                break; // the gateway went away (or went quiet): move on
            };
            let frame: Value = serde_json::from_str(&text).expect("a JSON frame");
            match frame["op"].as_str() {
                Some("subscribed") => {
                    last = frame["position"].as_str().expect("a position").to_string();
                    if let Some(ready) = first.take() {
                        ready.wait().await;
                    }
                }
                Some("create") => {
                    seen.row(&frame["object"], plan.who);
                    last = frame["position"].as_str().expect("a position").to_string();
                }
                other => panic!("{}: unexpected frame {other:?}: {frame}", plan.who),
            }
            if seen.complete() {
                return seen;
            }
            if plan.roam_after.is_some_and(|after| !roamed && seen.rows.len() >= after) {
                roamed = true;
                break;
            }
        }
        seen.reconnects += 1;
        at += 1;
    }
    seen
}

/// A browser-like SSE client that resumes with `Last-Event-ID`.
async fn sse_client(plan: Plan, ready: Arc<Barrier>) -> Seen {
    let mut seen = Seen::default();
    let mut last: Option<String> = None;
    let mut roamed = false;
    let mut at = 0;
    let mut first = Some(ready);
    let end = tokio::time::Instant::now() + DEADLINE;
    while !seen.complete() && tokio::time::Instant::now() < end {
        let port = plan.ports[at % plan.ports.len()];
        let headers: Vec<(&str, &str)> = last.iter().map(|id| ("Last-Event-ID", id.as_str())).collect();
        let Ok(mut stream) = SseClient::try_get(port, "/events/messages", &headers).await else {
            at += 1;
            continue;
        };
        assert_eq!(stream.status, 200, "{}", plan.who);
        while let Some(event) = stream.next_event_within(Duration::from_secs(5)).await {
            match event.name() {
                "subscribed" => {
                    if let Some(ready) = first.take() {
                        ready.wait().await;
                    }
                }
                "create" => seen.row(&event.json()["object"], plan.who),
                other => panic!("{}: unexpected event {other}", plan.who),
            }
            last = Some(event.id());
            if seen.complete() {
                return seen;
            }
            if plan.roam_after.is_some_and(|after| !roamed && seen.rows.len() >= after) {
                roamed = true;
                break;
            }
        }
        seen.reconnects += 1;
        at += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_one_database_no_change_lost_or_repeated() {
    let db = TestDb::create().await;
    db.execute(MESSAGES).await;
    let ports = [free_port(), free_port(), free_port()];
    let mut gateways = Vec::new();
    for port in ports {
        gateways.push(Some(GatewayProcess::start(&db.url, port).await));
    }
    let [g0, g1, g2] = ports;
    let plans = [
        (Plan { who: "ws stays on g0", ports: vec![g0], roam_after: None }, true),
        (Plan { who: "sse stays on g1", ports: vec![g1], roam_after: None }, false),
        (Plan { who: "ws moves g0 → g1", ports: vec![g0, g1], roam_after: Some(ROWS / 3) }, true),
        (Plan { who: "sse moves g1 → g0", ports: vec![g1, g0], roam_after: Some(ROWS / 3) }, false),
        (Plan { who: "ws on killed g2 → g0", ports: vec![g2, g0], roam_after: None }, true),
        (Plan { who: "sse on killed g2 → g1", ports: vec![g2, g1], roam_after: None }, false),
    ];
    let ready = Arc::new(Barrier::new(plans.len() + 1));
    let clients: Vec<_> = plans
        .iter()
        .cloned()
        .map(|(plan, websocket)| {
            let ready = ready.clone();
            tokio::spawn(async move {
                let who = plan.who;
                let seen = if websocket { websocket_client(plan, ready).await } else { sse_client(plan, ready).await };
                (who, seen)
            })
        })
        .collect();
    ready.wait().await;

    let written = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (url, written) = (db.url.clone(), written.clone());
            tokio::spawn(async move {
                let pool = sqlx::PgPool::connect(&url).await.unwrap();
                for i in 0..ROWS_PER_WRITER {
                    let n = (w * ROWS_PER_WRITER + i) as i64;
                    sqlx::query("insert into messages (n) values ($1)").bind(n).execute(&pool).await.unwrap();
                    written.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(8)).await;
                }
            })
        })
        .collect();
    while written.load(Ordering::Relaxed) < ROWS * 2 / 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gateways[2].take().expect("g2").kill().await;
    for writer in writers {
        writer.await.unwrap();
    }

    let expected: BTreeSet<i64> = (0..ROWS as i64).collect();
    for client in clients {
        let (who, seen) = client.await.unwrap();
        assert_eq!(seen.rows.len(), ROWS, "{who} received {} of {ROWS} rows", seen.rows.len());
        assert_eq!(seen.rows, expected, "{who}");
        let moved = who.contains('→');
        assert_eq!(seen.reconnects > 0, moved, "{who}: reconnected {} times", seen.reconnects);
    }
    for gateway in gateways.into_iter().flatten() {
        gateway.kill().await;
    }
}

/// Four gateways started at the same moment, each re-installing the triggers of `messages`:
/// every one starts (watching is serialised in the database) and delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_started_together_all_start() {
    let db = TestDb::create().await;
    db.execute(MESSAGES).await;
    // Migrated once first, as a deployment would; the race is in watching.
    let first = GatewayProcess::start(&db.url, free_port()).await;
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let started = futures_util::future::join_all(ports.iter().map(|port| GatewayProcess::start(&db.url, *port))).await;
    let mut streams = Vec::new();
    for port in &ports {
        let mut stream = SseClient::get(*port, "/events/messages", &[]).await;
        assert_eq!(stream.status, 200);
        stream.expect("subscribed").await;
        streams.push(stream);
    }
    db.execute("insert into messages (n) values (42)").await;
    for stream in &mut streams {
        assert_eq!(stream.expect("create").await.json()["object"]["n"], 42, "every gateway delivers");
    }
    for gateway in started {
        gateway.kill().await;
    }
    first.kill().await;
}

/// A gateway that falls behind (frozen) keeps its unread changes: the other gateway's pruner
/// stops at the lowest position a live gateway recorded, so the laggard catches up with no
/// reset, however tight the retention.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_gateway_keeps_its_unread_changes_from_the_others_pruner() {
    let db = TestDb::create().await;
    db.execute(MESSAGES).await;
    let retention = [
        ("LIVEGATE_HISTORY__MAX_CHANGES", "20"),
        ("LIVEGATE_HISTORY__PRUNE_INTERVAL_MS", "100"),
        ("LIVEGATE_HISTORY__READER_TIMEOUT_SECS", "60"),
    ];
    let (port_a, port_b) = (free_port(), free_port());
    let a = GatewayProcess::start_with(&db.url, port_a, &retention).await;
    let b = GatewayProcess::start_with(&db.url, port_b, &retention).await;
    let mut lagging = SseClient::get(port_b, "/events/messages", &[]).await;
    lagging.expect("subscribed").await;
    tokio::time::sleep(Duration::from_millis(300)).await; // both have recorded their positions
    b.signal(libc::SIGSTOP);
    db.execute("insert into messages (n) select i from generate_series(1, 200) i").await;
    // The other gateway publishes everything and prunes what it may.
    let mut fresh = SseClient::get(port_a, "/events/messages", &[]).await;
    fresh.expect("subscribed").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (floor, head): (i64, i64) =
        sqlx::query_as("select floor, head from livegate.stream").fetch_one(&db.pool).await.unwrap();
    assert_eq!(head, 200);
    assert!(floor <= 1, "nothing the frozen gateway has not read is pruned (floor {floor})");
    b.signal(libc::SIGCONT);
    let mut seen = BTreeSet::new();
    while seen.len() < 200 {
        let event = lagging.next_event().await;
        assert_eq!(event.name(), "create", "no gap, no reset: {:?}", event.data);
        assert!(seen.insert(event.json()["object"]["n"].as_i64().unwrap()));
    }
    // Once it has caught up, retention applies again.
    let mut pruned = 0i64;
    for _ in 0..50 {
        pruned = sqlx::query_scalar("select floor from livegate.stream").fetch_one(&db.pool).await.unwrap();
        if pruned >= 180 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(pruned >= 180, "pruned to the retention once both read everything (floor {pruned})");
    a.kill().await;
    b.kill().await;
}
