//! The subscribe pipeline both transports share: a request becomes a [`Subscription`] through
//! the same steps, in the same order, whether it arrived as a WebSocket `subscribe` or as an SSE
//! `GET /events/{class}`:
//!
//! 1. [`Admission::compile`]: the `where` compiled within the query limits, with its canonical
//!    key and index entry (102 when it cannot be evaluated);
//! 2. [`Admission::since`]: the resume position, if any (1 when it is not one);
//! 3. [`Admission::identify`]: the token, if any, turned into an identity (209);
//! 4. [`Admission::authorize`]: the class rules for that identity (101, 119), and the fields it
//!    may not see;
//! 5. [`Admission::start`]: live from now, or a catch-up from the position (155 when the
//!    connection holds too many subscriptions); or, for a snapshot, [`Admission::snapshot`]
//!    (the current rows: 155 past `limits.snapshot_rows`, 124 past the statement timeout)
//!    then [`Admission::start_after`] (a catch-up from where the snapshot was taken).
//!
//! Each refusal is a [`Refused`] naming the step, so a transport can choose its own framing
//! (an error frame, an HTTP status) while the codes and messages stay one. No socket I/O: the
//! only thing awaited is the token lookup.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::task::AbortHandle;

use crate::auth::rules::{ClassRules, Denied};
use crate::auth::{Identity, TokenError, TokenResolver};
use crate::catchup::{Catchup, Resume};
use crate::hub::{ConnectionId, Hub, Outbox, Start, SubscribeError, Subscription};
use crate::position::Position;
use crate::protocol::{code, Refusal, RequestId};
use crate::query::{QueryError, QueryLimits};
use crate::snapshot::{self, SnapshotError, SnapshotRead, SnapshotSource};

/// What the pipeline needs, shared by every connection of a server.
pub struct Admission {
    hub: Arc<Hub>,
    catchup: Arc<Catchup>,
    tokens: Arc<dyn TokenResolver>,
    rules: Arc<ClassRules>,
    snapshots: Arc<dyn SnapshotSource>,
    query_limits: QueryLimits,
    /// Most names in a `keys` or `watch` list.
    field_list: usize,
    /// Most rows in a snapshot.
    snapshot_rows: usize,
    /// How often tokens in use are checked again (revocation is noticed within this).
    pub revalidate_every: Duration,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission").field("query_limits", &self.query_limits).finish_non_exhaustive()
    }
}

/// The bounds the pipeline applies, and how often tokens are re-checked.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionLimits {
    pub query: QueryLimits,
    /// Most names in a `keys` or `watch` list (`limits.field_list`).
    pub field_list: usize,
    pub revalidate_every: Duration,
    /// Most rows in a snapshot (`limits.snapshot_rows`).
    pub snapshot_rows: usize,
}

/// A subscribe request as either transport states it, before anything is checked.
#[derive(Debug, Clone)]
pub struct SubscribeRequest<'a> {
    pub class: &'a str,
    pub where_: &'a Map<String, Value>,
    pub keys: Option<Vec<String>>,
    pub watch: Option<Vec<String>>,
    /// The client tracks positions (events carry them, gaps are announced).
    pub positions: bool,
}

/// Why a subscription was not started, by the step that refused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The `where` cannot be evaluated.
    Query(QueryError),
    /// The resume position is not a position; the message says why.
    Since(String),
    /// The token was refused, or cannot be checked right now.
    Token(TokenError),
    /// A class rule.
    Denied(Denied),
    /// The hub: too many subscriptions, or the connection is gone.
    Hub(SubscribeError),
    /// No snapshot could be taken.
    Snapshot(SnapshotError),
}

impl Refused {
    /// The step that refused, as logs name it.
    pub fn step(&self) -> &'static str {
        match self {
            Refused::Query(_) => "query",
            Refused::Since(_) => "since",
            Refused::Token(_) => "token",
            Refused::Denied(_) => "class_rule",
            Refused::Hub(_) => "hub",
            Refused::Snapshot(_) => "snapshot",
        }
    }

    /// What the client is told; `None` when there is no one to tell.
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            Refused::Query(e) => Some(Refusal::new(code::INVALID_QUERY, e.to_string())),
            Refused::Since(why) => Some(Refusal::new(code::SCHEMA, format!("since: {why}"))),
            Refused::Token(e) => Some(Refusal::new(code::INVALID_SESSION_TOKEN, e.to_string())),
            Refused::Denied(denied) => Some(Refusal::new(denied.code, denied.message.clone())),
            Refused::Hub(e) => e.refusal(),
            Refused::Snapshot(e) => Some(e.refusal()),
        }
    }
}

/// How a subscription started.
#[derive(Debug)]
pub enum Started {
    /// Live from this position; `subscribed` is queued.
    Live(Position),
    /// Replaying history on its own task, which goes live (or sends a gap) when done; abort it
    /// to stop early (the hub's reservation makes an unsubscribe final either way).
    CatchingUp(AbortHandle),
}

impl Admission {
    pub fn new(
        hub: Arc<Hub>,
        catchup: Arc<Catchup>,
        tokens: Arc<dyn TokenResolver>,
        rules: Arc<ClassRules>,
        snapshots: Arc<dyn SnapshotSource>,
        limits: AdmissionLimits,
    ) -> Admission {
        let AdmissionLimits { query: query_limits, field_list, revalidate_every, snapshot_rows } = limits;
        Admission { hub, catchup, tokens, rules, snapshots, query_limits, field_list, snapshot_rows, revalidate_every }
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Step 1: the anonymous subscription the request describes.
    pub fn compile(&self, request: SubscribeRequest<'_>) -> Result<Subscription, Refused> {
        for (name, list) in [("keys", &request.keys), ("watch", &request.watch)] {
            let length = list.as_ref().map_or(0, Vec::len);
            if length > self.field_list {
                let limit = self.field_list;
                let message = format!("{name} lists {length} fields, more than limits.field_list ({limit})");
                return Err(Refused::Query(QueryError(message)));
            }
        }
        let mut subscription =
            Subscription::new(request.class, request.where_, self.query_limits, request.keys, request.watch)
                .map_err(Refused::Query)?;
        subscription.positions = request.positions;
        Ok(subscription)
    }

    /// Step 2: a resume position; `None` and `"now"` resume nothing.
    pub fn since(text: Option<&str>) -> Result<Option<Position>, Refused> {
        match text {
            None | Some("now") => Ok(None),
            Some(text) => text.parse().map(Some).map_err(|e| Refused::Since(format!("{e}"))),
        }
    }

    /// Step 3: who presents `token`.
    pub async fn identify(&self, token: &str) -> Result<Identity, TokenError> {
        self.tokens.identify(token).await
    }

    /// A token in use, checked again (an outage keeps the identity it had).
    pub async fn recheck(&self, token: &str, current: &Identity) -> Result<Identity, TokenError> {
        self.tokens.recheck(token, current).await
    }

    /// Step 4: whether `identity` may subscribe with this `where` (and the subscription's
    /// `watch`); on success the subscription carries the identity and its hidden fields.
    pub fn authorize(
        &self,
        subscription: &mut Subscription,
        where_: &Map<String, Value>,
        identity: Identity,
    ) -> Result<(), Refused> {
        let class = &subscription.class;
        self.rules.check(class, &identity, where_, subscription.watch.as_deref()).map_err(Refused::Denied)?;
        subscription.hidden = self.rules.hidden_fields(class, &identity);
        subscription.identity = identity;
        Ok(())
    }

    /// Step 5: live from now, or (with `since`) after replaying what the client missed. With
    /// `resnapshot` (the `where` of a client that wants snapshots), a position that cannot be
    /// replayed gets the gap and then a fresh snapshot instead of only the gap.
    pub fn start(
        &self,
        connection: ConnectionId,
        request_id: RequestId,
        subscription: Subscription,
        since: Option<Position>,
        resnapshot: Option<Arc<Map<String, Value>>>,
        outbox: &Outbox,
    ) -> Result<Started, Refused> {
        let started = match since {
            None => self.hub.subscribe(connection, request_id, subscription, Start::Now).map(Started::Live),
            Some(since) => {
                let outbox = outbox.clone();
                let resume =
                    Resume { connection, request_id, subscription, since, outbox, skip: Vec::new(), resnapshot };
                self.catchup.start(resume).map(Started::CatchingUp)
            }
        };
        started.map_err(Refused::Hub)
    }

    /// The current rows of the (authorized) subscription's query, as its events would carry
    /// them: matched, read access checked, projected, protected fields stripped.
    pub async fn snapshot(
        &self,
        subscription: &Subscription,
        where_: &Map<String, Value>,
        request_id: &RequestId,
        queue_bytes: usize,
    ) -> Result<SnapshotRead, Refused> {
        // The result is queued whole: it may take half of the connection's queue.
        let (source, rows, bytes) = (&*self.snapshots, self.snapshot_rows, queue_bytes / 2);
        snapshot::take(source, subscription, where_, request_id, rows, bytes).await.map_err(Refused::Snapshot)
    }

    /// Step 5 after a snapshot: a catch-up from where `read` was taken, skipping the changes it
    /// already reflects, so the client's rows plus the events that follow are the table's state.
    pub fn start_after(
        &self,
        connection: ConnectionId,
        request_id: RequestId,
        subscription: Subscription,
        read: &SnapshotRead,
        outbox: &Outbox,
    ) -> Result<Started, Refused> {
        let since = Position::new(read.epoch, read.head);
        let skip = read.skip.clone();
        let resume =
            Resume { connection, request_id, subscription, since, outbox: outbox.clone(), skip, resnapshot: None };
        self.catchup.start(resume).map(Started::CatchingUp).map_err(Refused::Hub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_carry_parse_codes() {
        let code_of = |refused: Refused| refused.refusal().map(|r| (r.code, r.message, r.reconnect));
        assert_eq!(code_of(Refused::Since("bad".into())), Some((1, "since: bad".to_string(), false)));
        assert_eq!(code_of(Refused::Token(TokenError::Expired)).map(|r| r.0), Some(209));
        assert_eq!(
            code_of(Refused::Hub(SubscribeError::TooManySubscriptions { limit: 3 })),
            Some((155, "Too many subscriptions on this connection (limit 3)".to_string(), false))
        );
        assert_eq!(code_of(Refused::Hub(SubscribeError::UnknownConnection)).map(|r| r.2), Some(true));
        assert_eq!(code_of(Refused::Hub(SubscribeError::Cancelled)), None);
    }

    #[test]
    fn since_accepts_positions_and_now() {
        assert_eq!(Admission::since(None), Ok(None));
        assert_eq!(Admission::since(Some("now")), Ok(None));
        let position = Position::new(uuid::Uuid::new_v4(), 42);
        assert_eq!(Admission::since(Some(&position.to_string())), Ok(Some(position)));
        assert!(matches!(Admission::since(Some("42")), Err(Refused::Since(_))));
    }
}
