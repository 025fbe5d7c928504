//! Matching and fan-out cost, without sockets or a database.
//!
//! 1. Matcher: nanoseconds per `Query::matches` for a simple and a complex `where`.
//! 2. Hub: changes per second through `Hub::publish` with 1,000 / 10,000 / 100,000
//!    subscriptions, for an indexed shape (`{room: X}` over rooms holding 10 subscribers each)
//!    and an unindexed one (`{n: {$gt: X}}`). Each change touches one room, so the indexed case
//!    should cost about the same whatever the subscription count.
//!
//! 3. Authorization: 10,000 subscribers of one class, each on its own connection with its own
//!    identity (a user and two of 50 roles), all matching every change; the per-change cost
//!    of deciding who may read the row, for public rows, ACLs granting a few, and ACLs granting
//!    nobody (pure checking cost, no deliveries).
//!
//! Run: `cargo bench --bench hub`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use livegate::auth::Identity;
use livegate::hub::{Change, ChangeKind, Hub, Outbox, RowImage, Start, Subscription};
use livegate::protocol::RequestId;
use livegate::query::{Query, QueryLimits};
use livegate::telemetry::Transport;
use serde_json::{json, Map, Value};

fn object(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

fn time_per_iteration(mut f: impl FnMut(), budget: Duration) -> Duration {
    let mut iterations = 0u64;
    let start = Instant::now();
    while start.elapsed() < budget {
        for _ in 0..1000 {
            f();
        }
        iterations += 1000;
    }
    start.elapsed() / iterations as u32
}

fn matcher() {
    let row = object(json!({
        "className": "Message", "objectId": "abc", "room": "lobby", "n": 42, "tags": ["a", "b", "c"],
        "author": {"name": "ann", "karma": 7}, "createdAt": "2026-11-22T10:00:00.000Z",
        "due": {"__type": "Date", "iso": "2026-12-01T00:00:00.000Z"}
    }));
    let cases = [
        ("simple   {room: \"lobby\"}", json!({"room": "lobby"})),
        (
            "complex  $or/$in/$gte/dotted/date/$nin",
            json!({
                "$or": [{"room": {"$in": ["x", "y", "lobby"]}}, {"n": {"$gte": 100}}],
                "author.karma": {"$gt": 5, "$lte": 10},
                "tags": {"$nin": ["z"]},
                "due": {"$lt": {"__type": "Date", "iso": "2027-01-01T00:00:00Z"}},
                "createdAt": {"$exists": true}
            }),
        ),
    ];
    for (label, where_) in cases {
        let query = Query::compile(&object(where_), QueryLimits::default()).expect("compiles");
        assert!(query.matches(&row));
        let per =
            time_per_iteration(|| assert!(black_box(&query).matches(black_box(&row))), Duration::from_millis(500));
        println!("matcher  {label:<40} {:>6} ns/evaluation", per.as_nanos());
    }
}

fn subscription(where_: Value) -> Subscription {
    Subscription::new("Message", &object(where_), QueryLimits::default(), None, None).expect("compiles")
}

/// `deliveries`: whether each change matches ten subscriptions (true) or none (false, which
/// isolates the cost of finding out).
fn hub(subscriptions: usize, indexed: bool, deliveries: bool) {
    const PER_CONNECTION: usize = 100;
    let hub = Hub::new(livegate::hub::HubLimits::per_connection(PER_CONNECTION));
    let rooms = (subscriptions / 10).max(1);
    let mut queues = Vec::new();
    for c in 0..subscriptions.div_ceil(PER_CONNECTION) {
        let (outbox, rx) = Outbox::new(livegate::hub::QueueBudget::frames(1 << 16));
        let conn = hub.register(outbox, Transport::WebSocket);
        for s in 0..PER_CONNECTION.min(subscriptions - c * PER_CONNECTION) {
            let i = c * PER_CONNECTION + s;
            let where_ = if indexed {
                json!({"room": format!("room{}", i % rooms)})
            } else {
                json!({"n": {"$gte": i % rooms, "$lte": i % rooms}})
            };
            hub.subscribe(conn, RequestId::from(s as i64), subscription(where_), Start::Now).expect("subscribes");
        }
        queues.push(rx);
    }
    for rx in &mut queues {
        while rx.try_recv().is_ok() {} // the `subscribed` replies
    }
    let changes = 2_000;
    let mut delivered = 0usize;
    let mut busy = Duration::ZERO;
    for i in 0..changes {
        let (room, n) = if deliveries {
            (format!("room{}", (i * 7919) % rooms), ((i * 7919) % rooms) as i64)
        } else {
            ("nobody's room".to_string(), -1)
        };
        let image = RowImage {
            object: object(
                json!({"className": "Message", "objectId": i.to_string(), "room": room, "n": n, "body": "hello"}),
            ),
            acl: None,
        };
        let change = Change {
            pos: i as i64,
            class: "Message".into(),
            kind: ChangeKind::Insert,
            old: None,
            new: Some(image),
            captured_us: 0,
        };
        let start = Instant::now();
        hub.publish(&change);
        busy += start.elapsed();
        for rx in &mut queues {
            while rx.try_recv().is_ok() {
                delivered += 1;
            }
        }
    }
    let shape = if indexed { "indexed   {room: X}" } else { "unindexed {n: {$gte: X, $lte: X}}" };
    println!(
        "hub      {shape:<36} {subscriptions:>7} subscriptions: {:>9.0} changes/s ({:>6.1} us/change, {} deliveries/change)",
        changes as f64 / busy.as_secs_f64(),
        busy.as_secs_f64() * 1e6 / changes as f64,
        delivered / changes
    );
}

/// `acl`: the row's read ACL (`None`: public). Every subscriber matches every change.
fn authorization(label: &str, acl: Option<Value>) {
    const SUBSCRIBERS: usize = 10_000;
    let hub = Hub::new(livegate::hub::HubLimits::per_connection(1));
    let mut queues = Vec::new();
    for i in 0..SUBSCRIBERS {
        let (outbox, rx) = Outbox::new(livegate::hub::QueueBudget::frames(1 << 12));
        let conn = hub.register(outbox, Transport::WebSocket);
        let mut sub = subscription(json!({}));
        sub.identity = Identity {
            user_id: Some(format!("user{i}")),
            roles: vec![format!("role{}", i % 50), format!("role{}", (i * 7 + 3) % 50)],
            ..Identity::default()
        };
        hub.subscribe(conn, RequestId::from(1), sub, Start::Now).expect("subscribes");
        queues.push(rx);
    }
    for rx in &mut queues {
        while rx.try_recv().is_ok() {}
    }
    let acl = acl.map(|acl| livegate::auth::ReadAcl::from_parse_acl(&acl));
    let changes = 300;
    let (mut busy, mut delivered) = (Duration::ZERO, 0usize);
    for i in 0..changes {
        let image = RowImage {
            object: object(json!({"className": "Message", "objectId": i.to_string(), "body": "hello"})),
            acl: acl.clone(),
        };
        let change = Change {
            pos: i as i64,
            class: "Message".into(),
            kind: ChangeKind::Insert,
            old: None,
            new: Some(image),
            captured_us: 0,
        };
        let start = Instant::now();
        hub.publish(&change);
        busy += start.elapsed();
        for rx in &mut queues {
            while rx.try_recv().is_ok() {
                delivered += 1;
            }
        }
    }
    let per_change = busy.as_secs_f64() * 1e6 / changes as f64;
    println!(
        "auth     {label:<44} 10000 identities: {per_change:>7.0} us/change ({:>5.1} ns/subscriber, {} deliveries/change)",
        per_change * 1e3 / SUBSCRIBERS as f64,
        delivered / changes
    );
}

fn main() {
    matcher();
    authorization("public row (everyone reads)", None);
    authorization(
        "ACL: 1 user + 1 role (~2% read)",
        Some(json!({"user17": {"read": true}, "role:role3": {"read": true}})),
    );
    authorization(
        "ACL: 20 users + 5 roles (~20% read)",
        Some(Value::Object(
            (0..20)
                .map(|u| (format!("user{}", u * 499), json!({"read": true})))
                .chain((0..5).map(|r| (format!("role:role{}", r * 9), json!({"read": true}))))
                .collect(),
        )),
    );
    authorization("ACL: nobody but master (pure checking)", Some(json!({})));
    for (indexed, deliveries) in [(true, true), (true, false), (false, true)] {
        for subscriptions in [1_000, 10_000, 100_000] {
            hub(subscriptions, indexed, deliveries);
        }
    }
}
