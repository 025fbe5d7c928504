//! Catch-up against an in-memory history and the real hub: every exit of the replay.

use crate::telemetry::Transport;
use std::sync::Mutex;

use serde_json::{json, Map, Value};

use tokio::sync::Notify;

use super::*;
use crate::hub::{ChangeKind, RowImage};
use crate::query::QueryLimits;

const BATCH: usize = 2;
const MAX_REPLAY: u64 = 20;

type Hook = Box<dyn FnMut() + Send>;

/// Retained changes in memory, shared with the test: `before_read` runs once, before the next
/// read; while `gate` is set, a read waits for it to be notified.
#[derive(Clone)]
struct Changes {
    epoch: Uuid,
    floor: Arc<Mutex<i64>>,
    changes: Arc<Mutex<Vec<Change>>>,
    before_read: Arc<Mutex<Option<Hook>>>,
    /// Runs before every read.
    every_read: Arc<Mutex<Option<Hook>>>,
    gate: Option<Arc<Notify>>,
}

impl Changes {
    fn new(epoch: Uuid, upto: i64) -> Changes {
        Changes {
            epoch,
            floor: Arc::default(),
            changes: Arc::new(Mutex::new((1..=upto).map(change).collect())),
            before_read: Arc::default(),
            every_read: Arc::default(),
            gate: None,
        }
    }
}

impl HistorySource for Changes {
    fn read<'a>(&'a self, after: i64, upto: i64, class: &'a str) -> BoxFuture<'a, Result<HistoryBatch, HistoryError>> {
        Box::pin(async move {
            let hook = self.before_read.lock().unwrap().take();
            if let Some(mut hook) = hook {
                hook();
            }
            if let Some(hook) = self.every_read.lock().unwrap().as_mut() {
                hook();
            }
            if let Some(gate) = &self.gate {
                gate.notified().await;
            }
            let changes = self.changes.lock().unwrap();
            let batch: Vec<Arc<Change>> = changes
                .iter()
                .filter(|c| c.pos > after && c.pos <= upto && &*c.class == class)
                .take(BATCH)
                .cloned()
                .map(Arc::new)
                .collect();
            let reached = if batch.len() == BATCH { batch[BATCH - 1].pos } else { upto };
            Ok(HistoryBatch { epoch: self.epoch, floor: *self.floor.lock().unwrap(), changes: batch, reached })
        })
    }
}

fn change(pos: i64) -> Change {
    let object: Map<String, Value> =
        json!({"className": "Msg", "objectId": pos.to_string(), "n": pos}).as_object().cloned().unwrap();
    Change {
        pos,
        class: "Msg".into(),
        kind: ChangeKind::Insert,
        old: None,
        new: Some(RowImage { object, acl: None }),
        captured_us: 0,
    }
}

struct Client {
    hub: Arc<Hub>,
    catchup: Arc<Catchup>,
    connection: ConnectionId,
    outbox: Outbox,
    rx: crate::hub::Queue,
}

/// A hub standing at `live` in `epoch`, one connection, and catch-up over `history`.
fn client(epoch: Uuid, live: i64, history: Changes) -> Client {
    let hub = Arc::new(Hub::new(crate::hub::HubLimits::per_connection(10)));
    hub.start_epoch(Position::new(epoch, live));
    let (outbox, rx) = Outbox::new(crate::hub::QueueBudget::frames(64));
    let connection = hub.register(outbox.clone(), Transport::WebSocket);
    let rows = Arc::new(crate::testing::Rows { hub: hub.clone(), rows: Mutex::new(Vec::new()) });
    let catchup = Arc::new(Catchup::new(hub.clone(), Arc::new(history), MAX_REPLAY, rows, 10));
    Client { hub, catchup, connection, outbox, rx }
}

impl Client {
    fn resume(&self, since: Position, where_: Value) -> AbortHandle {
        let mut subscription =
            Subscription::new("Msg", where_.as_object().unwrap(), QueryLimits::default(), None, None).unwrap();
        subscription.positions = true;
        let resume = Resume {
            skip: Vec::new(),
            resnapshot: None,
            connection: self.connection,
            request_id: RequestId::from(1),
            subscription,
            since,
            outbox: self.outbox.clone(),
        };
        self.catchup.start(resume).unwrap()
    }

    /// Everything queued until the subscription went live (or was refused), one line each.
    async fn until_settled(&mut self) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let item = tokio::time::timeout(Duration::from_secs(5), self.rx.recv()).await.expect("settles").unwrap();
            let (line, last) = match item {
                Outgoing::Event(d) => (format!("{} {}", d.op.as_str(), d.payload.position.offset), false),
                Outgoing::Gap { gap, position, .. } => (format!("gap {} {}", gap.as_str(), position.offset), false),
                Outgoing::Subscribed { position, .. } => (format!("subscribed {}", position.offset), true),
                Outgoing::Refused { refusal, .. } => (format!("refused {}", refusal.code), true),
                Outgoing::Text(text) => (text, false),
                Outgoing::Result { objects, .. } => (format!("result {}", objects.len()), false),
            };
            seen.push(line);
            if last {
                return seen;
            }
        }
    }
}

#[tokio::test]
async fn replays_what_matches_then_goes_live_where_it_stopped() {
    let epoch = Uuid::new_v4();
    let mut client = client(epoch, 5, Changes::new(epoch, 5));
    client.resume(Position::new(epoch, 1), json!({"n": {"$ne": 4}}));
    let seen = client.until_settled().await;
    assert_eq!(seen, ["create 2", "create 3", "create 5", "subscribed 5"]);
    client.hub.publish(&change(6));
    assert!(matches!(client.rx.try_recv(), Ok(Outgoing::Event(d)) if d.payload.position.offset == 6));
}

#[tokio::test]
async fn a_hub_that_moved_on_during_the_replay_is_caught_up_with() {
    let epoch = Uuid::new_v4();
    let history = Changes::new(epoch, 5);
    let mut client = client(epoch, 5, history.clone());
    // Change 6 is committed and fanned out while the first batch is read: the reserved
    // subscription does not get it live, so the replay must, before going live at 6.
    let (hub, changes) = (client.hub.clone(), history.changes.clone());
    *history.before_read.lock().unwrap() = Some(Box::new(move || {
        changes.lock().unwrap().push(change(6));
        hub.publish(&change(6));
    }));
    client.resume(Position::new(epoch, 0), json!({}));
    let seen = client.until_settled().await;
    assert_eq!(seen, ["create 1", "create 2", "create 3", "create 4", "create 5", "create 6", "subscribed 6"]);
    assert_eq!(client.hub.stats().subscriptions, 1);
}

#[tokio::test]
async fn a_pruned_position_gets_an_expired_gap_and_goes_live_now() {
    let epoch = Uuid::new_v4();
    let history = Changes::new(epoch, 5);
    *history.floor.lock().unwrap() = 3;
    let mut client = client(epoch, 5, history);
    client.resume(Position::new(epoch, 2), json!({}));
    assert_eq!(client.until_settled().await, ["gap expired 5", "subscribed 5"]);
}

#[tokio::test]
async fn a_position_of_another_epoch_gets_a_reset_gap() {
    let (old, current) = (Uuid::new_v4(), Uuid::new_v4());
    let mut client = client(current, 5, Changes::new(current, 5));
    client.resume(Position::new(old, 2), json!({}));
    assert_eq!(client.until_settled().await, ["gap reset 5", "subscribed 5"]);
}

#[tokio::test]
async fn history_rewritten_under_the_replay_gets_a_reset_gap() {
    let epoch = Uuid::new_v4();
    // The hub still stands in the client's epoch, but the change table already started another.
    let mut client = client(epoch, 5, Changes::new(Uuid::new_v4(), 5));
    client.resume(Position::new(epoch, 2), json!({}));
    assert_eq!(client.until_settled().await, ["gap reset 5", "subscribed 5"]);
}

#[tokio::test]
async fn a_position_ahead_is_waited_for_then_reset() {
    let epoch = Uuid::new_v4();
    let mut client = client(epoch, 5, Changes::new(epoch, 5));
    let started = tokio::time::Instant::now();
    client.resume(Position::new(epoch, 9), json!({}));
    assert_eq!(client.until_settled().await, ["gap reset 5", "subscribed 5"]);
    assert!(started.elapsed() >= AHEAD_GRACE, "gave up after {:?}", started.elapsed());
}

#[tokio::test]
async fn a_position_slightly_ahead_that_the_hub_reaches_resumes_without_a_gap() {
    let epoch = Uuid::new_v4();
    let history = Changes::new(epoch, 7);
    let mut client = client(epoch, 5, history);
    client.resume(Position::new(epoch, 6), json!({}));
    tokio::time::sleep(Duration::from_millis(100)).await;
    client.hub.publish(&change(6));
    client.hub.publish(&change(7));
    assert_eq!(client.until_settled().await, ["create 7", "subscribed 7"]);
}

#[tokio::test]
async fn an_unsubscribe_during_the_replay_is_final() {
    let epoch = Uuid::new_v4();
    let mut history = Changes::new(epoch, 5);
    let gate = Arc::new(Notify::new());
    history.gate = Some(gate.clone());
    let mut client = client(epoch, 5, history);
    let task = client.resume(Position::new(epoch, 0), json!({}));
    assert!(client.hub.unsubscribe(client.connection, &RequestId::from(1)), "the reservation is held");
    for _ in 0..10 {
        gate.notify_one();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while !task.is_finished() {
        gate.notify_one();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut seen = Vec::new();
    while let Ok(item) = client.rx.try_recv() {
        seen.push(item);
    }
    assert!(seen.iter().all(|item| matches!(item, Outgoing::Event(_))), "never confirmed or refused: {seen:?}");
    assert_eq!(client.hub.stats().subscriptions, 0);
}

#[tokio::test]
async fn a_client_that_leaves_ends_the_replay() {
    let epoch = Uuid::new_v4();
    let client = client(epoch, 5, Changes::new(epoch, 5));
    let Client { hub, catchup, connection, outbox, rx } = client;
    let replaying = Client { hub: hub.clone(), catchup, connection, outbox, rx };
    let task = replaying.resume(Position::new(epoch, 0), json!({}));
    drop(replaying);
    tokio::time::timeout(Duration::from_secs(5), async {
        while !task.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the replay stops");
    assert_eq!(hub.stats().subscriptions, 0);
}

#[tokio::test]
async fn a_resume_further_behind_than_the_replay_limit_gets_an_expired_gap() {
    let epoch = Uuid::new_v4();
    let mut client = client(epoch, 30, Changes::new(epoch, 30));
    client.resume(Position::new(epoch, 9), json!({}));
    assert_eq!(client.until_settled().await, ["gap expired 30", "subscribed 30"]);
    // At the limit, the replay happens.
    client.resume(Position::new(epoch, 10), json!({"n": {"$gt": 28}}));
    assert_eq!(client.until_settled().await, ["create 29", "create 30", "subscribed 30"]);
}

#[tokio::test]
async fn a_replay_converges_while_changes_keep_coming() {
    let epoch = Uuid::new_v4();
    let history = Changes::new(epoch, 5);
    let mut client = client(epoch, 5, history.clone());
    // A change is committed and fanned out during every read of history.
    let (hub, changes) = (client.hub.clone(), history.changes.clone());
    let mut next = 6;
    *history.every_read.lock().unwrap() = Some(Box::new(move || {
        changes.lock().unwrap().push(change(next));
        hub.publish(&change(next));
        next += 1;
    }));
    client.resume(Position::new(epoch, 0), json!({}));
    let seen = client.until_settled().await;
    let live_at: i64 = seen.last().unwrap().strip_prefix("subscribed ").unwrap().parse().unwrap();
    let replayed: Vec<String> = (1..=live_at).map(|p| format!("create {p}")).collect();
    assert_eq!(seen[..seen.len() - 1], replayed[..], "every change up to where it went live, once, in order");
    // What was published while it finished was held, and follows `subscribed` in order.
    *history.every_read.lock().unwrap() = None;
    let mut held = Vec::new();
    while let Ok(Outgoing::Event(d)) = client.rx.try_recv() {
        held.push(d.payload.position.offset);
    }
    let head = client.hub.position().offset;
    assert_eq!(held, ((live_at + 1)..=head).collect::<Vec<_>>(), "then every later change, once");
    client.hub.publish(&change(head + 1));
    assert!(matches!(client.rx.try_recv(), Ok(Outgoing::Event(d)) if d.payload.position.offset == head + 1));
}
