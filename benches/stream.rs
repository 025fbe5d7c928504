//! Throughput of one connection, and resume time, on both transports.
//!
//! Starts the real gateway in-process (port 0) on a fresh database and measures:
//!   1. events per second one SSE connection and one WebSocket connection receive when changes
//!      are committed in bulk (end to end: sequencing, change-table reads, matching, framing);
//!   2. the same with changes injected straight into the hub, which isolates the transports
//!      (framing, socket writes, the client reading) from the database;
//!   3. how long a client that missed N changes (default 10,000) takes to resume: from sending
//!      its last position to receiving `subscribed` after the replay, on each transport.
//!
//! Run: `cargo bench --bench stream` (optionally `-- <changes>`; LIVEGATE_TEST_DATABASE_URL
//! points at another server).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use livegate::hub::{Change, ChangeKind, Hub, RowImage};
use serde_json::{json, Value};
use sqlx::{Executor, PgConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

#[path = "support.rs"]
mod support;

use support::Bench;

#[tokio::main]
async fn main() {
    let changes: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(10_000);
    let mut bench = Bench::start().await;
    let (port, writer) = (bench.port, &mut bench.writer);
    let insert = format!("insert into messages (body) select 'change ' || g from generate_series(1, {changes}) g");

    // 1. End to end, bulk commits.
    let mut sse = Sse::open(port, None).await;
    let mut ws = Ws::open(port, "now").await;
    let start = Instant::now();
    writer.execute(insert.as_str()).await.expect("insert");
    let (sse_time, ws_time) = tokio::join!(sse.creates(changes, start), ws.creates(changes, start));
    report("end to end (bulk INSERT)", changes, sse_time.0, ws_time.0);
    let (sse_last, ws_last) = (sse_time.1, ws_time.1);
    drop((sse, ws));

    // 2. Transports alone: changes injected into the hub.
    let mut sse = Sse::open(port, None).await;
    let mut ws = Ws::open(port, "now").await;
    let start = Instant::now();
    inject(&bench.hub, changes);
    let (sse_time, ws_time) = tokio::join!(sse.creates(changes, start), ws.creates(changes, start));
    report("transport only (hub.publish)", changes, sse_time.0, ws_time.0);
    drop((sse, ws));

    // 3. Resume after missing `changes` changes (committed while away, already published).
    writer.execute(insert.as_str()).await.expect("insert");
    wait_published(writer, port).await;
    let start = Instant::now();
    let mut sse = Sse::open(port, Some(&sse_last)).await;
    sse.until_subscribed(changes).await;
    let sse_resume = start.elapsed();
    let start = Instant::now();
    let mut ws = Ws::open(port, &ws_last).await;
    ws.until_subscribed(changes).await;
    let ws_resume = start.elapsed();
    println!(
        "resume of {changes} missed changes (to `subscribed`): SSE {:.0?} ({:.0}/s), WebSocket {:.0?} ({:.0}/s)",
        sse_resume,
        changes as f64 / sse_resume.as_secs_f64(),
        ws_resume,
        changes as f64 / ws_resume.as_secs_f64()
    );

    bench.stop().await;
}

fn report(label: &str, changes: usize, sse: Duration, ws: Duration) {
    println!(
        "{label:<30} {changes} events: SSE {:.0?} = {:>7.0} events/s, WebSocket {:.0?} = {:>7.0} events/s",
        sse,
        changes as f64 / sse.as_secs_f64(),
        ws,
        changes as f64 / ws.as_secs_f64()
    );
}

/// Publishes `n` inserts straight into the hub, after the feed's position.
fn inject(hub: &Arc<Hub>, n: usize) {
    let base = hub.position().offset + 1_000_000;
    for i in 0..n {
        let object = json!({"className": "messages", "objectId": i.to_string(), "body": format!("change {i}")});
        let Value::Object(object) = object else { unreachable!() };
        hub.publish(&Change {
            pos: base + i as i64,
            class: "messages".into(),
            kind: ChangeKind::Insert,
            old: None,
            new: Some(RowImage { object, acl: None }),
            captured_us: 0,
        });
    }
}

async fn wait_published(db: &mut PgConnection, port: u16) {
    loop {
        let head: i64 = sqlx::query_scalar("select coalesce(max(pos), 0) from livegate.changes")
            .fetch_one(&mut *db)
            .await
            .expect("head");
        let unsequenced: i64 = sqlx::query_scalar("select count(*) from livegate.changes where pos is null")
            .fetch_one(&mut *db)
            .await
            .expect("count");
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
        stream.write_all(b"GET /health HTTP/1.0\r\n\r\n").await.expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        let body: Value = serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap_or("{}")).expect("json");
        if unsequenced == 0 && body["feedPosition"] == head {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A minimal SSE reader over HTTP/1.0 (no chunking), counting blocks by event name.
struct Sse {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Sse {
    async fn open(port: u16, last_event_id: Option<&str>) -> Sse {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
        let resume = last_event_id.map(|id| format!("Last-Event-ID: {id}\r\n")).unwrap_or_default();
        let request = format!("GET /events/messages HTTP/1.0\r\nAccept: text/event-stream\r\n{resume}\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut sse = Sse { stream, buffer: Vec::new() };
        if last_event_id.is_none() {
            let (name, _) = sse.next().await;
            assert_eq!(name, "subscribed");
        }
        sse
    }

    /// The next event block: (event name, id).
    async fn next(&mut self) -> (String, String) {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8_lossy(&self.buffer[..end]).to_string();
                self.buffer.drain(..end + 2);
                let field = |name: &str| {
                    block.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string()).unwrap_or_default()
                };
                let event = field("event:");
                if event.is_empty() {
                    continue; // the head, retry hints, keep-alives
                }
                return (event, field("id:"));
            }
            let mut chunk = [0u8; 64 * 1024];
            let n = self.stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "the stream ended");
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    async fn creates(&mut self, n: usize, start: Instant) -> (Duration, String) {
        let mut last = String::new();
        for _ in 0..n {
            let (name, id) = self.next().await;
            assert_eq!(name, "create");
            last = id;
        }
        (start.elapsed(), last)
    }

    async fn until_subscribed(&mut self, expected: usize) {
        let mut seen = 0;
        loop {
            match self.next().await.0.as_str() {
                "create" => seen += 1,
                "subscribed" => break,
                other => panic!("unexpected {other}"),
            }
        }
        assert_eq!(seen, expected, "the replay delivered every missed change");
    }
}

struct Ws {
    socket: Socket,
}

impl Ws {
    async fn open(port: u16, since: &str) -> Ws {
        let (mut socket, _) =
            tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/")).await.expect("websocket");
        let send = |v: Value| Message::text(v.to_string());
        socket.send(send(json!({"op": "connect", "applicationId": "bench"}))).await.expect("send");
        let subscribe =
            json!({"op": "subscribe", "requestId": 1, "query": {"className": "messages", "where": {}}, "since": since});
        socket.send(send(subscribe)).await.expect("send");
        let mut ws = Ws { socket };
        assert_eq!(ws.next().await["op"], "connected");
        if since == "now" {
            assert_eq!(ws.next().await["op"], "subscribed");
        }
        ws
    }

    async fn next(&mut self) -> Value {
        loop {
            match self.socket.next().await {
                Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).expect("json"),
                Some(Ok(_)) => continue,
                other => panic!("socket ended: {other:?}"),
            }
        }
    }

    async fn creates(&mut self, n: usize, start: Instant) -> (Duration, String) {
        let mut last = String::new();
        for _ in 0..n {
            let frame = self.next().await;
            assert_eq!(frame["op"], "create");
            last = frame["position"].as_str().unwrap_or_default().to_string();
        }
        (start.elapsed(), last)
    }

    async fn until_subscribed(&mut self, expected: usize) {
        let mut seen = 0;
        loop {
            let frame = self.next().await;
            match frame["op"].as_str() {
                Some("create") => seen += 1,
                Some("subscribed") => break,
                _ => panic!("unexpected {frame}"),
            }
        }
        assert_eq!(seen, expected, "the replay delivered every missed change");
    }
}
