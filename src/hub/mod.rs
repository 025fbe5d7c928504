//! The subscription hub shared by every transport: subscriptions grouped by class and by
//! identical query (canonical `where`), one evaluation of each distinct query per change, the
//! Parse decision table per subscriber (`event`), and the payload encoded once per change and
//! projection (`payload`).
//!
//! The hub never waits on a client: delivery is a non-blocking push into the connection's
//! bounded [`Outbox`]. All state sits behind one lock; fan-out takes it shared, subscription
//! changes exclusively and briefly.
//!
//! The hub also knows the stream [`Position`] it has published up to. A subscription is
//! registered at a known position, atomically with respect to fan-out: everything after it is
//! delivered live (or, for a catch-up that joins [`Start::Held`], held back until
//! [`Hub::release`]), so a catch-up that replays history up to that position leaves no gap and
//! no duplicate (see [`crate::catchup`]). It also keeps the per-connection and total budgets of
//! [`HubLimits`] (subscriptions, unindexed queries, compiled regex memory).

mod event;
mod index;
mod outbox;
mod payload;

pub use index::IndexEntry;
pub use outbox::{CloseCause, Delivery, Outbox, Outgoing, Queue, QueueBudget, TotalBudget};
pub use payload::Payload;

use event::{shape, Matches};
use index::QueryIndex;
use payload::PayloadCache;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde_json::{Map, Value};

use uuid::Uuid;

use crate::auth::access::{Identity, ReadAcl};
use crate::position::{Gap, Position};
use crate::protocol::{code, Refusal, RequestId};
use crate::query::{canonical_key, Query, QueryError, QueryLimits};
use crate::telemetry::Transport;

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
    /// When PostgreSQL captured it, in µs since the Unix epoch (0: unknown, e.g. a snapshot row).
    pub captured_us: i64,
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

/// A subscription as the hub needs it. Built by [`Subscription::new`], which derives the
/// canonical key and the index entry from the same `where` it compiles.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub class: Arc<str>,
    /// Canonical dedupe key (see [`crate::query::canonical_key`]).
    key: String,
    query: Arc<Query>,
    /// Where the query is filed in the class's equality index (see [`IndexEntry::of`]).
    index: Option<IndexEntry>,
    pub keys: Option<Arc<[String]>>,
    pub watch: Option<Arc<[String]>>,
    pub identity: Identity,
    /// Fields never sent to this subscriber (class rules' protected fields for non-master).
    pub hidden: Option<Arc<[String]>>,
    /// The client tracks positions: its events carry them and it is told about gaps.
    pub positions: bool,
}

impl Subscription {
    /// An anonymous subscription to `class` with this `where` (compiled within `limits`),
    /// projection and watch list; set `identity`, `hidden` and `positions` as needed.
    pub fn new(
        class: &str,
        where_: &Map<String, Value>,
        limits: QueryLimits,
        keys: Option<Vec<String>>,
        watch: Option<Vec<String>>,
    ) -> Result<Subscription, QueryError> {
        let query = Query::compile(where_, limits)?;
        // `keys` is a set (Parse sends the projection's names in any order): kept sorted, so
        // equal projections are one interned list and membership is a binary search.
        let keys = keys.map(|mut keys| {
            keys.sort_unstable();
            keys.dedup();
            keys
        });
        Ok(Subscription {
            key: canonical_key(class, where_),
            index: IndexEntry::of(where_),
            class: class.into(),
            query: Arc::new(query),
            keys: keys.map(Into::into),
            watch: watch.map(Into::into),
            identity: Identity::default(),
            hidden: None,
            positions: false,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeError {
    UnknownConnection,
    TooManySubscriptions {
        limit: usize,
    },
    /// The connection holds `limit` unindexed queries already.
    TooManyScannedQueries {
        limit: usize,
    },
    /// The gateway holds `limit` distinct unindexed queries already.
    TooManyScannedQueriesInAll {
        limit: usize,
    },
    /// The connection's subscriptions would hold more compiled `$regex` memory than `limit`.
    RegexMemory {
        needed: usize,
        limit: usize,
    },
    /// The reservation is gone: the client unsubscribed (or reconnected) while catching up.
    Cancelled,
}

impl SubscribeError {
    /// What the client is told; `None` when nothing is worth saying (the subscription was
    /// cancelled by the client itself, or the caller retries).
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            SubscribeError::TooManySubscriptions { limit } => Some(Refusal::new(
                code::LIMIT_EXCEEDED,
                format!("Too many subscriptions on this connection (limit {limit})"),
            )),
            SubscribeError::TooManyScannedQueries { limit } => Some(Refusal::new(
                code::LIMIT_EXCEEDED,
                format!(
                    "Too many unindexed queries on this connection (limit {limit}): a query whose top \
                     level has no equality on a field (like {{\"room\": \"lobby\"}}) is evaluated for \
                     every change of its class"
                ),
            )),
            SubscribeError::TooManyScannedQueriesInAll { limit } => Some(Refusal::new(
                code::LIMIT_EXCEEDED,
                format!(
                    "The gateway holds too many distinct unindexed queries (limit {limit}); add an \
                     equality on a field to the query, or try again later"
                ),
            )),
            SubscribeError::RegexMemory { needed, limit } => Some(Refusal::new(
                code::LIMIT_EXCEEDED,
                format!(
                    "$regex patterns of this connection's subscriptions would take {} KiB, more than \
                     limits.regex_memory_per_connection ({} KiB)",
                    needed.div_ceil(1024),
                    limit / 1024
                ),
            )),
            SubscribeError::UnknownConnection => Some(Refusal {
                code: code::NOT_FOUND,
                message: "Can not find this client, make sure you connect to server before subscribing".into(),
                reconnect: true,
            }),
            SubscribeError::Cancelled => None,
        }
    }
}

/// Where a new subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Live from the current position.
    Now,
    /// Live from the current position, taking up the [`Hub::reserve`]d requestId, after telling
    /// the client that history could not be replayed (the gap precedes `subscribed`).
    AfterGap(Reservation, Gap),
    /// Taking up the reserved requestId, live from the current position, but holding its events
    /// (unsent, in order) until [`Hub::release`]: catch-up replays history up to that position
    /// meanwhile, however far live delivery moves on.
    Held(Reservation),
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

/// What the hub holds, by transport and by kind of query (for `/metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    /// Registered connections, by [`Transport::index`].
    pub connections: [usize; 2],
    /// Subscriptions filed in the hub (live or held), by [`Transport::index`].
    pub subscriptions: [usize; 2],
    /// Distinct queries an index finds, and those evaluated for every change of their class.
    pub indexed_queries: usize,
    pub scanned_queries: usize,
}

struct Member {
    outbox: Outbox,
    keys: Option<Arc<[String]>>,
    watch: Option<Arc<[String]>>,
    identity: Identity,
    hidden: Option<Arc<[String]>>,
    positions: bool,
    /// While catch-up finishes: the events held back, and the position it went live at.
    held: Option<Mutex<Held>>,
}

/// What a [`Start::Held`] subscription receives before [`Hub::release`].
struct Held {
    ticket: Reservation,
    /// Live from here: everything after it is in `items`.
    live: Position,
    items: Vec<Outgoing>,
    /// What `items` account for in the queue's byte budget.
    bytes: usize,
    /// More arrived than the connection's queue could take: it is closed on release.
    overflowed: bool,
}

impl Member {
    /// Queues `item`, or holds it back while the subscription is held. Never waits.
    fn deliver(&self, item: Outgoing) {
        let Some(held) = &self.held else {
            self.outbox.push(item);
            return;
        };
        let mut held = held.lock().unwrap_or_else(|e| e.into_inner());
        let bytes = held.bytes.saturating_add(item.size());
        if held.items.len() < self.outbox.capacity() && bytes <= self.outbox.max_bytes() {
            held.bytes = bytes;
            held.items.push(item);
        } else {
            held.overflowed = true;
        }
    }
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

type Classes = HashMap<Arc<str>, ClassQueries>;

/// What the hub allows per connection and in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubLimits {
    pub subscriptions_per_connection: usize,
    /// Unindexed subscriptions per connection (each is evaluated for every change of its class).
    pub scanned_per_connection: usize,
    /// Distinct unindexed queries in the whole hub.
    pub scanned_total: usize,
    /// Compiled `$regex` memory the subscriptions of one connection may hold (each counts the
    /// patterns of its query, shared or not).
    pub regex_memory_per_connection: usize,
}

impl HubLimits {
    /// `subscriptions` per connection and no other limit (tests, benches).
    pub fn per_connection(subscriptions: usize) -> HubLimits {
        HubLimits {
            subscriptions_per_connection: subscriptions,
            scanned_per_connection: usize::MAX,
            scanned_total: usize::MAX,
            regex_memory_per_connection: usize::MAX,
        }
    }
}

/// Where a connection's subscription sits in the hub.
struct Entry {
    class: Arc<str>,
    key: String,
    /// Unindexed: counts against the scanned budgets.
    scanned: bool,
    /// Compiled `$regex` memory of its query.
    regex_memory: usize,
}

struct Connection {
    outbox: Outbox,
    transport: Transport,
    /// requestId → where its subscription is filed.
    subscriptions: HashMap<RequestId, Entry>,
    /// requestIds reserved by subscriptions that are still catching up.
    reserved: HashMap<RequestId, Reservation>,
    /// Live unindexed subscriptions.
    scanned: usize,
    /// Compiled `$regex` memory of its live subscriptions.
    regex_memory: usize,
}

impl Connection {
    /// Drops whatever `request_id` held (a subscription or a reservation), then checks that
    /// one more fits under `limit`.
    fn vacate(
        &mut self,
        shared: &mut Shared,
        id: ConnectionId,
        request_id: &RequestId,
        limit: usize,
    ) -> Result<(), SubscribeError> {
        self.remove(shared, id, request_id);
        self.reserved.remove(request_id);
        if self.subscriptions.len() + self.reserved.len() >= limit {
            return Err(SubscribeError::TooManySubscriptions { limit });
        }
        Ok(())
    }

    /// Removes the live subscription `request_id`, if any; true when there was one.
    fn remove(&mut self, shared: &mut Shared, id: ConnectionId, request_id: &RequestId) -> bool {
        let Some(entry) = self.subscriptions.remove(request_id) else { return false };
        self.scanned -= usize::from(entry.scanned);
        self.regex_memory -= entry.regex_memory;
        shared.remove_member(&entry, id, request_id);
        true
    }

    /// Checks that `start` may take up `request_id`: a reservation must still be the caller's.
    fn admits(&self, request_id: &RequestId, start: Start) -> Result<(), SubscribeError> {
        match start {
            Start::Now => Ok(()),
            Start::AfterGap(ticket, _) | Start::Held(ticket) if self.reserved.get(request_id) != Some(&ticket) => {
                Err(SubscribeError::Cancelled)
            }
            Start::AfterGap(..) | Start::Held(_) => Ok(()),
        }
    }
}

/// What every connection's subscriptions share: the groups, and the interned projections.
#[derive(Default)]
struct Shared {
    classes: Classes,
    /// Distinct `keys` lists, so equal projections are one `Arc` (compared by pointer).
    projections: HashSet<Arc<[String]>>,
    /// Distinct unindexed groups.
    scanned_groups: usize,
}

#[derive(Default)]
struct State {
    shared: Shared,
    connections: HashMap<ConnectionId, Connection>,
    epoch: Uuid,
}

pub struct Hub {
    state: RwLock<State>,
    /// Offset of the last change fanned out; only moves while the state is read-locked by
    /// `publish`, so a write-lock holder sees it steady.
    published: AtomicI64,
    next_connection: AtomicU64,
    limits: HubLimits,
}

impl Hub {
    pub fn new(limits: HubLimits) -> Hub {
        Hub { state: RwLock::default(), published: AtomicI64::new(0), next_connection: AtomicU64::new(1), limits }
    }

    /// Where the live stream stands: the last change fanned out.
    pub fn position(&self) -> Position {
        self.live(&self.read())
    }

    /// The published position, read under either lock.
    fn live(&self, state: &State) -> Position {
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
        for group in state.shared.classes.values().flat_map(|c| c.groups.values()) {
            for ((_, request_id), member) in group.members.iter().filter(|(_, m)| m.positions) {
                let (request_id, gap) = (request_id.clone(), Gap::Reset);
                member.deliver(Outgoing::Gap { request_id, gap, position: at, snapshot: false });
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

    pub fn register(&self, outbox: Outbox, transport: Transport) -> ConnectionId {
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let connection = Connection {
            outbox,
            transport,
            subscriptions: HashMap::new(),
            reserved: HashMap::new(),
            scanned: 0,
            regex_memory: 0,
        };
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
        conn.vacate(&mut state.shared, connection, &request_id, self.limits.subscriptions_per_connection)?;
        let ticket = Reservation(self.next_connection.fetch_add(1, Ordering::Relaxed));
        conn.reserved.insert(request_id, ticket);
        Ok(ticket)
    }

    /// Adds (or replaces, for a reused requestId) a subscription, then queues
    /// [`Outgoing::Subscribed`] while still holding the lock, so the confirmation precedes
    /// every event of the subscription. Returns the position it went live at: every change
    /// after it is delivered.
    pub fn subscribe(
        &self,
        connection: ConnectionId,
        request_id: RequestId,
        subscription: Subscription,
        start: Start,
    ) -> Result<Position, SubscribeError> {
        let mut state = self.write();
        let state = &mut *state;
        let live = self.live(state);
        let conn = state.connections.get_mut(&connection).ok_or(SubscribeError::UnknownConnection)?;
        conn.admits(&request_id, start)?;
        conn.vacate(&mut state.shared, connection, &request_id, self.limits.subscriptions_per_connection)?;
        let scanned = subscription.index.is_none();
        if scanned {
            self.check_scanned(conn, &state.shared, &subscription)?;
        }
        let regex_memory = subscription.query.regex_memory();
        let needed = conn.regex_memory.saturating_add(regex_memory);
        if regex_memory > 0 && needed > self.limits.regex_memory_per_connection {
            return Err(SubscribeError::RegexMemory { needed, limit: self.limits.regex_memory_per_connection });
        }
        let outbox = conn.outbox.clone();
        let entry = Entry { class: subscription.class.clone(), key: subscription.key.clone(), scanned, regex_memory };
        conn.subscriptions.insert(request_id.clone(), entry);
        conn.scanned += usize::from(scanned);
        conn.regex_memory = needed;
        let positioned = subscription.positions;
        let held = match start {
            Start::Held(ticket) => Some(Held { ticket, live, items: Vec::new(), bytes: 0, overflowed: false }),
            Start::Now | Start::AfterGap(..) => None,
        };
        let confirm = held.is_none();
        state.shared.install((connection, request_id.clone()), subscription, outbox.clone(), held);
        if let Start::AfterGap(_, gap) = start {
            outbox.push(Outgoing::Gap { request_id: request_id.clone(), gap, position: live, snapshot: false });
        }
        if confirm {
            outbox.push(Outgoing::Subscribed { request_id, position: live, positioned });
        }
        Ok(live)
    }

    /// Ends the hold of a [`Start::Held`] subscription: queues `gap` (when history could not be
    /// replayed after all), `subscribed` at the position it went live at, then every event held
    /// back, in order, under the write lock, so nothing can come between. Returns that position.
    pub fn release(
        &self,
        connection: ConnectionId,
        request_id: &RequestId,
        ticket: Reservation,
        gap: Option<Gap>,
    ) -> Result<Position, SubscribeError> {
        let mut state = self.write();
        let state = &mut *state;
        let conn = state.connections.get(&connection).ok_or(SubscribeError::UnknownConnection)?;
        let entry = conn.subscriptions.get(request_id).ok_or(SubscribeError::Cancelled)?;
        let member = state.shared.member_mut(entry, connection, request_id).ok_or(SubscribeError::Cancelled)?;
        // Under the write lock nobody else touches the hold: no need to lock it.
        let holds_ticket = |h: &mut Mutex<Held>| h.get_mut().unwrap_or_else(|e| e.into_inner()).ticket == ticket;
        if !member.held.as_mut().is_some_and(holds_ticket) {
            return Err(SubscribeError::Cancelled);
        }
        let Some(held) = member.held.take().map(|h| h.into_inner().unwrap_or_else(|e| e.into_inner())) else {
            return Err(SubscribeError::Cancelled);
        };
        let outbox = &member.outbox;
        if held.overflowed {
            outbox.close();
            return Ok(held.live);
        }
        if let Some(gap) = gap {
            let request_id = request_id.clone();
            outbox.push(Outgoing::Gap { request_id, gap, position: held.live, snapshot: false });
        }
        let positioned = member.positions;
        outbox.push(Outgoing::Subscribed { request_id: request_id.clone(), position: held.live, positioned });
        for item in held.items {
            outbox.push(item);
        }
        Ok(held.live)
    }

    /// Whether one more unindexed subscription fits, on the connection and (if its query is
    /// not already held) in the hub.
    fn check_scanned(
        &self,
        conn: &Connection,
        shared: &Shared,
        subscription: &Subscription,
    ) -> Result<(), SubscribeError> {
        let limits = self.limits;
        if conn.scanned >= limits.scanned_per_connection {
            return Err(SubscribeError::TooManyScannedQueries { limit: limits.scanned_per_connection });
        }
        let held = shared.classes.get(&subscription.class).is_some_and(|c| c.groups.contains_key(&subscription.key));
        if !held && shared.scanned_groups >= limits.scanned_total {
            return Err(SubscribeError::TooManyScannedQueriesInAll { limit: limits.scanned_total });
        }
        Ok(())
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
        conn.remove(&mut state.shared, connection, request_id)
    }

    /// Stops one subscription because its identity is no longer valid (a reservation is
    /// cancelled), and returns the position a live one stopped at: it received every change up
    /// to there and nothing after, so a resume from it (with a fresh identity) loses nothing.
    pub fn suspend(&self, connection: ConnectionId, request_id: &RequestId) -> Option<Position> {
        let mut state = self.write();
        let state = &mut *state;
        let stopped = self.live(state);
        let conn = state.connections.get_mut(&connection)?;
        conn.reserved.remove(request_id);
        conn.remove(&mut state.shared, connection, request_id).then_some(stopped)
    }

    /// Replaces the identity a live subscription is evaluated with (its token was re-checked and
    /// now says something else, e.g. other roles). False when there is no such subscription.
    pub fn set_identity(&self, connection: ConnectionId, request_id: &RequestId, identity: Identity) -> bool {
        let mut state = self.write();
        let state = &mut *state;
        let Some(entry) = state.connections.get(&connection).and_then(|c| c.subscriptions.get(request_id)) else {
            return false;
        };
        match state.shared.member_mut(entry, connection, request_id) {
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
        conn.scanned = 0;
        conn.regex_memory = 0;
        for (request_id, entry) in conn.subscriptions.drain() {
            state.shared.remove_member(&entry, connection, &request_id);
        }
    }

    /// Forgets a connection and everything it subscribed to.
    pub fn disconnect(&self, connection: ConnectionId) {
        self.unsubscribe_all(connection);
        self.write().connections.remove(&connection);
    }

    pub fn stats(&self) -> HubStats {
        let state = self.read();
        let groups = state.shared.classes.values().flat_map(|c| c.groups.values());
        HubStats {
            connections: state.connections.len(),
            subscriptions: groups.clone().map(|g| g.members.len()).sum(),
            distinct_queries: groups.count(),
        }
    }

    /// Counts connections and subscriptions by transport, and distinct queries by kind.
    pub fn census(&self) -> Census {
        let state = self.read();
        let mut census = Census::default();
        for connection in state.connections.values() {
            census.connections[connection.transport.index()] += 1;
            census.subscriptions[connection.transport.index()] += connection.subscriptions.len();
        }
        let groups: usize = state.shared.classes.values().map(|c| c.groups.len()).sum();
        census.scanned_queries = state.shared.scanned_groups;
        census.indexed_queries = groups.saturating_sub(state.shared.scanned_groups);
        census
    }

    /// Closes every connection's outbox for a shutdown, at the position published so far: every
    /// change up to it is queued already (fan-out cannot run under the write lock), none after.
    pub fn close_all(&self) -> Position {
        let state = self.write();
        let at = self.live(&state);
        for connection in state.connections.values() {
            connection.outbox.close_because(CloseCause::Shutdown { at });
        }
        at
    }

    /// Fans one change out to every subscriber it concerns.
    pub fn publish(&self, change: &Change) {
        let state = self.read();
        if let Some(class) = state.shared.classes.get(&change.class) {
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
                    member.deliver(Outgoing::Event(Delivery {
                        op: shape.op(),
                        request_id: request_id.clone(),
                        payload,
                        positioned: member.positions,
                        replayed: false,
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
    let positioned = subscription.positions;
    Some(Delivery { op: shape.op(), request_id: request_id.clone(), payload, positioned, replayed: true })
}

impl Shared {
    /// Files a subscriber in its query's group, creating the group (and its index entry) if it
    /// is the first with that query; its projection is interned.
    fn install(
        &mut self,
        member_key: (ConnectionId, RequestId),
        subscription: Subscription,
        outbox: Outbox,
        held: Option<Held>,
    ) {
        let keys = subscription.keys.map(|keys| self.intern(keys));
        let class = self.classes.entry(subscription.class).or_default();
        let group = match class.groups.entry(subscription.key) {
            std::collections::hash_map::Entry::Occupied(group) => group.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => {
                class.index.insert(slot.key(), subscription.index.as_ref());
                self.scanned_groups += usize::from(subscription.index.is_none());
                slot.insert(Group { query: subscription.query, index: subscription.index, members: HashMap::new() })
            }
        };
        let member = Member {
            outbox,
            keys,
            watch: subscription.watch,
            identity: subscription.identity,
            hidden: subscription.hidden,
            positions: subscription.positions,
            held: held.map(Mutex::new),
        };
        group.members.insert(member_key, member);
    }

    /// The member a connection's subscription entry points at.
    fn member_mut(&mut self, entry: &Entry, connection: ConnectionId, request_id: &RequestId) -> Option<&mut Member> {
        let group = self.classes.get_mut(&entry.class)?.groups.get_mut(&entry.key)?;
        group.members.get_mut(&(connection, request_id.clone()))
    }

    fn intern(&mut self, keys: Arc<[String]>) -> Arc<[String]> {
        match self.projections.get(&keys) {
            Some(interned) => interned.clone(),
            None => {
                self.projections.insert(keys.clone());
                keys
            }
        }
    }

    fn remove_member(&mut self, entry: &Entry, connection: ConnectionId, request_id: &RequestId) {
        let Some(queries) = self.classes.get_mut(&entry.class) else { return };
        if let Some(group) = queries.groups.get_mut(&entry.key) {
            let member = group.members.remove(&(connection, request_id.clone()));
            if group.members.is_empty() {
                queries.index.remove(&entry.key, group.index.as_ref());
                self.scanned_groups -= usize::from(group.index.is_none());
                queries.groups.remove(&entry.key);
            }
            if let Some(keys) = member.and_then(|m| m.keys) {
                // Held here and by the set only: no subscriber uses the projection any more.
                if Arc::strong_count(&keys) <= 2 {
                    self.projections.remove(&keys);
                }
            }
        }
        if queries.groups.is_empty() {
            self.classes.remove(&entry.class);
        }
    }
}

#[cfg(test)]
mod tests;
