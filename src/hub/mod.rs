//! The subscription hub shared by every transport: subscriptions grouped by class and by
//! identical query (canonical `where`), one evaluation of each distinct query per change, the
//! Parse decision table per subscriber, and the payload encoded once per change and projection.
//!
//! The hub never waits on a client: delivery is a non-blocking push into the connection's
//! bounded [`Outbox`]. All state sits behind one lock; fan-out takes it shared, subscription
//! changes exclusively and briefly.
//!
//! The hub also knows the stream [`Position`] it has published up to. A subscription is
//! registered at a known position, atomically with respect to fan-out: everything after it is
//! delivered live, so a catch-up that replays history up to that position leaves no gap and no
//! duplicate (see [`crate::catchup`]).

mod index;
mod outbox;

pub use index::IndexEntry;
pub use outbox::{Delivery, Outbox, Outgoing};

use index::QueryIndex;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde_json::{Map, Value};

use uuid::Uuid;

use crate::auth::{can_read, Identity, ReadAcl};
use crate::position::{Gap, Position};
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
    pub position: Position,
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
    /// Fields never sent to this subscriber (class rules' protected fields for non-master).
    pub hidden: Option<Arc<[String]>>,
    /// The client tracks positions: its events carry them and it is told about gaps.
    pub positions: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeError {
    UnknownConnection,
    TooManySubscriptions {
        limit: usize,
    },
    /// The hub has published past the requested position; catch up to this one and retry.
    Moved(Position),
    /// The reservation is gone: the client unsubscribed (or reconnected) while catching up.
    Cancelled,
}

/// Where a new subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Live from the current position.
    Now,
    /// Live from the current position, taking up the [`Hub::reserve`]d requestId.
    Reserved(Reservation),
    /// Taking up the reserved requestId, only if the hub stands exactly at this position.
    At(Position, Reservation),
}

/// A ticket for one reservation, so that a stale catch-up for a reused requestId can never take
/// up a newer reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation(u64);

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
    hidden: Option<Arc<[String]>>,
    positions: bool,
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
    /// requestIds reserved by subscriptions that are still catching up.
    reserved: HashMap<RequestId, Reservation>,
}

#[derive(Default)]
struct State {
    classes: HashMap<Arc<str>, ClassQueries>,
    connections: HashMap<ConnectionId, Connection>,
    epoch: Uuid,
}

pub struct Hub {
    state: RwLock<State>,
    /// Offset of the last change fanned out; only moves while the state is read-locked by
    /// `publish`, so a write-lock holder sees it steady.
    published: AtomicI64,
    next_connection: AtomicU64,
    subscriptions_per_connection: usize,
}

impl Hub {
    pub fn new(subscriptions_per_connection: usize) -> Hub {
        Hub {
            state: RwLock::default(),
            published: AtomicI64::new(0),
            next_connection: AtomicU64::new(1),
            subscriptions_per_connection,
        }
    }

    /// Where the live stream stands: the last change fanned out.
    pub fn position(&self) -> Position {
        let state = self.read();
        Position::new(state.epoch, self.published.load(Ordering::Acquire))
    }

    /// Sets the stream position the feed continues from. When the epoch changes (history was
    /// lost) every subscriber that tracks positions is told, at the new position.
    pub fn start_epoch(&self, at: Position) {
        let mut state = self.write();
        let changed = state.epoch != at.epoch && !state.epoch.is_nil();
        state.epoch = at.epoch;
        self.published.store(at.offset, Ordering::Release);
        if !changed {
            return;
        }
        for group in state.classes.values().flat_map(|c| c.groups.values()) {
            for ((_, request_id), member) in group.members.iter().filter(|(_, m)| m.positions) {
                member.outbox.push(Outgoing::Gap { request_id: request_id.clone(), gap: Gap::Reset, position: at });
            }
        }
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
        let connection = Connection { outbox, subscriptions: HashMap::new(), reserved: Default::default() };
        self.write().connections.insert(id, connection);
        id
    }

    /// Holds a requestId for a subscription that first catches up on history: it counts
    /// against the connection's limit, replaces any subscription with that id, and can be
    /// cancelled by [`Hub::unsubscribe`] until the subscription goes live.
    pub fn reserve(&self, connection: ConnectionId, request_id: RequestId) -> Result<Reservation, SubscribeError> {
        let mut state = self.write();
        let state = &mut *state;
        let conn = state.connections.get_mut(&connection).ok_or(SubscribeError::UnknownConnection)?;
        if let Some((class, key)) = conn.subscriptions.remove(&request_id) {
            remove_member(&mut state.classes, &class, &key, connection, &request_id);
        }
        conn.reserved.remove(&request_id);
        if conn.subscriptions.len() + conn.reserved.len() >= self.subscriptions_per_connection {
            return Err(SubscribeError::TooManySubscriptions { limit: self.subscriptions_per_connection });
        }
        let ticket = Reservation(self.next_connection.fetch_add(1, Ordering::Relaxed));
        conn.reserved.insert(request_id, ticket);
        Ok(ticket)
    }

    /// Adds (or replaces, for a reused requestId) a subscription, then queues its confirmation
    /// while still holding the lock, so the confirmation precedes every event of the
    /// subscription. Returns the position it went live at: every change after it is delivered.
    pub fn subscribe(
        &self,
        connection: ConnectionId,
        request_id: RequestId,
        subscription: Subscription,
        start: Start,
        confirmation: impl FnOnce(Position) -> Outgoing,
    ) -> Result<Position, SubscribeError> {
        let mut state = self.write();
        let state = &mut *state;
        let live = Position::new(state.epoch, self.published.load(Ordering::Acquire));
        let conn = state.connections.get_mut(&connection).ok_or(SubscribeError::UnknownConnection)?;
        match start {
            Start::Now => {}
            Start::Reserved(ticket) | Start::At(_, ticket) if conn.reserved.get(&request_id) != Some(&ticket) => {
                return Err(SubscribeError::Cancelled)
            }
            Start::At(at, _) if at != live => return Err(SubscribeError::Moved(live)),
            Start::Reserved(_) | Start::At(..) => {
                conn.reserved.remove(&request_id);
            }
        }
        if let Some((class, key)) = conn.subscriptions.remove(&request_id) {
            remove_member(&mut state.classes, &class, &key, connection, &request_id);
        }
        conn.reserved.remove(&request_id);
        if conn.subscriptions.len() + conn.reserved.len() >= self.subscriptions_per_connection {
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
            hidden: subscription.hidden,
            positions: subscription.positions,
        };
        group.members.insert((connection, request_id), member);
        outbox.push(confirmation(live));
        Ok(live)
    }

    /// Removes one subscription (or cancels its reservation); false when the connection has no
    /// such requestId.
    pub fn unsubscribe(&self, connection: ConnectionId, request_id: &RequestId) -> bool {
        let mut state = self.write();
        let state = &mut *state;
        let Some(conn) = state.connections.get_mut(&connection) else { return false };
        if conn.reserved.remove(request_id).is_some() {
            return true;
        }
        let Some((class, key)) = conn.subscriptions.remove(request_id) else { return false };
        remove_member(&mut state.classes, &class, &key, connection, request_id);
        true
    }

    /// Removes one live subscription because its identity is no longer valid, and returns the
    /// position it stopped at: it received every change up to there and nothing after, so a
    /// resume from it (with a fresh identity) loses nothing.
    pub fn suspend(&self, connection: ConnectionId, request_id: &RequestId) -> Option<Position> {
        let mut state = self.write();
        let state = &mut *state;
        let stopped = Position::new(state.epoch, self.published.load(Ordering::Acquire));
        let (class, key) = state.connections.get_mut(&connection)?.subscriptions.remove(request_id)?;
        remove_member(&mut state.classes, &class, &key, connection, request_id);
        Some(stopped)
    }

    /// Replaces the identity a live subscription is evaluated with (its token was re-checked and
    /// now says something else, e.g. other roles). False when there is no such subscription.
    pub fn set_identity(&self, connection: ConnectionId, request_id: &RequestId, identity: Identity) -> bool {
        let mut state = self.write();
        let state = &mut *state;
        let Some((class, key)) = state.connections.get(&connection).and_then(|c| c.subscriptions.get(request_id))
        else {
            return false;
        };
        let member = state
            .classes
            .get_mut(class)
            .and_then(|c| c.groups.get_mut(key))
            .and_then(|g| g.members.get_mut(&(connection, request_id.clone())));
        match member {
            Some(member) => {
                member.identity = identity;
                true
            }
            None => false,
        }
    }

    /// Removes every subscription of a connection but keeps it registered.
    pub fn unsubscribe_all(&self, connection: ConnectionId) {
        let mut state = self.write();
        let state = &mut *state;
        let Some(conn) = state.connections.get_mut(&connection) else { return };
        conn.reserved.clear();
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
        if let Some(class) = state.classes.get(&change.class) {
            let images: Vec<&Map<String, Value>> = change.old.iter().chain(&change.new).map(|i| &i.object).collect();
            let mut payloads = PayloadCache::new(change, Position::new(state.epoch, change.pos));
            for key in class.index.candidates(&images) {
                let Some(group) = class.groups.get(key) else { continue };
                let matches = Matches::of(&group.query, change);
                if !matches.any() {
                    continue;
                }
                for ((_, request_id), member) in &group.members {
                    if member.outbox.is_closed() {
                        continue;
                    }
                    let Some(shape) = shape(change, matches, &member.identity, member.watch.as_deref()) else {
                        continue;
                    };
                    let payload = payloads.get(shape, member.keys.as_ref(), member.hidden.as_ref());
                    member.outbox.push(Outgoing::Event(Delivery {
                        op: shape.op(),
                        request_id: request_id.clone(),
                        payload,
                        positioned: member.positions,
                    }));
                }
            }
        }
        // Still under the read lock: a subscriber registering at this position sees every
        // change up to it already fanned out, and none after it.
        self.published.store(change.pos, Ordering::Release);
    }
}

/// The event one historical change makes for one subscription, as live fan-out would have made
/// it (used to replay missed changes).
pub fn replay(subscription: &Subscription, request_id: &RequestId, change: &Change, epoch: Uuid) -> Option<Delivery> {
    if change.class != subscription.class {
        return None;
    }
    let matches = Matches::of(&subscription.query, change);
    if !matches.any() {
        return None;
    }
    let shape = shape(change, matches, &subscription.identity, subscription.watch.as_deref())?;
    let payload = PayloadCache::new(change, Position::new(epoch, change.pos)).get(
        shape,
        subscription.keys.as_ref(),
        subscription.hidden.as_ref(),
    );
    Some(Delivery { op: shape.op(), request_id: request_id.clone(), payload, positioned: subscription.positions })
}

/// Whether a query matches the old and the new image of a change.
#[derive(Debug, Clone, Copy)]
struct Matches {
    old: bool,
    new: bool,
}

impl Matches {
    fn of(query: &Query, change: &Change) -> Matches {
        Matches {
            old: change.old.as_ref().is_some_and(|o| query.matches(&o.object)),
            new: change.new.as_ref().is_some_and(|n| query.matches(&n.object)),
        }
    }

    fn any(self) -> bool {
        self.old || self.new
    }
}

/// The event a subscriber gets, finer than the wire op: Parse 2026 sends a different body when
/// read access (not the query) decided an enter or a leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Create,
    Update,
    Delete,
    Enter,
    Leave,
    /// Entered from a state the subscriber could not read: no `original`.
    EnterGranted,
    /// Left into a state the subscriber cannot read: `object` is the last state it could.
    LeaveRevoked,
}

impl Shape {
    fn op(self) -> EventOp {
        match self {
            Shape::Create => EventOp::Create,
            Shape::Update => EventOp::Update,
            Shape::Delete => EventOp::Delete,
            Shape::Enter | Shape::EnterGranted => EventOp::Enter,
            Shape::Leave | Shape::LeaveRevoked => EventOp::Leave,
        }
    }
}

/// Parse's decision table (§3.2) for one subscriber: an image is visible when it matches the
/// query and the subscriber may read it; `watch` filters creates and updates.
fn shape(change: &Change, matches: Matches, identity: &Identity, watch: Option<&[String]>) -> Option<Shape> {
    let readable = |image: &Option<RowImage>| image.as_ref().is_some_and(|i| can_read(i.acl.as_ref(), identity));
    let (old_readable, new_readable) = (readable(&change.old), readable(&change.new));
    let old_visible = matches.old && old_readable;
    let new_visible = matches.new && new_readable;
    let shape = match change.kind {
        ChangeKind::Delete => old_visible.then_some(Shape::Delete)?,
        ChangeKind::Insert => new_visible.then_some(Shape::Create)?,
        ChangeKind::Update => match (old_visible, new_visible) {
            (true, true) => Shape::Update,
            // A state the subscriber may not read is never sent, whether the query or the ACL
            // decided the leave or enter: a leave then shows the last readable state, an enter
            // comes without original.
            (true, false) if !new_readable => Shape::LeaveRevoked,
            (true, false) => Shape::Leave,
            (false, true) if !old_readable => Shape::EnterGranted,
            (false, true) => Shape::Enter,
            (false, false) => return None,
        },
    };
    if matches!(shape, Shape::Create | Shape::Update) && !watched_field_changed(watch, change) {
        return None;
    }
    Some(shape)
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

fn encode(object: &Map<String, Value>, keys: Option<&Arc<[String]>>, hidden: Option<&Arc<[String]>>) -> String {
    let result = match (keys, hidden) {
        (None, None) => serde_json::to_string(object),
        _ => {
            let shown = |k: &str| {
                let selected = keys.is_none_or(|keys| ALWAYS_SENT.contains(&k) || keys.iter().any(|key| key == k));
                selected && !hidden.is_some_and(|hidden| hidden.iter().any(|h| h == k))
            };
            let projected: Map<String, Value> =
                object.iter().filter(|(k, _)| shown(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
            serde_json::to_string(&projected)
        }
    };
    // A map of JSON values always serialises; an empty object is the harmless fallback.
    result.unwrap_or_else(|_| "{}".into())
}

/// A subscription's `keys` (`None` sends whole objects) and its hidden fields.
type Projection = (Option<Arc<[String]>>, Option<Arc<[String]>>);

/// Payloads of one change, encoded on first use and shared by every subscriber with the same
/// event shape and projection.
struct PayloadCache<'a> {
    change: &'a Change,
    position: Position,
    entries: Vec<(Shape, Projection, Arc<Payload>)>,
}

impl<'a> PayloadCache<'a> {
    fn new(change: &'a Change, position: Position) -> Self {
        PayloadCache { change, position, entries: Vec::new() }
    }

    fn get(&mut self, shape: Shape, keys: Option<&Arc<[String]>>, hidden: Option<&Arc<[String]>>) -> Arc<Payload> {
        let same = |a: &Option<Arc<[String]>>, b: Option<&Arc<[String]>>| match (a, b) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
            _ => false,
        };
        let same_projection = |(k, h): &Projection| same(k, keys) && same(h, hidden);
        if let Some((_, _, payload)) = self.entries.iter().find(|(s, p, _)| *s == shape && same_projection(p)) {
            return payload.clone();
        }
        let (old, new) = (self.change.old.as_ref(), self.change.new.as_ref());
        let (object, original) = match shape {
            Shape::Create => (new, None),
            Shape::Delete => (old, None),
            Shape::EnterGranted => (new, None),
            Shape::LeaveRevoked => (old, old),
            Shape::Enter | Shape::Update | Shape::Leave => (new, old),
        };
        let payload = Arc::new(Payload {
            position: self.position,
            object: object.map(|o| encode(&o.object, keys, hidden)).unwrap_or_else(|| "{}".into()),
            original: original.map(|o| encode(&o.object, keys, hidden)),
        });
        self.entries.push((shape, (keys.cloned(), hidden.cloned()), payload.clone()));
        payload
    }
}

#[cfg(test)]
mod tests;
