//! A soak with mixed clients: a writer, a resuming SSE client that reconnects every moment, WebSocket
//! churn, and a reader that never reads. Every change reaches the resuming client exactly once,
//! in order, and nothing is left behind: no connection in the hub, no file descriptor held.
//! CI runs a few seconds; `LIVEGATE_SOAK_SECS=600` is the ten-minute soak (then RSS is checked
//! to stay flat as well).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::sse::SseClient;
use crate::support::TestApp;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Reconnects every ~300 ms with its last position; returns every object id received.
async fn resuming_reader(port: u16, until: Instant) -> Vec<i64> {
    let (mut seen, mut last): (Vec<i64>, Option<String>) = (Vec::new(), None);
    while Instant::now() < until {
        let headers: Vec<(&str, &str)> = last.iter().map(|id| ("Last-Event-ID", id.as_str())).collect();
        let mut sse = SseClient::subscribe(port, "messages", &json!({"room": "soak"}), "", &headers).await;
        let leave = Instant::now() + Duration::from_millis(300);
        while let Some(event) = sse.next_event_within(leave.saturating_duration_since(Instant::now())).await {
            match event.name() {
                "create" => {
                    seen.push(event.json()["object"]["id"].as_i64().unwrap());
                    last = Some(event.id());
                }
                "subscribed" => last = Some(event.id()),
                other => panic!("unexpected {other}: {event:?}"),
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_clients_lose_nothing_and_leave_nothing_behind() {
    let secs: u64 = std::env::var("LIVEGATE_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(6);
    let app = TestApp::spawn_with(|c| c.limits.send_queue_bytes = 1024 * 1024).await;
    let (fds_before, until) = (open_fds(), Instant::now() + Duration::from_secs(secs));
    let pool = app.db.pool.clone();
    let writer = tokio::spawn(async move {
        while Instant::now() < until {
            sqlx::query("insert into messages (room, body) values ('soak', repeat('x', 2000))")
                .execute(&pool)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let reader = tokio::spawn(resuming_reader(app.port, until));
    let churn_url = app.ws_url();
    let churn = tokio::spawn(async move {
        let mut rounds = 0;
        while Instant::now() < until {
            let mut ws = crate::support::WsClient::connect(&churn_url).await;
            ws.connect_parse().await;
            for (id, where_) in [(1, json!({"room": "soak"})), (2, json!({"n": {"$gt": 0}}))] {
                ws.send(
                    json!({"op": "subscribe", "requestId": id, "query": {"className": "messages", "where": where_}}),
                )
                .await;
            }
            let mut confirmed = 0;
            while confirmed < 2 {
                confirmed += usize::from(ws.recv().await["op"] == "subscribed");
            }
            rounds += 1;
        }
        rounds
    });
    // A reader that never reads, reconnecting when cut.
    let mut stalled = Vec::new();
    let mut rss_mid = 0;
    while Instant::now() < until {
        stalled.push(app.subscriber(json!({})).await);
        stalled.truncate(3);
        tokio::time::sleep(Duration::from_millis(500)).await;
        if rss_mid == 0 && Instant::now() + Duration::from_secs(secs / 2) > until {
            rss_mid = rss_kb();
        }
    }
    writer.await.unwrap();
    let rounds = churn.await.unwrap();
    let mut seen = reader.await.unwrap();
    // Catch up with the rest once writes stopped.
    app.wait_until_published().await;
    seen.extend(resuming_tail(&app, &seen).await);
    let written: Vec<i64> =
        sqlx::query_scalar("select id from messages order by id").fetch_all(&app.db.pool).await.unwrap();
    assert!(rounds > 0 && !written.is_empty());
    assert_eq!(seen, written, "every change exactly once, in commit order ({} written)", written.len());
    drop(stalled);
    app.wait_for_health(|h| h["connections"] == 0).await;
    let fds_after = open_fds();
    // Pools (the test's and the gateway's) may have grown by up to 14 connections meanwhile;
    // a descriptor leaked per connection would show as hundreds: every churn round opened two
    // (both ends live in this process).
    eprintln!("soak: {rounds} churn rounds, {} changes, fds {fds_before} -> {fds_after}", written.len());
    assert!(rounds >= 50, "enough churn to see a leak ({rounds} rounds)");
    assert!(fds_after <= fds_before + 24, "file descriptors: {fds_before} before, {fds_after} after");
    if secs >= 60 {
        let rss_end = rss_kb();
        assert!(rss_end < rss_mid * 3 / 2, "RSS grew from {rss_mid} kB (half-way) to {rss_end} kB");
    }
}

/// What a reader that resumes from its last event receives after the writes stopped.
async fn resuming_tail(app: &TestApp, seen: &[i64]) -> Vec<i64> {
    let written: i64 = sqlx::query_scalar("select count(*) from messages").fetch_one(&app.db.pool).await.unwrap();
    let missing = usize::try_from(written).unwrap().saturating_sub(seen.len());
    if missing == 0 {
        return Vec::new();
    }
    // Positions are what resume needs: find the one of the last object seen.
    let last = seen.last().copied().unwrap_or(0);
    let position: (i64, String) = sqlx::query_as(
        "select c.pos, replace(s.epoch::text, '-', '') from livegate.changes c, livegate.stream s \
         where c.table_name = 'messages' and (c.new_row->>'id')::bigint = $1",
    )
    .bind(last)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    let since = format!("{}-{}", position.0, position.1);
    let mut sse =
        SseClient::subscribe(app.port, "messages", &json!({"room": "soak"}), "", &[("Last-Event-ID", &since)]).await;
    let mut tail = Vec::new();
    while tail.len() < missing {
        let event = sse.next_event().await;
        if event.name() == "create" {
            tail.push(event.json()["object"]["id"].as_i64().unwrap());
        }
    }
    tail
}
