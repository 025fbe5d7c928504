use crate::telemetry::Transport;
use serde_json::{json, Value};

use super::*;
use crate::protocol::EventOp;

fn object(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

fn subscription(where_: Value, keys: Option<&[&str]>, watch: Option<&[&str]>) -> Subscription {
    let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
    Subscription::new("Msg", &object(where_), QueryLimits::default(), keys.map(names), watch.map(names)).unwrap()
}

fn image(v: Value) -> Option<RowImage> {
    Some(RowImage { object: object(v), acl: None })
}

fn change(kind: ChangeKind, old: Option<RowImage>, new: Option<RowImage>) -> Change {
    Change { pos: 7, class: "Msg".into(), kind, old, new, captured_us: 0 }
}

fn connect(hub: &Hub, capacity: usize) -> (ConnectionId, crate::hub::Queue) {
    let (outbox, rx) = Outbox::new(crate::hub::QueueBudget::frames(capacity));
    (hub.register(outbox, Transport::WebSocket), rx)
}

fn subscribe(hub: &Hub, conn: ConnectionId, id: i64, sub: Subscription) {
    hub.subscribe(conn, RequestId::from(id), sub, Start::Now).unwrap();
}

/// Every event delivered so far, as (op, requestId, object, original).
fn drain(rx: &mut crate::hub::Queue) -> Vec<(EventOp, String, Value, Option<Value>)> {
    let mut out = Vec::new();
    while let Ok(item) = rx.try_recv() {
        if let Outgoing::Event(d) = item {
            let parse = |s: &str| serde_json::from_str::<Value>(s).unwrap();
            out.push((
                d.op,
                d.request_id.to_string(),
                parse(&d.payload.object),
                d.payload.original.as_deref().map(parse),
            ));
        }
    }
    out
}

fn ops(events: &[(EventOp, String, Value, Option<Value>)]) -> Vec<EventOp> {
    events.iter().map(|e| e.0).collect()
}

#[test]
fn decision_table() {
    let hub = Hub::new(crate::hub::HubLimits::per_connection(10));
    let (conn, mut rx) = connect(&hub, 100);
    subscribe(&hub, conn, 1, subscription(json!({"room": "a"}), None, None));
    let row = |room: &str| image(json!({"className": "Msg", "objectId": "1", "room": room}));
    hub.publish(&change(ChangeKind::Insert, None, row("a")));
    hub.publish(&change(ChangeKind::Insert, None, row("b")));
    hub.publish(&change(ChangeKind::Update, row("a"), row("a")));
    hub.publish(&change(ChangeKind::Update, row("a"), row("b")));
    hub.publish(&change(ChangeKind::Update, row("b"), row("a")));
    hub.publish(&change(ChangeKind::Update, row("b"), row("b")));
    hub.publish(&change(ChangeKind::Delete, row("a"), None));
    hub.publish(&change(ChangeKind::Delete, row("b"), None));
    let events = drain(&mut rx);
    assert_eq!(ops(&events), [EventOp::Create, EventOp::Update, EventOp::Leave, EventOp::Enter, EventOp::Delete]);
    // leave carries the new state as object and the old one as original; delete has no original
    assert_eq!(events[2].2["room"], "b");
    assert_eq!(events[2].3.as_ref().unwrap()["room"], "a");
    assert_eq!(events[0].3, None);
    assert_eq!(events[4].3, None);
    assert_eq!(events[4].2["room"], "a");
}

#[test]
fn restricted_rows_reach_only_readers() {
    let hub = Hub::new(crate::hub::HubLimits::per_connection(10));
    let (anon, mut anon_rx) = connect(&hub, 100);
    let (master, mut master_rx) = connect(&hub, 100);
    subscribe(&hub, anon, 1, subscription(json!({}), None, None));
    let mut sub = subscription(json!({}), None, None);
    sub.identity.master = true;
    subscribe(&hub, master, 1, sub);
    let private = Some(RowImage { object: object(json!({"objectId": "1"})), acl: Some(ReadAcl::default()) });
    let public = image(json!({"objectId": "1"}));
    hub.publish(&change(ChangeKind::Insert, None, private.clone()));
    hub.publish(&change(ChangeKind::Update, private.clone(), public.clone()));
    hub.publish(&change(ChangeKind::Update, public, private));
    assert_eq!(ops(&drain(&mut anon_rx)), [EventOp::Enter, EventOp::Leave]);
    assert_eq!(ops(&drain(&mut master_rx)), [EventOp::Create, EventOp::Update, EventOp::Update]);
}

#[test]
fn identical_queries_share_one_group_and_one_payload() {
    let hub = Hub::new(crate::hub::HubLimits::per_connection(10));
    let (a, mut a_rx) = connect(&hub, 100);
    let (b, mut b_rx) = connect(&hub, 100);
    subscribe(&hub, a, 1, subscription(json!({"room": "x", "n": {"$gt": 1}}), None, None));
    subscribe(&hub, b, 5, subscription(json!({"n": {"$gt": 1}, "room": "x"}), None, None));
    assert_eq!(hub.stats(), HubStats { connections: 2, subscriptions: 2, distinct_queries: 1 });
    hub.publish(&change(ChangeKind::Insert, None, image(json!({"room": "x", "n": 2}))));
    let (Some(Outgoing::Event(da)), Some(Outgoing::Event(db))) = (last(&mut a_rx), last(&mut b_rx)) else { panic!() };
    assert_eq!(da.request_id, RequestId::from(1));
    assert_eq!(db.request_id, RequestId::from(5));
    assert!(Arc::ptr_eq(&da.payload, &db.payload), "payload encoded once");
}

fn last(rx: &mut crate::hub::Queue) -> Option<Outgoing> {
    let mut last = None;
    while let Ok(item) = rx.try_recv() {
        last = Some(item);
    }
    last
}

#[test]
fn keys_project_and_watch_suppresses() {
    let hub = Hub::new(crate::hub::HubLimits::per_connection(10));
    let (conn, mut rx) = connect(&hub, 100);
    subscribe(&hub, conn, 1, subscription(json!({}), Some(&["a"]), Some(&["w"])));
    let row = |v: Value| image(v);
    hub.publish(&change(ChangeKind::Insert, None, row(json!({"objectId": "1", "a": 1, "b": 2}))));
    hub.publish(&change(ChangeKind::Insert, None, row(json!({"objectId": "1", "a": 1, "b": 2, "w": 0}))));
    hub.publish(&change(
        ChangeKind::Update,
        row(json!({"objectId": "1", "w": 0, "a": 1})),
        row(json!({"objectId": "1", "w": 0, "a": 2})),
    ));
    hub.publish(&change(
        ChangeKind::Update,
        row(json!({"objectId": "1", "w": 0, "a": 1})),
        row(json!({"objectId": "1", "w": 1, "a": 2})),
    ));
    let events = drain(&mut rx);
    assert_eq!(ops(&events), [EventOp::Create, EventOp::Update]);
    assert_eq!(events[0].2, json!({"objectId": "1", "a": 1}));
    assert_eq!(events[1].2, json!({"objectId": "1", "a": 2}));
    assert_eq!(events[1].3, Some(json!({"objectId": "1", "a": 1})));
}

#[test]
fn a_full_queue_disconnects_only_that_client() {
    let hub = Hub::new(crate::hub::HubLimits::per_connection(10));
    let (slow, mut slow_rx) = connect(&hub, 3);
    let (fast, mut fast_rx) = connect(&hub, 100);
    subscribe(&hub, slow, 1, subscription(json!({}), None, None));
    subscribe(&hub, fast, 1, subscription(json!({}), None, None));
    for i in 0..10 {
        hub.publish(&change(ChangeKind::Insert, None, image(json!({"objectId": i.to_string()}))));
        assert_eq!(drain(&mut fast_rx).len(), 1);
    }
    let mut received = 0;
    while slow_rx.try_recv().is_ok() {
        received += 1;
    }
    assert_eq!(received, 3, "the subscribed reply and two events filled the queue");
}

#[test]
fn unsubscribe_replace_and_disconnect_leave_nothing_behind() {
    let hub = Hub::new(crate::hub::HubLimits::per_connection(2));
    let (conn, _rx) = connect(&hub, 100);
    subscribe(&hub, conn, 1, subscription(json!({"a": 1}), None, None));
    subscribe(&hub, conn, 1, subscription(json!({"a": 2}), None, None));
    assert_eq!(
        hub.stats(),
        HubStats { connections: 1, subscriptions: 1, distinct_queries: 1 },
        "reused requestId replaces"
    );
    subscribe(&hub, conn, 2, subscription(json!({"a": 3}), None, None));
    let refused = hub.subscribe(conn, RequestId::from(3), subscription(json!({}), None, None), Start::Now);
    assert_eq!(refused, Err(SubscribeError::TooManySubscriptions { limit: 2 }));
    assert!(hub.unsubscribe(conn, &RequestId::from(2)));
    assert!(!hub.unsubscribe(conn, &RequestId::from(2)));
    hub.disconnect(conn);
    assert_eq!(hub.stats(), HubStats::default());
    assert!(hub.read().shared.classes.is_empty());
}

/// The index only narrows: on random queries and changes, every subscription receives exactly
/// the events a brute-force evaluation of its query says it should.
#[test]
fn indexed_fan_out_equals_brute_force() {
    let mut rng = crate::testing::Rng::new(1);
    let mut next = move |n: u64| rng.next() % n;
    let hub = Hub::new(crate::hub::HubLimits::per_connection(10_000));
    let (conn, mut rx) = connect(&hub, 1_000_000);
    let mut queries = Vec::new();
    for id in 0..300 {
        let where_ = match next(7) {
            6 => json!({"tags.0": format!("t{}", next(5))}),
            0 => json!({"room": format!("r{}", next(20))}),
            1 => json!({"n": next(10)}),
            2 => json!({"n": {"$eq": next(10) as f64}}),
            3 => json!({"tags": format!("t{}", next(5)), "n": {"$gte": next(10)}}),
            4 => json!({"n": {"$gt": next(10)}}),
            _ => json!({"nested.room": format!("r{}", next(20))}),
        };
        subscribe(&hub, conn, id, subscription(where_.clone(), None, None));
        queries.push((id, Query::compile(&object(where_), QueryLimits::default()).unwrap()));
    }
    let random_row = |next: &mut dyn FnMut(u64) -> u64| {
        let room = format!("r{}", next(20));
        let tags: Vec<String> = (0..next(3)).map(|_| format!("t{}", next(5))).collect();
        json!({"objectId": "1", "room": room, "n": next(12), "tags": tags, "nested": {"room": room}})
    };
    let mut old = random_row(&mut next);
    for _ in 0..500 {
        let new = random_row(&mut next);
        let (o, n) = (object(old.clone()), object(new.clone()));
        let mut expected: Vec<(String, EventOp)> = queries
            .iter()
            .filter_map(|(id, q)| {
                let op = match (q.matches(&o), q.matches(&n)) {
                    (true, true) => EventOp::Update,
                    (true, false) => EventOp::Leave,
                    (false, true) => EventOp::Enter,
                    (false, false) => return None,
                };
                Some((id.to_string(), op))
            })
            .collect();
        while rx.try_recv().is_ok() {}
        hub.publish(&change(ChangeKind::Update, image(old.clone()), image(new.clone())));
        let mut got: Vec<(String, EventOp)> = drain(&mut rx).into_iter().map(|(op, id, _, _)| (id, op)).collect();
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(got, expected, "change {old} -> {new}");
        old = new;
    }
}

#[test]
fn unindexed_queries_are_budgeted_per_connection_and_in_all() {
    let limits = HubLimits { scanned_per_connection: 2, scanned_total: 3, ..HubLimits::per_connection(100) };
    let hub = Hub::new(limits);
    let (a, _a_rx) = connect(&hub, 100);
    let (b, _b_rx) = connect(&hub, 100);
    let (c, _c_rx) = connect(&hub, 100);
    let scan = |n: i64| subscription(json!({"n": {"$gt": n}}), None, None);
    let try_subscribe = |conn, id: i64, sub| hub.subscribe(conn, RequestId::from(id), sub, Start::Now).map(|_| ());
    assert_eq!(try_subscribe(a, 1, scan(1)), Ok(()));
    assert_eq!(try_subscribe(a, 2, scan(2)), Ok(()));
    assert_eq!(try_subscribe(a, 3, scan(3)), Err(SubscribeError::TooManyScannedQueries { limit: 2 }));
    assert_eq!(try_subscribe(a, 3, subscription(json!({"room": "x"}), None, None)), Ok(()), "indexed ones are free");
    assert_eq!(try_subscribe(a, 2, scan(2)), Ok(()), "replacing one keeps the count");
    // Identical queries are one evaluation: joining a held one costs nothing in all.
    assert_eq!(try_subscribe(b, 1, scan(1)), Ok(()));
    assert_eq!(try_subscribe(b, 2, scan(3)), Ok(()));
    assert_eq!(try_subscribe(c, 1, scan(4)), Err(SubscribeError::TooManyScannedQueriesInAll { limit: 3 }));
    let refusal = SubscribeError::TooManyScannedQueriesInAll { limit: 3 }.refusal().unwrap();
    assert_eq!(refusal.code, 155);
    hub.disconnect(a);
    assert_eq!(try_subscribe(c, 1, scan(4)), Ok(()), "a's scanned query n > 2 left with it");
    hub.disconnect(b);
    hub.disconnect(c);
    assert_eq!(hub.read().shared.scanned_groups, 0);
}

#[test]
fn equal_projections_share_one_payload() {
    let hub = Hub::new(HubLimits::per_connection(10));
    let (a, mut a_rx) = connect(&hub, 100);
    let (b, mut b_rx) = connect(&hub, 100);
    subscribe(&hub, a, 1, subscription(json!({}), Some(&["b", "a"]), None));
    subscribe(&hub, b, 1, subscription(json!({}), Some(&["a", "b", "a"]), None));
    assert_eq!(hub.read().shared.projections.len(), 1, "one interned list");
    let row = image(json!({"className": "Msg", "objectId": "1", "a": 1, "b": 2, "c": 3}));
    hub.publish(&change(ChangeKind::Insert, None, row));
    let payload = |rx: &mut crate::hub::Queue| match last(rx) {
        Some(Outgoing::Event(d)) => d.payload,
        other => panic!("expected an event, got {other:?}"),
    };
    let (pa, pb) = (payload(&mut a_rx), payload(&mut b_rx));
    assert!(Arc::ptr_eq(&pa, &pb), "encoded once");
    assert_eq!(
        serde_json::from_str::<Value>(&pa.object).unwrap(),
        json!({"className": "Msg", "objectId": "1", "a": 1, "b": 2})
    );
    hub.disconnect(a);
    hub.disconnect(b);
    assert!(hub.read().shared.projections.is_empty(), "a projection nobody uses is forgotten");
}

#[test]
fn regex_memory_is_budgeted_per_connection() {
    let regex = |n: usize| subscription(json!({"a": {"$regex": format!("\\w{{10}}q{n}")}}), None, None);
    let one = regex(0).query.regex_memory();
    assert!(one > 0);
    let limits = HubLimits { regex_memory_per_connection: 2 * one + one / 2, ..HubLimits::per_connection(10) };
    let hub = Hub::new(limits);
    let (conn, _rx) = connect(&hub, 100);
    let try_subscribe = |id: i64, sub| hub.subscribe(conn, RequestId::from(id), sub, Start::Now).map(|_| ());
    assert_eq!(try_subscribe(1, regex(1)), Ok(()));
    assert_eq!(try_subscribe(2, regex(2)), Ok(()));
    let refused = try_subscribe(3, regex(3)).unwrap_err();
    assert!(matches!(refused, SubscribeError::RegexMemory { .. }), "{refused:?}");
    assert!(refused.refusal().unwrap().message.contains("limits.regex_memory_per_connection"));
    assert_eq!(try_subscribe(3, subscription(json!({"a": 1}), None, None)), Ok(()), "no regex, no cost");
    assert!(hub.unsubscribe(conn, &RequestId::from(1)));
    assert_eq!(try_subscribe(4, regex(4)), Ok(()), "an unsubscribe gives its memory back");
}

#[test]
fn a_held_subscription_gets_its_events_after_subscribed_and_overflow_closes_it() {
    let hub = Hub::new(HubLimits::per_connection(10));
    let (conn, mut rx) = connect(&hub, 4);
    let row = || image(json!({"className": "Msg", "objectId": "1"}));
    let ticket = hub.reserve(conn, RequestId::from(1)).unwrap();
    let live =
        hub.subscribe(conn, RequestId::from(1), subscription(json!({}), None, None), Start::Held(ticket)).unwrap();
    hub.publish(&change(ChangeKind::Insert, None, row()));
    assert!(rx.try_recv().is_err(), "held back");
    assert_eq!(hub.release(conn, &RequestId::from(1), ticket, None), Ok(live));
    assert!(matches!(rx.try_recv(), Ok(Outgoing::Subscribed { position, .. }) if position == live));
    assert!(matches!(rx.try_recv(), Ok(Outgoing::Event(_))));
    assert_eq!(hub.release(conn, &RequestId::from(1), ticket, None), Err(SubscribeError::Cancelled), "once");
    // More than the queue could take while held: the client is too slow, closed on release.
    let ticket = hub.reserve(conn, RequestId::from(2)).unwrap();
    hub.subscribe(conn, RequestId::from(2), subscription(json!({"n": 1}), None, None), Start::Held(ticket)).unwrap();
    let n1 = || image(json!({"className": "Msg", "objectId": "2", "n": 1}));
    for _ in 0..5 {
        hub.publish(&change(ChangeKind::Insert, None, n1()));
    }
    hub.release(conn, &RequestId::from(2), ticket, None).unwrap();
    assert!(hub.read().connections[&conn].outbox.is_closed());
}
