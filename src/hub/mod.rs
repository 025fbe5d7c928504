//! The subscription hub shared by every transport: subscriptions grouped by class and by
//! identical query (canonical `where`), one evaluation of each distinct query per change, the
//! Parse decision table per subscriber, and the payload encoded once per change and projection.
//!
//! The hub never waits on a client: delivery is a non-blocking push into the connection's
//! bounded [`Outbox`]. All state sits behind one lock; fan-out takes it shared, subscription
//! changes exclusively and briefly.

mod index;
mod outbox;

pub use index::IndexEntry;
pub use outbox::{Delivery, Outbox, Outgoing};

use index::QueryIndex;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde_json::{Map, Value};

use crate::auth::{can_read, Identity, ReadAcl};
use crate::protocol::{EventOp, RequestId};
use crate::query::Query;

pub type ConnectionId = u64;

/// One committed change, as the feed hands it over: row images already in Parse form.
#[derive(Debug, Clone)]
pub struct Change {
    /// Stream position (commit order).
    pub pos: i64,
    pub class: Arc<str>,
    pub kind: ChangeKind,
    pub old: Option<RowImage>,
    pub new: Option<RowImage>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Insert,
    Update,
    Delete,
}

/// A row as a Parse object, plus who may read it (`None`: public).
#[derive(Debug, Clone)]
pub struct RowImage {
    pub object: Map<String, Value>,
    pub acl: Option<ReadAcl>,
}

/// An encoded event body shared by every recipient with the same projection.
#[derive(Debug)]
pub struct Payload {
    pub pos: i64,
    pub object: String,
    pub original: Option<String>,
}

/// A subscription as the hub needs it.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub class: Arc<str>,
    /// Canonical dedupe key (see [`crate::query::canonical_key`]).
    pub key: String,
    pub query: Arc<Query>,
    /// Where the query is filed in the class's equality index (see [`IndexEntry::of`]).
    pub index: Option<IndexEntry>,
    pub keys: Option<Arc<[String]>>,
    pub watch: Option<Arc<[String]>>,
    pub identity: Identity,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeError {
    UnknownConnection,
    TooManySubscriptions { limit: usize },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubStats {
    pub connections: usize,
    pub subscriptions: usize,
    pub distinct_queries: usize,
}

struct Member {
    outbox: Outbox,
    keys: Option<Arc<[String]>>,
    watch: Option<Arc<[String]>>,
    identity: Identity,
}

struct Group {
    query: Arc<Query>,
    index: Option<IndexEntry>,
    members: HashMap<(ConnectionId, RequestId), Member>,
}

/// The distinct queries of one class, by canonical key, and their index.
#[derive(Default)]
struct ClassQueries {
    groups: HashMap<String, Group>,
    index: QueryIndex,
}

struct Connection {
    outbox: Outbox,
    /// requestId → (class, query key), to find the group again.
    subscriptions: HashMap<RequestId, (Arc<str>, String)>,
}

#[derive(Default)]
struct State {
    classes: HashMap<Arc<str>, ClassQueries>,
    connections: HashMap<ConnectionId, Connection>,
}

pub struct Hub {
    state: RwLock<State>,
    next_connection: AtomicU64,
    subscriptions_per_connection: usize,
}

impl Hub {
    pub fn new(subscriptions_per_connection: usize) -> Hub {
        Hub { state: RwLock::default(), next_connection: AtomicU64::new(1), subscriptions_per_connection }
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than refusing service would, so poisoning is ignored.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn register(&self, outbox: Outbox) -> ConnectionId {
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        self.write().connections.insert(id, Connection { outbox, subscriptions: HashMap::new() });
        id
    }

    /// Adds (or replaces, for a reused requestId) a subscription, then queues `confirmation`
    /// while still holding the lock, so it precedes every event of the subscription.
    pub fn subscribe(
        &self,
        connection: ConnectionId,
        request_id: RequestId,
        subscription: Subscription,
        confirmation: Outgoing,
    ) -> Result<(), SubscribeError> {
        let mut state = self.write();
        let state = &mut *state;
        let conn = state.connections.get_mut(&connection).ok_or(SubscribeError::UnknownConnection)?;
        if let Some((class, key)) = conn.subscriptions.remove(&request_id) {
            remove_member(&mut state.classes, &class, &key, connection, &request_id);
        }
        if conn.subscriptions.len() >= self.subscriptions_per_connection {
            return Err(SubscribeError::TooManySubscriptions { limit: self.subscriptions_per_connection });
        }
        let outbox = conn.outbox.clone();
        conn.subscriptions.insert(request_id.clone(), (subscription.class.clone(), subscription.key.clone()));
        let class = state.classes.entry(subscription.class).or_default();
        let group = match class.groups.entry(subscription.key) {
            std::collections::hash_map::Entry::Occupied(group) => group.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => {
                class.index.insert(slot.key(), subscription.index.as_ref());
                slot.insert(Group { query: subscription.query, index: subscription.index, members: HashMap::new() })
            }
        };
        let member = Member {
            outbox: outbox.clone(),
            keys: subscription.keys,
            watch: subscription.watch,
            identity: subscription.identity,
        };
        group.members.insert((connection, request_id), member);
        outbox.push(confirmation);
        Ok(())
    }

    /// Removes one subscription; false when the connection has no such requestId.
    pub fn unsubscribe(&self, connection: ConnectionId, request_id: &RequestId) -> bool {
        let mut state = self.write();
        let state = &mut *state;
        let Some((class, key)) =
            state.connections.get_mut(&connection).and_then(|c| c.subscriptions.remove(request_id))
        else {
            return false;
        };
        remove_member(&mut state.classes, &class, &key, connection, request_id);
        true
    }

    /// Removes every subscription of a connection but keeps it registered.
    pub fn unsubscribe_all(&self, connection: ConnectionId) {
        let mut state = self.write();
        let state = &mut *state;
        let Some(conn) = state.connections.get_mut(&connection) else { return };
        for (request_id, (class, key)) in conn.subscriptions.drain() {
            remove_member(&mut state.classes, &class, &key, connection, &request_id);
        }
    }

    /// Forgets a connection and everything it subscribed to.
    pub fn disconnect(&self, connection: ConnectionId) {
        self.unsubscribe_all(connection);
        self.write().connections.remove(&connection);
    }

    pub fn stats(&self) -> HubStats {
        let state = self.read();
        let groups = state.classes.values().flat_map(|c| c.groups.values());
        HubStats {
            connections: state.connections.len(),
            subscriptions: groups.clone().map(|g| g.members.len()).sum(),
            distinct_queries: groups.count(),
        }
    }

    /// Fans one change out to every subscriber it concerns.
    pub fn publish(&self, change: &Change) {
        let state = self.read();
        let Some(class) = state.classes.get(&change.class) else { return };
        let images: Vec<&Map<String, Value>> = change.old.iter().chain(&change.new).map(|i| &i.object).collect();
        let mut payloads = PayloadCache::new(change);
        for key in class.index.candidates(&images) {
            let Some(group) = class.groups.get(key) else { continue };
            let old_matches = change.old.as_ref().is_some_and(|o| group.query.matches(&o.object));
            let new_matches = change.new.as_ref().is_some_and(|n| group.query.matches(&n.object));
            if !old_matches && !new_matches {
                continue;
            }
            for ((_, request_id), member) in &group.members {
                if member.outbox.is_closed() {
                    continue;
                }
                let old_visible =
                    old_matches && change.old.as_ref().is_some_and(|o| can_read(o.acl.as_ref(), &member.identity));
                let new_visible =
                    new_matches && change.new.as_ref().is_some_and(|n| can_read(n.acl.as_ref(), &member.identity));
                let Some(op) = decide(change.kind, old_visible, new_visible) else { continue };
                if matches!(op, EventOp::Create | EventOp::Update)
                    && !watched_field_changed(member.watch.as_deref(), change)
                {
                    continue;
                }
                let payload = payloads.get(op, member.keys.as_ref());
                member.outbox.push(Outgoing::Event(Delivery { op, request_id: request_id.clone(), payload }));
            }
        }
    }
}

fn remove_member(
    classes: &mut HashMap<Arc<str>, ClassQueries>,
    class: &Arc<str>,
    key: &str,
    connection: ConnectionId,
    request_id: &RequestId,
) {
    let Some(queries) = classes.get_mut(class) else { return };
    if let Some(group) = queries.groups.get_mut(key) {
        group.members.remove(&(connection, request_id.clone()));
        if group.members.is_empty() {
            queries.index.remove(key, group.index.as_ref());
            queries.groups.remove(key);
        }
    }
    if queries.groups.is_empty() {
        classes.remove(class);
    }
}

/// Parse's decision table (§3.2), with readability already folded into "matches".
fn decide(kind: ChangeKind, old_visible: bool, new_visible: bool) -> Option<EventOp> {
    match kind {
        ChangeKind::Delete => old_visible.then_some(EventOp::Delete),
        ChangeKind::Insert => new_visible.then_some(EventOp::Create),
        ChangeKind::Update => match (old_visible, new_visible) {
            (true, true) => Some(EventOp::Update),
            (true, false) => Some(EventOp::Leave),
            (false, true) => Some(EventOp::Enter),
            (false, false) => None,
        },
    }
}

/// `watch`: a create or update is sent only when a watched field differs from the original
/// (a create compares with nothing, so it needs a watched field to be set). A NULL column is
/// an unset field, as in Parse.
fn watched_field_changed(watch: Option<&[String]>, change: &Change) -> bool {
    let Some(watch) = watch else { return true };
    let Some(new) = &change.new else { return true };
    watch.iter().any(|name| set_field(Some(new), name) != set_field(change.old.as_ref(), name))
}

fn set_field<'a>(image: Option<&'a RowImage>, name: &str) -> Option<&'a Value> {
    image.and_then(|i| i.object.get(name)).filter(|v| !v.is_null())
}

/// Fields every projection keeps (Parse's `_toJSONWithFields`).
const ALWAYS_SENT: [&str; 5] = ["className", "objectId", "createdAt", "updatedAt", "ACL"];

fn encode(object: &Map<String, Value>, keys: Option<&Arc<[String]>>) -> String {
    let result = match keys {
        None => serde_json::to_string(object),
        Some(keys) => {
            let projected: Map<String, Value> = object
                .iter()
                .filter(|(k, _)| ALWAYS_SENT.contains(&k.as_str()) || keys.iter().any(|key| key == *k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            serde_json::to_string(&projected)
        }
    };
    // A map of JSON values always serialises; an empty object is the harmless fallback.
    result.unwrap_or_else(|_| "{}".into())
}

/// A subscription's `keys`: `None` sends whole objects.
type Projection = Option<Arc<[String]>>;

/// Payloads of one change, encoded on first use and shared by every subscriber with the same
/// event shape and projection.
struct PayloadCache<'a> {
    change: &'a Change,
    entries: Vec<(EventOp, Projection, Arc<Payload>)>,
}

impl<'a> PayloadCache<'a> {
    fn new(change: &'a Change) -> Self {
        PayloadCache { change, entries: Vec::new() }
    }

    fn get(&mut self, op: EventOp, keys: Option<&Arc<[String]>>) -> Arc<Payload> {
        let same_keys = |k: &Projection| match (k, keys) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
            _ => false,
        };
        if let Some((_, _, payload)) = self.entries.iter().find(|(o, k, _)| *o == op && same_keys(k)) {
            return payload.clone();
        }
        let (object, original) = match op {
            EventOp::Create => (self.change.new.as_ref(), None),
            EventOp::Delete => (self.change.old.as_ref(), None),
            EventOp::Enter | EventOp::Update | EventOp::Leave => (self.change.new.as_ref(), self.change.old.as_ref()),
        };
        let payload = Arc::new(Payload {
            pos: self.change.pos,
            object: object.map(|o| encode(&o.object, keys)).unwrap_or_else(|| "{}".into()),
            original: original.map(|o| encode(&o.object, keys)),
        });
        self.entries.push((op, keys.cloned(), payload.clone()));
        payload
    }
}

#[cfg(test)]
mod tests;
