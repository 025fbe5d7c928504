//! Opaque session tokens resolved from PostgreSQL, and the role inheritance graph, both cached.
//!
//! This module owns the `[sessions]` config section, the SQL that turns a token into [`Claims`]
//! (direct roles only) and the SQL that loads [`RoleGraph`] edges, plus the caches in front of
//! both. Callers combine them: `store.role_graph().await.closure(&claims.roles)`.
//!
//! # Caching
//!
//! - A resolved token is cached for `cache_ttl_ms`, an unknown one for `negative_ttl_ms`, so a
//!   revoked session keeps working for at most `cache_ttl_ms` (Parse behaves the same way).
//! - A cached session past its `expires_at` is reported [`TokenError::Expired`] at once.
//! - Concurrent lookups of one token share a single query.
//! - Database failures ([`TokenError::Unavailable`]) are never cached.
//! - Each lookup runs as a Tokio task of its own and caches its result even if every caller
//!   waiting for it has gone away (so `resolve` needs a Tokio runtime, as actix provides).
//! - The role graph is reloaded lazily once older than `cache_ttl_ms`; while one caller reloads,
//!   the others keep the previous graph. A failed reload keeps the previous graph.
//!
//! # The queries
//!
//! `query` takes the token as `$1` and returns at most one row with the columns `user_id`
//! (text), `roles` (text[], may be null or missing) and `expires_at` (timestamptz, may be null
//! or missing; `infinity` means never). `roles_query` returns every `(role, inherits)` edge:
//! members of `role` also hold `inherits`. The defaults read livegate's own tables (migration
//! `0003_identity.sql`).
//!
//! ## Parse Server's tables
//!
//! Sessions in `_Session` ("sessionToken", "expiresAt", and the user pointer); roles in
//! `_Role` ("objectId", "name"); members in `"_Join:users:_Role"` (`relatedId` = user objectId,
//! `owningId` = role objectId); role nesting in `"_Join:roles:_Role"` (`owningId` = the parent
//! role whose `roles` relation contains `relatedId`, the child role; members of the child
//! inherit the parent). With the user pointer stored as `"_p_user"` = `'_User$<objectId>'`:
//!
//! ```toml
//! [sessions]
//! query = '''
//! select split_part(s."_p_user", '$', 2) as user_id,
//!        array(select r."name"
//!              from "_Join:users:_Role" m join "_Role" r on r."objectId" = m."owningId"
//!              where m."relatedId" = split_part(s."_p_user", '$', 2)) as roles,
//!        s."expiresAt" as expires_at
//! from "_Session" s
//! where s."sessionToken" = $1
//! '''
//! roles_query = '''
//! select child."name" as role, parent."name" as inherits
//! from "_Join:roles:_Role" j
//! join "_Role" child on child."objectId" = j."relatedId"
//! join "_Role" parent on parent."objectId" = j."owningId"
//! '''
//! ```
//!
//! Parse Server's PostgreSQL adapter stores the pointer instead as a bare objectId in a column
//! named after the field, `"user"`: replace both `split_part(s."_p_user", '$', 2)` with
//! `s."user"`. (Both forms are exercised by `tests/integration/identity.rs`.) A session whose
//! user is null or empty is refused, as Parse requires a session to have a user.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgPool, PgRow, PgTypeInfo, PgValueRef, Postgres};
use sqlx::Row;

use super::access::role_name;
use super::roles::RoleGraph;
use super::{Claims, TokenError};

/// Longer tokens are refused without a query: no real token is this long, and it bounds the
/// memory a cache key can take.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// `[sessions]` config section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// SQL taking the token as `$1`, returning at most one row with columns `user_id` (text),
    /// `roles` (text[], may be null) and `expires_at` (timestamptz, may be null).
    pub query: String,
    /// SQL returning every `(role text, inherits text)` edge.
    pub roles_query: String,
    /// Cache lifetime of a resolved token, and of the role graph, in milliseconds.
    pub cache_ttl_ms: u64,
    /// Cache lifetime of an unknown or invalid token, in milliseconds.
    pub negative_ttl_ms: u64,
    /// Most tokens cached; beyond that the expired, then the oldest, entries are evicted.
    pub cache_entries: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            query: "select user_id, roles, expires_at from livegate.sessions where token = $1".into(),
            roles_query: "select role, inherits from livegate.role_inheritance".into(),
            cache_ttl_ms: 5_000,
            negative_ttl_ms: 5_000,
            cache_entries: 10_000,
        }
    }
}

/// What one lookup found: the claims (expiry is checked on every use, not at lookup) or why
/// the token is refused.
type Lookup = Result<Claims, TokenError>;

/// A lookup in flight, awaited by every caller that asks for the same token meanwhile.
type Pending = Shared<BoxFuture<'static, Lookup>>;

enum Slot {
    /// `id` tells this lookup's result from that of an older one for the same token.
    Loading {
        lookup: Pending,
        id: u64,
        since: Instant,
    },
    Ready {
        outcome: Lookup,
        until: Instant,
        since: Instant,
    },
}

impl Slot {
    fn since(&self) -> Instant {
        match self {
            Slot::Loading { since, .. } | Slot::Ready { since, .. } => *since,
        }
    }
}

struct CachedGraph {
    graph: Arc<RoleGraph>,
    loaded_at: Instant,
}

struct Inner {
    pool: PgPool,
    query: String,
    roles_query: String,
    ttl: Duration,
    negative_ttl: Duration,
    max_entries: usize,
    tokens: Mutex<HashMap<String, Slot>>,
    next_lookup: AtomicU64,
    graph: RwLock<Option<CachedGraph>>,
    /// Held by the one caller reloading the graph.
    graph_reload: tokio::sync::Mutex<()>,
}

/// Resolves opaque session tokens and loads the role graph, with caches. Cheap to clone; clones
/// share the caches.
#[derive(Clone)]
pub struct SessionStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStore")
            .field("query", &self.inner.query)
            .field("roles_query", &self.inner.roles_query)
            .field("ttl", &self.inner.ttl)
            .field("negative_ttl", &self.inner.negative_ttl)
            .field("cached_tokens", &lock(&self.inner.tokens).len())
            .finish_non_exhaustive()
    }
}

/// Capped so that `Instant + ttl` cannot overflow whatever the config says.
const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

enum Cached {
    Hit(Lookup),
    Wait(Pending),
}

impl SessionStore {
    pub fn new(pool: PgPool, config: &SessionConfig) -> SessionStore {
        SessionStore {
            inner: Arc::new(Inner {
                pool,
                query: config.query.clone(),
                roles_query: config.roles_query.clone(),
                ttl: Duration::from_millis(config.cache_ttl_ms).min(MAX_TTL),
                negative_ttl: Duration::from_millis(config.negative_ttl_ms).min(MAX_TTL),
                max_entries: config.cache_entries.max(1),
                tokens: Mutex::new(HashMap::new()),
                next_lookup: AtomicU64::new(0),
                graph: RwLock::new(None),
                graph_reload: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Resolves an opaque token to its claims: the user and the *direct* roles of the session.
    pub async fn resolve(&self, token: &str) -> Result<Claims, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Invalid("empty session token".into()));
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Invalid("session token too long".into()));
        }
        match self.cached_or_start(token) {
            Cached::Hit(outcome) => unexpired(outcome),
            Cached::Wait(pending) => unexpired(pending.await),
        }
    }

    /// The role graph, reloaded lazily once older than `cache_ttl_ms`.
    pub async fn role_graph(&self) -> Arc<RoleGraph> {
        let stale = match self.current_graph() {
            (Some(graph), true) => return graph,
            (stale, _) => stale,
        };
        // One caller reloads; callers that already have a graph use it meanwhile rather than
        // queue behind the query. Only the very first load is waited for.
        let _reloading = match (stale, self.inner.graph_reload.try_lock()) {
            (_, Ok(guard)) => guard,
            (Some(stale), Err(_)) => return stale,
            (None, Err(_)) => self.inner.graph_reload.lock().await,
        };
        // Whoever held the lock before us may have just reloaded it.
        let previous = match self.current_graph() {
            (Some(graph), true) => return graph,
            (previous, _) => previous,
        };
        let graph = match load_edges(&self.inner.pool, &self.inner.roles_query).await {
            Ok(graph) => {
                tracing::debug!(edges = graph.edge_count(), "loaded the role graph");
                Arc::new(graph)
            }
            Err(e) => {
                // Retried after another cache_ttl_ms, not on every call, so an outage does not
                // turn every subscribe into a failing query.
                tracing::warn!(error = %e, "cannot load the role graph; keeping the previous one");
                previous.unwrap_or_default()
            }
        };
        let mut current = self.inner.graph.write().unwrap_or_else(PoisonError::into_inner);
        *current = Some(CachedGraph { graph: graph.clone(), loaded_at: Instant::now() });
        graph
    }

    /// The cached graph, if any, and whether it is still fresh.
    fn current_graph(&self) -> (Option<Arc<RoleGraph>>, bool) {
        let current = self.inner.graph.read().unwrap_or_else(PoisonError::into_inner);
        match &*current {
            Some(cached) => (Some(cached.graph.clone()), cached.loaded_at.elapsed() < self.inner.ttl),
            None => (None, false),
        }
    }

    /// A fresh cached outcome, the lookup already in flight, or a new lookup registered for others
    /// to join.
    fn cached_or_start(&self, token: &str) -> Cached {
        let now = Instant::now();
        let mut tokens = lock(&self.inner.tokens);
        match tokens.get(token) {
            Some(Slot::Ready { outcome, until, .. }) if *until > now => return Cached::Hit(outcome.clone()),
            Some(Slot::Loading { lookup, .. }) => return Cached::Wait(lookup.clone()),
            Some(Slot::Ready { .. }) => {}
            None if tokens.len() >= self.inner.max_entries => evict(&mut tokens, now, self.inner.max_entries),
            None => {}
        }
        // The lookup runs as a task of its own that records its result itself: a caller that
        // goes away (a client disconnecting mid-connect) must not leave a half-run query, and
        // the pool connection it holds, parked in the cache until someone asks again.
        let id = self.inner.next_lookup.fetch_add(1, Ordering::Relaxed);
        let (inner, key) = (self.inner.clone(), token.to_string());
        let task = tokio::spawn(async move {
            let outcome = lookup(&inner.pool, &inner.query, &key).await;
            inner.settle(&key, id, &outcome);
            outcome
        });
        // Weak: the slot holding this future must not keep the store alive.
        let (store, key) = (Arc::downgrade(&self.inner), token.to_string());
        let lookup = task
            .map(move |joined| {
                joined.unwrap_or_else(|e| {
                    // Panicked or cancelled (runtime shutting down): the task never settled, so
                    // clear its slot here rather than serve this failure from it forever.
                    tracing::error!(error = %e, "session token lookup task failed");
                    let failed = Err(TokenError::Unavailable("session lookup failed".into()));
                    if let Some(inner) = store.upgrade() {
                        inner.settle(&key, id, &failed);
                    }
                    failed
                })
            })
            .boxed()
            .shared();
        // Still under the lock, so the task cannot settle before its slot exists.
        tokens.insert(token.to_string(), Slot::Loading { lookup: lookup.clone(), id, since: now });
        Cached::Wait(lookup)
    }
}

impl Inner {
    /// Records the outcome of lookup `id` for `token`, unless its slot has gone (evicted).
    fn settle(&self, token: &str, id: u64, outcome: &Lookup) {
        let mut tokens = lock(&self.tokens);
        if !matches!(tokens.get(token), Some(Slot::Loading { id: current, .. }) if *current == id) {
            return;
        }
        let ttl = match outcome {
            Ok(_) => self.ttl,
            Err(TokenError::Unavailable(_)) => {
                tokens.remove(token);
                return;
            }
            Err(_) => self.negative_ttl,
        };
        let now = Instant::now();
        tokens.insert(token.to_string(), Slot::Ready { outcome: outcome.clone(), until: now + ttl, since: now });
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded maps stay consistent at every step, so a panic elsewhere leaves them usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unexpired(outcome: Lookup) -> Lookup {
    match outcome {
        Ok(claims) if claims.expires_at.is_some_and(|at| at <= SystemTime::now()) => Err(TokenError::Expired),
        other => other,
    }
}

/// Makes room for one more entry: drops expired outcomes, then, if still full, the oldest tenth
/// so that a stream of new tokens does not pay for a scan on every miss.
fn evict(tokens: &mut HashMap<String, Slot>, now: Instant, max_entries: usize) {
    tokens.retain(|_, slot| !matches!(slot, Slot::Ready { until, .. } if *until <= now));
    if tokens.len() < max_entries {
        return;
    }
    let excess = tokens.len() + 1 - max_entries;
    let count = excess.max(max_entries / 10).min(tokens.len());
    let mut by_age: Vec<(Instant, &String)> = tokens.iter().map(|(token, slot)| (slot.since(), token)).collect();
    if count < by_age.len() {
        by_age.select_nth_unstable_by_key(count, |(since, _)| *since);
    }
    let victims: Vec<String> = by_age[..count].iter().map(|(_, token)| (*token).clone()).collect();
    for token in victims {
        tokens.remove(&token);
    }
}

/// One query for one token. `Unavailable` for anything that says nothing about the token itself
/// (connection, SQL or column-type problems), so that it is retried rather than cached.
async fn lookup(pool: &PgPool, query: &str, token: &str) -> Lookup {
    let mut rows = sqlx::query(query).bind(token).fetch(pool);
    let row = match rows.try_next().await {
        Ok(Some(row)) => row,
        Ok(None) => return Err(TokenError::Invalid("unknown session token".into())),
        Err(e) => return Err(unavailable(&e)),
    };
    match rows.try_next().await {
        Ok(None) => {}
        Ok(Some(_)) => return Err(TokenError::Invalid("session token matches more than one session".into())),
        Err(e) => return Err(unavailable(&e)),
    }
    claims_of(&row).map_err(|e| unavailable(&e))?
}

fn unavailable(e: &sqlx::Error) -> TokenError {
    tracing::warn!(error = %e, "session token lookup failed");
    // The client sees only the category; the details (SQL, schema names) stay in the log.
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            TokenError::Unavailable("session database unreachable".into())
        }
        _ => TokenError::Unavailable("session lookup failed".into()),
    }
}

fn claims_of(row: &PgRow) -> Result<Lookup, sqlx::Error> {
    let Some(user_id) = row.try_get::<Option<String>, _>("user_id")?.filter(|u| !u.is_empty()) else {
        return Ok(Err(TokenError::Invalid("session has no user".into())));
    };
    let roles: Option<Vec<Option<String>>> = optional_column(row, "roles")?;
    let roles =
        roles.into_iter().flatten().flatten().map(|r| role_name(&r).to_string()).filter(|r| !r.is_empty()).collect();
    let expires_at = optional_column::<PgInstant>(row, "expires_at")?.and_then(|at| at.0);
    Ok(Ok(Claims { user_id, roles, expires_at }))
}

/// A column that may be null or left out of the query altogether.
fn optional_column<T>(row: &PgRow, column: &str) -> Result<Option<T>, sqlx::Error>
where
    T: for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    match row.try_get::<Option<T>, _>(column) {
        Err(sqlx::Error::ColumnNotFound(_)) => Ok(None),
        other => other,
    }
}

async fn load_edges(pool: &PgPool, roles_query: &str) -> Result<RoleGraph, sqlx::Error> {
    let rows = sqlx::query(roles_query).fetch_all(pool).await?;
    let mut edges = Vec::with_capacity(rows.len());
    for row in &rows {
        let role: Option<String> = row.try_get("role")?;
        let inherits: Option<String> = row.try_get("inherits")?;
        if let (Some(role), Some(inherits)) = (role, inherits) {
            edges.push((role, inherits));
        }
    }
    Ok(RoleGraph::new(edges))
}

/// A `timestamptz` (or `timestamp`, read as UTC) as the instant it names, `None` for `infinity`.
/// Decoded here because sqlx's chrono support panics on the infinities and is not enabled.
struct PgInstant(Option<SystemTime>);

const TIMESTAMP: Oid = Oid(1114);
const TIMESTAMPTZ: Oid = Oid(1184);
/// 2000-01-01T00:00:00Z, PostgreSQL's epoch, in Unix seconds.
const PG_EPOCH_UNIX_SECONDS: u64 = 946_684_800;

impl sqlx::Type<Postgres> for PgInstant {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(TIMESTAMPTZ)
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        matches!(ty.oid(), Some(TIMESTAMPTZ | TIMESTAMP))
    }
}

impl<'r> sqlx::Decode<'r, Postgres> for PgInstant {
    fn decode(value: PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        // Binary format (what prepared queries return): microseconds since the PostgreSQL epoch,
        // with i64::MAX / i64::MIN for infinity / -infinity.
        let micros: i64 = sqlx::Decode::<Postgres>::decode(value)?;
        let epoch = SystemTime::UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECONDS);
        let offset = Duration::from_micros(micros.unsigned_abs());
        Ok(PgInstant(match micros {
            i64::MAX => None,
            0.. => epoch.checked_add(offset),
            // Long past: any time before now will do if the platform cannot represent it.
            _ => Some(epoch.checked_sub(offset).unwrap_or(SystemTime::UNIX_EPOCH)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(dead_code)]
    fn store_and_its_futures_cross_threads(store: &SessionStore) {
        fn send<T: Send + Sync>(_: &T) {}
        fn send_future<T: Send>(_: T) {}
        send(store);
        send_future(store.resolve("token"));
        send_future(store.role_graph());
    }

    fn ready(since: Instant, until: Instant) -> Slot {
        Slot::Ready { outcome: Err(TokenError::Expired), until, since }
    }

    #[test]
    fn eviction_drops_expired_entries_first_then_the_oldest() {
        let start = Instant::now();
        let later = start + Duration::from_secs(60);
        let mut tokens: HashMap<String, Slot> =
            (0..20u64).map(|i| (format!("t{i}"), ready(start + Duration::from_millis(i), later))).collect();
        tokens.insert("expired".into(), ready(start + Duration::from_secs(1), start));
        evict(&mut tokens, start + Duration::from_secs(2), 100);
        assert_eq!(tokens.len(), 20, "only the expired entry goes while there is room");
        evict(&mut tokens, start + Duration::from_secs(2), 20);
        // One slot freed at least, and a tenth of the capacity at once: here 2, the oldest two.
        assert_eq!(tokens.len(), 18);
        assert!(!tokens.contains_key("t0") && !tokens.contains_key("t1") && tokens.contains_key("t2"));
    }

    #[test]
    fn expiry_is_checked_on_every_use() {
        let claims = |expires_at| Ok(Claims { user_id: "u".into(), roles: vec![], expires_at });
        let past = SystemTime::now() - Duration::from_secs(1);
        let future = SystemTime::now() + Duration::from_secs(60);
        assert_eq!(unexpired(claims(Some(past))), Err(TokenError::Expired));
        assert!(unexpired(claims(Some(future))).is_ok());
        assert!(unexpired(claims(None)).is_ok());
        assert_eq!(unexpired(Err(TokenError::Invalid("x".into()))), Err(TokenError::Invalid("x".into())));
    }
}
