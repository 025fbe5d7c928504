//! Snapshots (`"snapshot": true` on subscribe, `?snapshot=true` on SSE): how long a client waits
//! for a table's current rows, what that costs in memory, and what it does to everyone else.
//!
//! Starts the real gateway in-process (port 0, [`support::Bench`]) on a fresh database with one
//! table per size (`snap_<rows>`: `id bigserial primary key, room text, n int, body text`,
//! ~200-byte bodies, 100 rooms, an index on `room`), `limits.snapshot_rows` raised to 200,000,
//! and measures, for each size and each query, on each transport (a fresh connection each time,
//! `LIVEGATE_BENCH_SNAPSHOT_REPEAT` times; median and range):
//!   - `room`: `{"room":"r7"}`, 1% of the rows, read through the index;
//!   - `regex`: `{"body":{"$regex":"^k7 "}}`, the same 1%, but SQL cannot narrow it: the whole
//!     table is read and the matcher decides;
//!   - `all`: `{"n":{"$gte":0}}`, every row (SQL narrows it to `n >= 0`, a sequential scan);
//!
//! and for each: the time from sending the request (the `subscribe` frame; the SSE request line)
//! to the first object received (WebSocket: the one `result` frame, so first = last; SSE: the
//! first and the last `event: snapshot` chunk) and to `subscribed`; and the process's RSS
//! (`/proc/self/status` VmRSS sampled every 5 ms by a thread): before, peak, and 200 ms after.
//! The clients live in the same process, so RSS includes the client's copy of what it received
//! (it counts objects without building them).
//!
//! Then the effect of a 10,000-row `all` snapshot on other clients: 50 WebSocket subscribers
//! of `messages` receive inserts committed at ~200/s; latency is commit acknowledged → `create`
//! frame, per frame, without any snapshot (5 s), and for the inserts committed while one of 10
//! WebSocket (then 10 SSE) snapshots was running.
//!
//! Run: `cargo bench --bench snapshot`. Environment: `LIVEGATE_BENCH_SNAPSHOT_ROWS` (sizes,
//! default `1000,10000,100000`), `LIVEGATE_BENCH_SNAPSHOT_REPEAT` (default 5, 3 above 10,000
//! rows), `LIVEGATE_BENCH_SEND_QUEUE_BYTES` (`limits.send_queue_bytes`, default 64 MiB: a
//! 100,000-row result is ~28 MB, past the 16 MiB default, which closes the client),
//! `LIVEGATE_BENCH_SNAPSHOT_TIMEOUT_MS` (`limits.snapshot_timeout_ms`, default the config's),
//! `LIVEGATE_TEST_DATABASE_URL` (another PostgreSQL server).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

#[path = "support.rs"]
mod support;

use support::Bench;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Subscribers of `messages` while the impact of a snapshot is measured.
const LIVE_SUBSCRIBERS: usize = 50;
/// One insert every this often (~200/s).
const INSERT_EVERY: Duration = Duration::from_millis(5);
const IMPACT_ROWS: usize = 10_000;
const IMPACT_SNAPSHOTS: usize = 10;

#[tokio::main]
async fn main() {
    let sizes: Vec<usize> = std::env::var("LIVEGATE_BENCH_SNAPSHOT_ROWS")
        .unwrap_or_else(|_| "1000,10000,100000".into())
        .split(',')
        .map(|s| s.trim().replace('_', "").parse().expect("LIVEGATE_BENCH_SNAPSHOT_ROWS: numbers"))
        .collect();
    let repeat: Option<usize> = env_number("LIVEGATE_BENCH_SNAPSHOT_REPEAT");
    let send_queue_bytes = env_number("LIVEGATE_BENCH_SEND_QUEUE_BYTES").unwrap_or(64 << 20);
    let timeout_ms: Option<u64> = env_number("LIVEGATE_BENCH_SNAPSHOT_TIMEOUT_MS");

    // Tables: every size measured, and the one the impact is measured with.
    let mut tables: Vec<usize> = sizes.clone();
    if !tables.contains(&IMPACT_ROWS) {
        tables.push(IMPACT_ROWS);
    }
    let setup_started = Instant::now();
    let setup: Vec<String> = tables.iter().map(|&rows| table_sql(rows)).collect();
    let table_names: Vec<String> = tables.iter().map(|rows| format!("snap_{rows}")).collect();
    let mut bench = Bench::start_with(&setup, |config| {
        config.feed.tables.extend(table_names.iter().cloned());
        config.limits.snapshot_rows = 200_000;
        config.limits.send_queue_bytes = send_queue_bytes;
        if let Some(ms) = timeout_ms {
            config.limits.snapshot_timeout_ms = ms;
        }
    })
    .await;
    livegate::heap::spawn_trimmer(); // as the binary does (src/main.rs)
    let port = bench.port;
    let config = livegate::config::Config::default();
    println!(
        "setup: {} tables in {:.1?}; limits.snapshot_rows=200000, send_queue_bytes={} MiB, snapshot_timeout_ms={}, \
         snapshot_connections={}; load average {}",
        tables.len(),
        setup_started.elapsed(),
        send_queue_bytes >> 20,
        timeout_ms.unwrap_or(config.limits.snapshot_timeout_ms),
        config.limits.snapshot_connections,
        load_average()
    );

    let rss = Rss::start();
    // Warm-up: the catalog lookups of every table, and both transports once.
    for name in &table_names {
        let where_ = json!({"room": "r7"});
        ws_snapshot(port, name, &where_).await.expect("warm-up snapshot");
        sse_snapshot(port, name, &where_).await.expect("warm-up snapshot");
    }

    let mut rows_out = Vec::new();
    for &size in &sizes {
        let table = format!("snap_{size}");
        let repeat = repeat.unwrap_or(if size > 10_000 { 3 } else { 5 });
        let queries = [
            ("room", json!({"room": "r7"}), size / 100),
            ("regex", json!({"body": {"$regex": "^k7 "}}), size / 100),
            ("all", json!({"n": {"$gte": 0}}), size),
        ];
        for (label, where_, expected) in &queries {
            for transport in [Transport::Ws, Transport::Sse] {
                settle().await;
                let before = rss.now();
                rss.reset();
                let mut outcomes = Vec::new();
                let mut failure = None;
                for _ in 0..repeat {
                    let outcome = match transport {
                        Transport::Ws => ws_snapshot(port, &table, where_).await,
                        Transport::Sse => sse_snapshot(port, &table, where_).await,
                    };
                    match outcome {
                        Ok(outcome) => {
                            assert_eq!(outcome.objects, *expected, "{table} {label} {transport:?}: objects received");
                            outcomes.push(outcome);
                        }
                        Err(why) => {
                            failure = Some(why);
                            break;
                        }
                    }
                }
                let peak = rss.peak();
                tokio::time::sleep(Duration::from_millis(200)).await;
                let after = rss.now();
                let row = Row {
                    size,
                    query: *label,
                    transport,
                    matched: *expected,
                    outcomes,
                    failure,
                    rss: (before, peak, after),
                };
                eprintln!("{}", row.line());
                rows_out.push(row);
            }
        }
    }
    rss.stop();

    println!();
    println!("Snapshot latency (median [min-max] over the repeats; ms from sending the request) and process RSS (MB)");
    println!("{}", Row::header());
    for row in &rows_out {
        println!("{}", row.line());
    }

    println!();
    impact(&mut bench).await;
    println!("load average at the end: {}", load_average());
    bench.stop().await;
}

fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().map(|v| v.replace('_', "").parse().unwrap_or_else(|_| panic!("{name}: a number")))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// `snap_<rows>`, filled, indexed on `room`, analyzed (before the gateway starts watching it).
fn table_sql(rows: usize) -> String {
    format!(
        "create table snap_{rows} (id bigserial primary key, room text, n int, body text);
         insert into snap_{rows} (room, n, body)
           select 'r' || (g % 100), g, 'k' || (g % 100) || ' ' || repeat(md5(g::text), 6)
           from generate_series(1, {rows}) g;
         create index on snap_{rows} (room);
         analyze snap_{rows};"
    )
}

/// Lets the previous measurement's connections go before the next one's baseline.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Ws,
    Sse,
}

/// One snapshot, as the client saw it.
#[derive(Debug, Clone)]
struct Outcome {
    first: Duration,
    last: Duration,
    subscribed: Duration,
    objects: usize,
    bytes: usize,
}

struct Row {
    size: usize,
    query: &'static str,
    transport: Transport,
    matched: usize,
    outcomes: Vec<Outcome>,
    failure: Option<String>,
    /// RSS in kB: before, peak during, 200 ms after.
    rss: (u64, u64, u64),
}

impl Row {
    fn header() -> String {
        format!(
            "{:>7} {:<5} {:<4} {:>7} {:>6} {:>3} | {:<21} | {:<21} | {:<21} | {:>6} {:>6} {:>6}",
            "rows",
            "query",
            "via",
            "objects",
            "MB",
            "n",
            "first object",
            "last object",
            "subscribed",
            "RSS<",
            "peak",
            "after"
        )
    }

    fn line(&self) -> String {
        let via = match self.transport {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
        };
        let mb = |kb: u64| format!("{:.0}", kb as f64 / 1024.0);
        let (before, peak, after) = self.rss;
        let bytes = self.outcomes.first().map_or(0, |o| o.bytes);
        let head = format!(
            "{:>7} {:<5} {:<4} {:>7} {:>6.1} {:>3}",
            self.size,
            self.query,
            via,
            self.matched,
            bytes as f64 / 1e6,
            self.outcomes.len()
        );
        let stat = |pick: fn(&Outcome) -> Duration| spread(self.outcomes.iter().map(pick).collect());
        let cells = if self.outcomes.is_empty() {
            format!("{:<67}", "-")
        } else {
            format!("{:<21} | {:<21} | {:<21}", stat(|o| o.first), stat(|o| o.last), stat(|o| o.subscribed))
        };
        let failure = self.failure.as_ref().map(|f| format!("  FAILED: {f}")).unwrap_or_default();
        format!("{head} | {cells} | {:>6} {:>6} {:>6}{failure}", mb(before), mb(peak), mb(after))
    }
}

/// `median [min-max]` in ms.
fn spread(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let ms = |d: Duration| {
        let ms = d.as_secs_f64() * 1000.0;
        if ms < 10.0 {
            format!("{ms:.1}")
        } else {
            format!("{ms:.0}")
        }
    };
    format!("{} [{}-{}]", ms(samples[samples.len() / 2]), ms(samples[0]), ms(samples[samples.len() - 1]))
}

/// The process's resident memory, sampled every 5 ms by a thread of its own.
struct Rss {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Rss {
    fn start() -> Rss {
        let (peak, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (p, s) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_kb(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Rss { peak, stop }
    }

    fn now(&self) -> u64 {
        rss_kb()
    }

    fn reset(&self) {
        self.peak.store(rss_kb(), Ordering::Relaxed);
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed).max(rss_kb())
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// What the clients need of a frame; objects are counted, not built.
#[derive(Deserialize)]
struct Frame {
    op: String,
    #[serde(default)]
    results: Option<Vec<IgnoredAny>>,
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Chunk {
    objects: Vec<IgnoredAny>,
}

/// A WebSocket client that accepts frames of any size (a 100,000-row `result` is one ~28 MB
/// frame; tungstenite refuses frames above 16 MiB by default).
async fn ws_connect(port: u16) -> Socket {
    let mut config = WebSocketConfig::default();
    config.max_message_size = None;
    config.max_frame_size = None;
    let (mut socket, _) =
        tokio_tungstenite::connect_async_with_config(format!("ws://127.0.0.1:{port}/"), Some(config), true)
            .await
            .expect("websocket");
    socket.send(Message::text(json!({"op": "connect", "applicationId": "bench"}).to_string())).await.expect("send");
    match ws_next(&mut socket).await {
        Ok((frame, _)) if frame.op == "connected" => socket,
        Ok((frame, _)) => panic!("expected connected, got {}", frame.op),
        Err(why) => panic!("connect: {why}"),
    }
}

async fn ws_next(socket: &mut Socket) -> Result<(Frame, usize), String> {
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => {
                let frame: Frame = serde_json::from_str(&text).map_err(|e| format!("bad frame: {e}"))?;
                return Ok((frame, text.len()));
            }
            Some(Ok(Message::Close(close))) => return Err(format!("closed: {close:?}")),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("socket error: {e}")),
            None => return Err("socket ended".into()),
        }
    }
}

/// Subscribes with `"snapshot": true` on a fresh connection and waits for `subscribed`.
async fn ws_snapshot(port: u16, table: &str, where_: &Value) -> Result<Outcome, String> {
    let mut socket = ws_connect(port).await;
    let subscribe = json!({"op": "subscribe", "requestId": 1, "snapshot": true,
        "query": {"className": table, "where": where_}});
    let start = Instant::now();
    socket.send(Message::text(subscribe.to_string())).await.expect("send");
    let (mut first, mut objects, mut bytes) = (None, 0, 0);
    let subscribed = loop {
        let (frame, size) = ws_next(&mut socket).await?;
        let at = start.elapsed();
        match frame.op.as_str() {
            "result" => {
                first.get_or_insert(at);
                objects += frame.results.map_or(0, |r| r.len());
                bytes += size;
            }
            "subscribed" => break at,
            "error" => return Err(format!("error {:?}: {}", frame.code, frame.error.unwrap_or_default())),
            other => return Err(format!("unexpected {other}")),
        }
    };
    let _ = socket.close(None).await;
    let first = first.ok_or("subscribed without a result")?;
    Ok(Outcome { first, last: first, subscribed, objects, bytes })
}

/// `GET /events/<table>?snapshot=true&where=…` over HTTP/1.0 (no chunking), until `subscribed`.
async fn sse_snapshot(port: u16, table: &str, where_: &Value) -> Result<Outcome, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let request = format!(
        "GET /events/{table}?snapshot=true&where={} HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n",
        percent_encode(&where_.to_string())
    );
    let start = Instant::now();
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut buffer: Vec<u8> = Vec::with_capacity(256 * 1024);
    let mut chunk = vec![0u8; 256 * 1024];
    // The response head.
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        read_more(&mut stream, &mut buffer, &mut chunk).await?;
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    if !head.lines().next().unwrap_or_default().contains(" 200 ") {
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
        let body = String::from_utf8_lossy(&buffer[head_end + 4..]).to_string() + &String::from_utf8_lossy(&rest);
        return Err(format!("{}: {}", head.lines().next().unwrap_or_default(), body.trim()));
    }
    buffer.drain(..head_end + 4);
    let (mut first, mut last, mut objects, mut bytes) = (None, Duration::ZERO, 0, 0);
    let mut scanned = 0; // where the search for the end of the block resumes
    loop {
        let Some(end) = buffer[scanned..].windows(2).position(|w| w == b"\n\n").map(|p| p + scanned) else {
            scanned = buffer.len().saturating_sub(1);
            read_more(&mut stream, &mut buffer, &mut chunk).await?;
            continue;
        };
        let at = start.elapsed();
        let block = std::str::from_utf8(&buffer[..end]).map_err(|e| format!("utf-8: {e}"))?;
        let field = |name: &str| block.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
        match field("event:") {
            Some("snapshot") => {
                let data = field("data:").ok_or("a snapshot without data")?;
                let chunk: Chunk = serde_json::from_str(data).map_err(|e| format!("bad snapshot: {e}"))?;
                first.get_or_insert(at);
                last = at;
                objects += chunk.objects.len();
                bytes += data.len();
            }
            Some("subscribed") => {
                let first = first.ok_or("subscribed without a snapshot")?;
                return Ok(Outcome { first, last, subscribed: at, objects, bytes });
            }
            Some(other) => return Err(format!("event {other}: {}", field("data:").unwrap_or_default())),
            None => {} // retry:, comments
        }
        buffer.drain(..end + 2);
        scanned = 0;
    }
}

/// Appends what the stream has next to `buffer`.
async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>, chunk: &mut [u8]) -> Result<(), String> {
    let n = stream.read(chunk).await.map_err(|e| format!("read: {e}"))?;
    if n == 0 {
        let tail = &buffer[buffer.len().saturating_sub(300)..];
        return Err(format!("the stream ended: {:?}", String::from_utf8_lossy(tail)));
    }
    buffer.extend_from_slice(&chunk[..n]);
    Ok(())
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// What one live subscriber saw: (objectId, when its frame arrived).
type Arrivals = Vec<(String, Instant)>;

/// The effect of 10,000-row snapshots on the live-event latency of 50 other subscribers.
async fn impact(bench: &mut Bench) {
    let port = bench.port;
    let table = format!("snap_{IMPACT_ROWS}");
    let where_ = json!({"n": {"$gte": 0}});
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut subscribers = Vec::new();
    for _ in 0..LIVE_SUBSCRIBERS {
        let mut socket = ws_connect(port).await;
        let subscribe = json!({"op": "subscribe", "requestId": 1, "query": {"className": "messages", "where": {}}});
        socket.send(Message::text(subscribe.to_string())).await.expect("send");
        let (frame, _) = ws_next(&mut socket).await.expect("subscribed");
        assert_eq!(frame.op, "subscribed");
        let mut stop = stop_rx.clone();
        subscribers.push(tokio::spawn(async move {
            let mut arrivals: Arrivals = Vec::with_capacity(8192);
            loop {
                tokio::select! {
                    message = socket.next() => match message {
                        Some(Ok(Message::Text(text))) => {
                            let at = Instant::now();
                            let frame: Value = serde_json::from_str(&text).expect("json");
                            if frame["op"] == "create" {
                                arrivals.push((frame["object"]["objectId"].as_str().unwrap_or_default().to_string(), at));
                            }
                        }
                        Some(Ok(_)) => {}
                        other => panic!("live subscriber: {other:?}"),
                    },
                    _ = stop.changed() => break,
                }
            }
            arrivals
        }));
    }

    // The snapshots run in a task of their own while this one writes; each notes its window.
    let started = Instant::now();
    let baseline = (started + Duration::from_secs(1), started + Duration::from_secs(6));
    let snapshots = tokio::spawn(async move {
        tokio::time::sleep_until((baseline.1 + Duration::from_millis(500)).into()).await;
        let mut windows: Vec<(Transport, Instant, Instant, Duration)> = Vec::new();
        for transport in [Transport::Ws, Transport::Sse] {
            for _ in 0..IMPACT_SNAPSHOTS {
                let begin = Instant::now();
                let outcome = match transport {
                    Transport::Ws => ws_snapshot(port, &table, &where_).await,
                    Transport::Sse => sse_snapshot(port, &table, &where_).await,
                };
                let outcome = outcome.expect("impact snapshot");
                assert_eq!(outcome.objects, IMPACT_ROWS);
                windows.push((transport, begin, Instant::now(), outcome.subscribed));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        windows
    });

    // ~200 inserts/s until the snapshots are done: (sent, acknowledged) per objectId.
    let mut commits: HashMap<String, (Instant, Instant)> = HashMap::new();
    let mut tick = tokio::time::interval(INSERT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut done_at = None;
    let mut i = 0u64;
    loop {
        tick.tick().await;
        if snapshots.is_finished() {
            let done = *done_at.get_or_insert_with(Instant::now);
            if done.elapsed() > Duration::from_millis(500) {
                break;
            }
        }
        let sent = Instant::now();
        let id: i64 = sqlx::query_scalar("insert into messages (body) values ($1) returning id")
            .bind(format!("live {i}"))
            .fetch_one(&mut bench.writer)
            .await
            .expect("insert");
        commits.insert(id.to_string(), (sent, Instant::now()));
        i += 1;
    }
    let windows = snapshots.await.expect("snapshots");
    tokio::time::sleep(Duration::from_millis(1000)).await; // the last frames
    stop_tx.send(true).expect("stop");
    let mut arrivals = Vec::new();
    for subscriber in subscribers {
        arrivals.push(subscriber.await.expect("subscriber"));
    }
    let elapsed = started.elapsed();

    // Each frame's latency, filed by when its insert was acknowledged.
    #[derive(Default)]
    struct Class {
        frames: Vec<Duration>,
        inserts: Vec<Duration>,
        missing: usize,
        /// The frames of each subscriber, to see whether all suffer or only some (connections
        /// are spread over the server's workers; the snapshot runs on one of them).
        by_subscriber: Vec<Vec<Duration>>,
    }
    let mut classes: [Class; 3] = Default::default(); // baseline, during ws, during sse
    let class_of = |acked: Instant| -> Option<usize> {
        if acked >= baseline.0 && acked <= baseline.1 {
            return Some(0);
        }
        windows.iter().find(|(_, begin, end, _)| acked >= *begin && acked <= *end).map(|(t, ..)| match t {
            Transport::Ws => 1,
            Transport::Sse => 2,
        })
    };
    let per_subscriber: Vec<HashMap<&str, Instant>> =
        arrivals.iter().map(|a| a.iter().map(|(id, at)| (id.as_str(), *at)).collect()).collect();
    for (id, (sent, acked)) in &commits {
        let Some(class) = class_of(*acked) else { continue };
        let class = &mut classes[class];
        class.inserts.push(*acked - *sent);
        class.by_subscriber.resize(per_subscriber.len(), Vec::new());
        for (s, seen) in per_subscriber.iter().enumerate() {
            match seen.get(id.as_str()) {
                Some(at) => {
                    let latency = at.saturating_duration_since(*acked);
                    class.frames.push(latency);
                    class.by_subscriber[s].push(latency);
                }
                None => class.missing += 1,
            }
        }
    }
    let rate = commits.len() as f64 / elapsed.as_secs_f64();
    let durations = |t: Transport| spread(windows.iter().filter(|w| w.0 == t).map(|w| w.3).collect());
    println!(
        "Impact of a {IMPACT_ROWS}-row `all` snapshot on {LIVE_SUBSCRIBERS} live WebSocket subscribers of another table \
         ({} inserts, {rate:.0}/s; snapshot to subscribed under load: ws {} ms, sse {} ms)",
        commits.len(),
        durations(Transport::Ws),
        durations(Transport::Sse)
    );
    println!(
        "{:<22} {:>7} {:>8} {:>8} {:>8} {:>8} {:>7} | {:>10} {:>10} | {}",
        "commit ack -> frame",
        "inserts",
        "frames",
        "p50",
        "p90",
        "p99",
        "max",
        "INSERT p50",
        "INSERT p99",
        "per-subscriber p99: min/p25/median/p75/max"
    );
    for (label, class) in ["no snapshot", "during ws snapshot", "during sse snapshot"].iter().zip(classes.iter_mut()) {
        if class.frames.is_empty() {
            println!("{label:<22} no samples");
            continue;
        }
        class.frames.sort();
        class.inserts.sort();
        let pick = |s: &[Duration], q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
        let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1000.0);
        let mut p99s: Vec<Duration> = class
            .by_subscriber
            .iter_mut()
            .filter(|f| !f.is_empty())
            .map(|f| {
                f.sort();
                pick(f, 0.99)
            })
            .collect();
        p99s.sort();
        let by_subscriber =
            [0.0, 0.25, 0.5, 0.75, 1.0].map(|q| format!("{:.0}", pick(&p99s, q).as_secs_f64() * 1000.0));
        println!(
            "{label:<22} {:>7} {:>8} {:>8} {:>8} {:>8} {:>7} | {:>10} {:>10} | {}{}",
            class.inserts.len(),
            class.frames.len(),
            ms(pick(&class.frames, 0.5)),
            ms(pick(&class.frames, 0.9)),
            ms(pick(&class.frames, 0.99)),
            ms(class.frames[class.frames.len() - 1]),
            ms(pick(&class.inserts, 0.5)),
            ms(pick(&class.inserts, 0.99)),
            by_subscriber.join("/"),
            if class.missing > 0 { format!("  ({} frames missing)", class.missing) } else { String::new() }
        );
    }
}
