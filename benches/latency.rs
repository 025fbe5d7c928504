//! End-to-end latency, commit → WebSocket frame, measured the way a user would see it.
//!
//! Starts the real gateway in-process (port 0) on a fresh database, subscribes one WebSocket
//! client, then commits one row at a time (autocommit INSERT) and times each frame:
//!   - `sent`: from sending the INSERT to receiving the `create` frame (an upper bound: it
//!     includes the INSERT's own execution and commit);
//!   - `acked`: from the INSERT's commit acknowledgement to the frame (a lower bound).
//!
//! Each change is measured alone (the next one is written after the frame arrived).
//!
//! Run: `cargo bench --bench latency` (optionally `-- <changes>`; LIVEGATE_TEST_DATABASE_URL
//! points at another server).

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[path = "support.rs"]
mod support;

use support::Bench;

#[tokio::main]
async fn main() {
    let changes: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(500);
    let mut bench = Bench::start().await;
    let (port, writer) = (bench.port, &mut bench.writer);

    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/")).await.expect("websocket");
    let send = |v: Value| Message::text(v.to_string());
    socket.send(send(json!({"op": "connect", "applicationId": "bench"}))).await.expect("send");
    socket
        .send(send(json!({"op": "subscribe", "requestId": 1, "query": {"className": "messages", "where": {}}})))
        .await
        .expect("send");
    let mut next_frame = async || loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => return serde_json::from_str::<Value>(&text).expect("json"),
            Some(Ok(_)) => continue,
            other => panic!("socket ended: {other:?}"),
        }
    };
    assert_eq!(next_frame().await["op"], "connected");
    assert_eq!(next_frame().await["op"], "subscribed");

    let mut sent = Vec::with_capacity(changes);
    let mut acked = Vec::with_capacity(changes);
    for i in 0..changes {
        let start = Instant::now();
        sqlx::query("insert into messages (body) values ($1)")
            .bind(format!("change {i}"))
            .execute(&mut *writer)
            .await
            .expect("insert");
        let committed = Instant::now();
        let frame = next_frame().await;
        let arrived = Instant::now();
        assert_eq!(frame["op"], "create");
        sent.push(arrived - start);
        acked.push(arrived.saturating_duration_since(committed));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The first change of a table also loads its metadata from the catalog: shown apart.
    println!("first change: sent -> frame {:.2?}, acked -> frame {:.2?}", sent[0], acked[0]);
    report("INSERT sent -> frame", &mut sent[1..]);
    report("commit acked -> frame", &mut acked[1..]);

    bench.stop().await;
}

fn report(label: &str, samples: &mut [Duration]) {
    samples.sort();
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "{label:<24} n={} median={:.2?} p90={:.2?} p99={:.2?} max={:.2?}",
        samples.len(),
        pick(0.5),
        pick(0.9),
        pick(0.99),
        samples[samples.len() - 1]
    );
}
