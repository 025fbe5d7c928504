//! One Parse LiveQuery connection's state machine: connect, subscribe, update, unsubscribe, with
//! Parse's replies and error codes. No socket I/O: replies go into the connection's outbox,
//! state into the hub; the transport only moves frames. The one thing it awaits is turning a
//! `sessionToken` into an identity (through [`Admission`], cached).
//!
//! Identity: a subscription's own token wins over the connection's; class rules are checked at
//! subscribe. Tokens in use are re-checked every `revalidate_every` and at their expiry; a
//! subscription whose identity lapsed is suspended (error 209 with its requestId) at a known
//! position, and re-subscribing the same requestId with a fresh token resumes from there.
//!
//! Subscriptions are built, refused and started by the pipeline both transports share
//! ([`Admission`]); the resume extension (`since` on subscribe) starts them through catch-up
//! (`crate::catchup`), which replays missed changes on a task of its own, then joins the hub.
//! A connection's requests past `limits.request_rate` are refused (155).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::admission::{Admission, Refused, Started, SubscribeRequest};
use crate::auth::{self, check_keys, Identity, KeyCheck, TokenError};
use crate::hub::{ConnectionId, Hub, Outbox, Outgoing, Subscription};
use crate::position::Position;
use crate::protocol::{
    self, code, decode, encode_error, encode_reply, Connect, Decoded, KeyPairs, Refusal, Reply, Request, RequestId,
    Subscribe,
};
use crate::quota::TokenBucket;
use crate::telemetry::{Metrics, Transport};

/// What every session of one server shares.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub keys: KeyPairs,
    pub admission: Arc<Admission>,
    /// `connect`, `subscribe` and `update` requests per second (`limits.request_rate`), with
    /// bursts of `request_burst` (a reconnecting SDK re-sends every subscription at once).
    pub request_rate: u32,
    pub request_burst: u32,
    pub metrics: Arc<Metrics>,
}

/// What every frame to a client names it by.
#[derive(Debug, Clone)]
struct ClientIds {
    client_id: String,
    installation_id: Option<String>,
}

/// Frames outbox items for a connection's client. It needs only the client's ids, so the
/// transport can keep sending while the session is busy (awaiting a token lookup).
#[derive(Debug, Clone, Default)]
pub struct Framer(Arc<std::sync::Mutex<Option<ClientIds>>>);

impl Framer {
    fn set(&self, ids: Option<ClientIds>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = ids;
    }

    /// The text frame for one outbox item, or `None` for an event before `connect`.
    pub fn frame(&self, item: Outgoing) -> Option<String> {
        if let Outgoing::Text(text) = item {
            return Some(text);
        }
        let ids = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let ids = ids.as_ref()?;
        let text = match item {
            Outgoing::Text(text) => text,
            Outgoing::Event(delivery) => {
                let position = delivery.positioned.then(|| delivery.payload.position.to_string());
                protocol::encode_event(
                    delivery.op,
                    &ids.client_id,
                    ids.installation_id.as_deref(),
                    &delivery.request_id,
                    &delivery.payload.object,
                    delivery.payload.original.as_deref(),
                    position.as_deref(),
                )
            }
            Outgoing::Subscribed { request_id, position, positioned } => {
                let position = position.to_string();
                let reply = if positioned {
                    Reply::SubscribedAt(&request_id, &position)
                } else {
                    Reply::Subscribed(&request_id)
                };
                reply_text(ids, &reply)
            }
            Outgoing::Refused { request_id, refusal } => refusal_text(&refusal, &request_id),
            Outgoing::Gap { request_id, gap, position, snapshot } => {
                let position = position.to_string();
                let reason = gap.as_str();
                let reply = Reply::Gap { request_id: &request_id, reason, position: &position, snapshot };
                reply_text(ids, &reply)
            }
            Outgoing::Result { request_id, objects, .. } => {
                protocol::encode_result(&objects, &request_id, &ids.client_id, ids.installation_id.as_deref())
            }
        };
        Some(text)
    }
}

#[derive(Debug, Clone)]
struct Client {
    ids: ClientIds,
    master: bool,
    token: Option<Verified>,
}

/// A token and the identity it gave when last checked.
#[derive(Debug, Clone)]
struct Verified {
    token: Arc<str>,
    identity: Identity,
}

/// What the session remembers of a subscription it handed to the hub.
#[derive(Debug, Clone)]
struct Held {
    /// The subscription's own token; `None` uses the connection's.
    token: Option<Verified>,
    /// The identity it was registered with (to notice changes on revalidation).
    identity: Identity,
    /// The subscription as admitted, and its `where`, for `query` (its current rows).
    subscription: Arc<(Subscription, Map<String, Value>)>,
}

pub struct ParseSession {
    hub: Arc<Hub>,
    settings: Arc<SessionSettings>,
    connection: ConnectionId,
    outbox: Outbox,
    client: Option<Client>,
    /// Catch-up tasks started by this session, by requestId; stopped when it ends or the
    /// subscription is replaced or removed.
    catchups: HashMap<RequestId, AbortHandle>,
    held: HashMap<RequestId, Held>,
    /// Subscriptions whose identity lapsed, and the position each stopped at.
    suspended: HashMap<RequestId, Position>,
    last_check: Instant,
    /// Requests that cost work (token lookups, query compilation).
    requests: TokenBucket,
    framer: Framer,
}

impl ParseSession {
    pub fn new(settings: Arc<SessionSettings>, outbox: Outbox) -> ParseSession {
        let hub = settings.admission.hub().clone();
        let connection = hub.register(outbox.clone(), Transport::WebSocket);
        let requests = TokenBucket::with_burst(settings.request_rate, settings.request_burst);
        ParseSession {
            hub,
            settings,
            connection,
            outbox,
            client: None,
            catchups: HashMap::new(),
            held: HashMap::new(),
            suspended: HashMap::new(),
            last_check: Instant::now(),
            requests,
            framer: Framer::default(),
        }
    }

    /// Handles one text frame.
    pub async fn on_text(&mut self, text: &str) {
        match decode(text) {
            Decoded::Ignored => tracing::debug!(connection = self.connection, "ignored a frame that is not JSON"),
            Decoded::Invalid(message) => self.error(code::SCHEMA, &message, true, None),
            Decoded::Refused { request_id, refusal } => {
                self.settings.metrics.refused(refusal.code);
                self.outbox.push(Outgoing::Text(refusal_text(&refusal, &request_id)));
            }
            Decoded::Request(request) => self.on_request(request).await,
        }
    }

    /// Binary frames are not parsed by Parse; they fail the schema like an empty object.
    pub fn on_binary(&mut self) {
        self.error(code::SCHEMA, "Missing required property: op", true, None);
    }

    /// The connection's id in the hub (as logs name it).
    pub fn connection(&self) -> ConnectionId {
        self.connection
    }

    /// A framer that follows this session's client, for use while the session is busy.
    pub fn framer(&self) -> Framer {
        self.framer.clone()
    }

    async fn on_request(&mut self, request: Request) {
        if !matches!(request, Request::Unsubscribe { .. }) && !self.requests.take() {
            return self.too_many_requests(&request);
        }
        match request {
            Request::Connect(connect) => self.connect(connect).await,
            Request::Subscribe(subscribe) if self.client.is_some() => self.subscribe(subscribe).await,
            Request::Subscribe(_) => self.not_connected("subscribing"),
            Request::Update(subscribe) if self.client.is_some() => self.update(subscribe).await,
            Request::Update(_) => {
                self.not_connected("unsubscribing");
                self.not_connected("subscribing");
            }
            Request::Unsubscribe { request_id } => self.unsubscribe(&request_id),
            Request::Query { request_id } if self.client.is_some() => self.query(request_id).await,
            Request::Query { .. } => self.not_connected("querying"),
        }
    }

    async fn connect(&mut self, connect: Connect) {
        let master = match check_keys(&self.settings.keys, &connect.keys) {
            KeyCheck::Accepted { master } => master,
            KeyCheck::Refused => return self.error(code::INVALID_KEYS, "Key in request is not valid", true, None),
        };
        let token = match &connect.session_token {
            None => None,
            Some(token) => match self.verify(token).await {
                Ok(verified) => Some(verified),
                Err(e) => return self.error(code::INVALID_SESSION_TOKEN, &e.to_string(), false, None),
            },
        };
        // A second connect replaces the first client cleanly (Parse 2024 leaked it).
        self.stop_catchups();
        self.hub.unsubscribe_all(self.connection);
        self.held.clear();
        self.suspended.clear();
        let ids = ClientIds { client_id: uuid::Uuid::new_v4().to_string(), installation_id: connect.installation_id };
        self.framer.set(Some(ids.clone()));
        let client = Client { ids, master, token };
        self.push_reply(&client, &Reply::Connected);
        self.client = Some(client);
    }

    /// Parse's `update`: replaces a subscription's query in place.
    async fn update(&mut self, subscribe: Subscribe) {
        let suspended = self.suspended.contains_key(&subscribe.request_id);
        if !self.hub.unsubscribe(self.connection, &subscribe.request_id) && !suspended {
            self.unknown_subscription(&subscribe.request_id);
        }
        self.subscribe(subscribe).await;
    }

    fn unsubscribe(&mut self, request_id: &RequestId) {
        let Some(client) = self.client.clone() else {
            return self.not_connected("unsubscribing");
        };
        self.stop_catchup(request_id);
        self.held.remove(request_id);
        let suspended = self.suspended.remove(request_id).is_some();
        if self.hub.unsubscribe(self.connection, request_id) || suspended {
            self.push_reply(&client, &Reply::Unsubscribed(request_id));
        } else {
            self.unknown_subscription(request_id);
        }
    }

    /// Parse's `query` (the SDK's `subscription.find()`): the current rows of a subscription's
    /// query, as its identity may read them, in a `result` frame. The subscription is unchanged.
    async fn query(&mut self, request_id: RequestId) {
        let Some(held) = self.held.get(&request_id) else {
            return self.unknown_subscription(&request_id);
        };
        let (mut subscription, where_) = (held.subscription.0.clone(), held.subscription.1.clone());
        subscription.identity = held.identity.clone();
        let admission = self.settings.admission.clone();
        match admission.snapshot(&subscription, &where_, &request_id, self.outbox.max_bytes()).await {
            Ok(read) => {
                self.outbox.send(Outgoing::Result { request_id, objects: read.objects, reset: false }).await;
            }
            Err(refused) => {
                if let Some(refusal) = refused.refusal() {
                    self.settings.metrics.refused(refusal.code);
                    self.outbox.push(Outgoing::Text(refusal_text(&refusal, &request_id)));
                }
            }
        }
    }

    async fn subscribe(&mut self, request: Subscribe) {
        // A reused requestId replaces the subscription, including one still catching up; one
        // that was suspended resumes where it stopped (unless the client says where).
        let request_id = request.request_id.clone();
        self.stop_catchup(&request_id);
        self.held.remove(&request_id);
        let suspended_at = self.suspended.remove(&request_id);
        if let Err(refused) = self.admit(request, suspended_at).await {
            // The replacement failed, so nothing holds the requestId: the old subscription goes
            // too (it is no longer tracked for token re-checks).
            self.hub.unsubscribe(self.connection, &request_id);
            if let Some(refusal) = refused.refusal() {
                self.settings.metrics.refused(refusal.code);
                tracing::info!(
                    connection = self.connection,
                    code = refusal.code,
                    step = refused.step(),
                    "subscription refused"
                );
                self.outbox.push(Outgoing::Text(refusal_text(&refusal, &request_id)));
            }
        }
    }

    /// The shared pipeline ([`Admission`]) with this connection's identity and resume rules.
    async fn admit(&mut self, request: Subscribe, suspended_at: Option<Position>) -> Result<(), Refused> {
        let Some(client) = self.client.clone() else { return Ok(()) };
        let admission = self.settings.admission.clone();
        let Subscribe { request_id, class_name, where_, keys, watch, session_token, since, snapshot } = request;
        let positions = since.is_some();
        let mut subscription =
            admission.compile(SubscribeRequest { class: &class_name, where_: &where_, keys, watch, positions })?;
        let resume_from = Admission::since(since.as_deref())?.or(suspended_at);
        let own_token = match &session_token {
            None => None,
            Some(token) => match self.verify(token).await {
                Ok(verified) => Some(verified),
                Err(e) => {
                    if let Some(position) = suspended_at {
                        // Still suspended: a later fresh token resumes from the same place.
                        self.suspended.insert(request_id, position);
                    }
                    return Err(Refused::Token(e));
                }
            },
        };
        let mut identity = own_token.as_ref().or(client.token.as_ref()).map(|v| v.identity.clone()).unwrap_or_default();
        identity.master = client.master;
        admission.authorize(&mut subscription, &where_, identity.clone())?;
        let kept = Arc::new((subscription.clone(), where_.clone()));
        self.held.insert(request_id.clone(), Held { token: own_token, identity, subscription: kept });
        let started = match resume_from {
            // A snapshot, then the changes after it (a resume replays instead).
            None if snapshot => match admission
                .snapshot(&subscription, &where_, &request_id, self.outbox.max_bytes())
                .await
            {
                Ok(mut read) => {
                    let objects = std::mem::take(&mut read.objects);
                    self.outbox.send(Outgoing::Result { request_id: request_id.clone(), objects, reset: false }).await;
                    admission.start_after(self.connection, request_id.clone(), subscription, &read, &self.outbox)
                }
                Err(refused) => Err(refused),
            },
            _ => {
                let resnapshot = snapshot.then(|| Arc::new(where_.clone()));
                let outbox = &self.outbox;
                admission.start(self.connection, request_id.clone(), subscription, resume_from, resnapshot, outbox)
            }
        };
        match started {
            Ok(Started::Live(_)) => Ok(()),
            Ok(Started::CatchingUp(task)) => {
                self.settings.metrics.replay_started(Transport::WebSocket);
                self.catchups.retain(|_, t| !t.is_finished());
                self.catchups.insert(request_id, task);
                Ok(())
            }
            Err(refused) => {
                self.held.remove(&request_id);
                Err(refused)
            }
        }
    }

    async fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        let identity = self.settings.admission.identify(token).await?;
        Ok(Verified { token: token.into(), identity })
    }

    /// When [`ParseSession::revalidate`] should next run: `None` while no token is in use.
    pub fn next_check(&self) -> Option<Instant> {
        let tokens = self
            .client
            .iter()
            .filter_map(|c| c.token.as_ref())
            .chain(self.held.values().filter_map(|h| h.token.as_ref()));
        let every = self.settings.admission.revalidate_every;
        tokens.map(|v| auth::next_check(&v.identity, self.last_check, every)).min()
    }

    /// Checks every token in use again. A subscription whose identity lapsed is suspended and
    /// the client told; one whose identity changed (roles) is updated in the hub.
    pub async fn revalidate(&mut self) {
        self.last_check = Instant::now();
        let Some(client) = self.client.clone() else { return };
        let mut connection_identity: Option<Result<Identity, TokenError>> = None;
        if let Some(verified) = &client.token {
            let outcome = self.reverify(verified).await;
            if let Some(c) = self.client.as_mut() {
                c.token = outcome
                    .as_ref()
                    .ok()
                    .map(|identity| Verified { token: verified.token.clone(), identity: identity.clone() });
            }
            connection_identity = Some(outcome);
        }
        let held: Vec<(RequestId, Held)> = self.held.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut rechecked: HashMap<Arc<str>, Result<Identity, TokenError>> = HashMap::new();
        for (request_id, held) in held {
            let outcome = match &held.token {
                Some(verified) => match rechecked.get(&verified.token) {
                    Some(outcome) => outcome.clone(),
                    None => {
                        let outcome = self.reverify(verified).await;
                        rechecked.insert(verified.token.clone(), outcome.clone());
                        outcome
                    }
                },
                None => match &connection_identity {
                    Some(outcome) => outcome.clone(),
                    None => continue, // anonymous: nothing to lapse
                },
            };
            match outcome {
                Ok(mut identity) => {
                    // The token's identity; master comes from the connection's key.
                    identity.master = client.master;
                    if identity != held.identity
                        && self.hub.set_identity(self.connection, &request_id, identity.clone())
                    {
                        if let Some(h) = self.held.get_mut(&request_id) {
                            h.identity = identity;
                            if let Some(token) = h.token.as_mut() {
                                token.identity = h.identity.clone();
                            }
                        }
                    }
                }
                Err(e) => self.suspend(&request_id, &e),
            }
        }
    }

    async fn reverify(&self, verified: &Verified) -> Result<Identity, TokenError> {
        self.settings.admission.recheck(&verified.token, &verified.identity).await
    }

    fn suspend(&mut self, request_id: &RequestId, why: &TokenError) {
        self.stop_catchup(request_id);
        self.held.remove(request_id);
        // A subscription still catching up holds only a reservation, which is cancelled.
        if let Some(position) = self.hub.suspend(self.connection, request_id) {
            self.suspended.insert(request_id.clone(), position);
        }
        self.error(code::INVALID_SESSION_TOKEN, &why.to_string(), false, Some(request_id));
    }

    fn stop_catchups(&mut self) {
        for (_, task) in self.catchups.drain() {
            task.abort();
        }
    }

    fn stop_catchup(&mut self, request_id: &RequestId) {
        if let Some(task) = self.catchups.remove(request_id) {
            task.abort();
        }
    }

    /// A request past the rate: refused with 155, the connection kept.
    fn too_many_requests(&self, request: &Request) {
        let request_id = match request {
            Request::Subscribe(s) | Request::Update(s) => Some(&s.request_id),
            Request::Query { request_id } => Some(request_id),
            Request::Connect(_) | Request::Unsubscribe { .. } => None,
        };
        if request_id.is_some() {
            self.settings.metrics.refused(code::LIMIT_EXCEEDED);
        }
        let rate = self.settings.request_rate;
        let message = format!("Too many requests on this connection (limits.request_rate = {rate} per second)");
        self.error(code::LIMIT_EXCEEDED, &message, false, request_id);
    }

    fn not_connected(&self, action: &str) {
        self.error(
            code::NOT_FOUND,
            &format!("Can not find this client, make sure you connect to server before {action}"),
            true,
            None,
        );
    }

    fn unknown_subscription(&self, request_id: &RequestId) {
        let client_id = self.client.as_ref().map(|c| c.ids.client_id.as_str()).unwrap_or_default();
        self.error(
            code::NOT_FOUND,
            &format!(
                "Cannot find subscription with clientId {client_id} subscriptionId {request_id}. \
                 Make sure you subscribe to live query server before unsubscribing."
            ),
            true,
            None,
        );
    }

    fn error(&self, code: i64, message: &str, reconnect: bool, request_id: Option<&RequestId>) {
        self.outbox.push(Outgoing::Text(encode_error(code, message, reconnect, request_id)));
    }

    fn push_reply(&self, client: &Client, reply: &Reply<'_>) {
        self.outbox.push(Outgoing::Text(reply_text(&client.ids, reply)));
    }
}

fn reply_text(ids: &ClientIds, reply: &Reply<'_>) -> String {
    encode_reply(reply, &ids.client_id, ids.installation_id.as_deref())
}

/// The error frame for a refused subscription: one that concerns the connection (reconnect)
/// carries no requestId, as in Parse.
fn refusal_text(refusal: &Refusal, request_id: &RequestId) -> String {
    let request_id = (!refusal.reconnect).then_some(request_id);
    encode_error(refusal.code, &refusal.message, refusal.reconnect, request_id)
}

impl Drop for ParseSession {
    fn drop(&mut self) {
        self.stop_catchups();
        self.hub.disconnect(self.connection);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::rules::ClassRules;
    use crate::testing::{self, TokenTable};
    use serde_json::Value;
    use std::time::Duration;

    struct Harness {
        session: ParseSession,
        rx: crate::hub::Queue,
        hub: Arc<Hub>,
        tokens: Arc<TokenTable>,
    }

    fn session(keys: KeyPairs) -> (ParseSession, crate::hub::Queue, Arc<Hub>) {
        let Harness { session, rx, hub, .. } = harness(keys);
        (session, rx, hub)
    }

    fn harness(keys: KeyPairs) -> Harness {
        let hub = Arc::new(Hub::new(crate::hub::HubLimits::per_connection(5)));
        let tokens = Arc::new(TokenTable::default());
        let (outbox, rx) = Outbox::new(crate::hub::QueueBudget::frames(64));
        let admission = testing::admission(&hub, tokens.clone(), ClassRules::default());
        let metrics = Arc::new(crate::telemetry::Metrics::new());
        let settings = SessionSettings { keys, admission, request_rate: 5, request_burst: 20, metrics };
        let session = ParseSession::new(Arc::new(settings), outbox);
        Harness { session, rx, hub, tokens }
    }

    /// Every frame queued so far, as the client would receive it.
    fn frames(session: &ParseSession, rx: &mut crate::hub::Queue) -> Vec<Value> {
        let mut out = Vec::new();
        while let Ok(item) = rx.try_recv() {
            if let Some(text) = session.framer().frame(item) {
                out.push(serde_json::from_str(&text).unwrap());
            }
        }
        out
    }

    /// The next frame, waiting for it (catch-up runs on a task of its own).
    async fn next_frame(session: &ParseSession, rx: &mut crate::hub::Queue) -> Value {
        let item = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("a frame").unwrap();
        serde_json::from_str(&session.framer().frame(item).expect("framed")).unwrap()
    }

    const CONNECT: &str = r#"{"op":"connect","applicationId":"app","installationId":"inst"}"#;
    const SUBSCRIBE: &str = r#"{"op":"subscribe","requestId":1,"query":{"className":"Msg","where":{}}}"#;

    #[tokio::test]
    async fn connect_subscribe_unsubscribe() {
        let (mut s, mut rx, hub) = session(KeyPairs::default());
        s.on_text(CONNECT).await;
        s.on_text(SUBSCRIBE).await;
        s.on_text(r#"{"op":"unsubscribe","requestId":1}"#).await;
        let r = frames(&s, &mut rx);
        let client_id = r[0]["clientId"].as_str().unwrap().to_string();
        assert_eq!(uuid::Uuid::parse_str(&client_id).unwrap().get_version_num(), 4);
        assert_eq!(r[0], serde_json::json!({"op": "connected", "clientId": client_id, "installationId": "inst"}));
        assert_eq!(
            r[1],
            serde_json::json!({"op": "subscribed", "clientId": client_id, "installationId": "inst", "requestId": 1})
        );
        assert_eq!(r[2]["op"], "unsubscribed");
        assert_eq!(hub.stats().subscriptions, 0);
        drop(s);
        assert_eq!(hub.stats().connections, 0);
    }

    #[tokio::test]
    async fn errors_before_connect() {
        let (mut s, mut rx, _) = session(KeyPairs::default());
        s.on_text(SUBSCRIBE).await;
        s.on_text(r#"{"op":"unsubscribe","requestId":1}"#).await;
        s.on_text(r#"{"op":"update","requestId":1,"query":{"className":"Msg","where":{}}}"#).await;
        let r = frames(&s, &mut rx);
        let messages: Vec<_> =
            r.iter().map(|v| (v["code"].as_i64().unwrap(), v["error"].as_str().unwrap().to_string())).collect();
        assert_eq!(
            messages,
            [
                (2, "Can not find this client, make sure you connect to server before subscribing".into()),
                (2, "Can not find this client, make sure you connect to server before unsubscribing".into()),
                (2, "Can not find this client, make sure you connect to server before unsubscribing".into()),
                (2, "Can not find this client, make sure you connect to server before subscribing".into()),
            ]
        );
        assert!(r.iter().all(|v| v["requestId"].is_null() && v["reconnect"] == true));
    }

    #[tokio::test]
    async fn update_of_unknown_subscription_errors_then_subscribes() {
        let (mut s, mut rx, hub) = session(KeyPairs::default());
        s.on_text(CONNECT).await;
        s.on_text(r#"{"op":"update","requestId":9,"query":{"className":"Msg","where":{"a":1}}}"#).await;
        let r = frames(&s, &mut rx);
        let client_id = r[0]["clientId"].as_str().unwrap();
        assert_eq!(
            r[1]["error"],
            format!("Cannot find subscription with clientId {client_id} subscriptionId 9. Make sure you subscribe to live query server before unsubscribing.")
        );
        assert_eq!(r[2]["op"], "subscribed");
        assert_eq!(hub.stats().subscriptions, 1);
    }

    #[tokio::test]
    async fn bad_keys_bad_queries_and_limits() {
        let keys = KeyPairs { javascript_key: Some("js".into()), ..KeyPairs::default() };
        let (mut s, mut rx, hub) = session(keys);
        s.on_text(r#"{"op":"connect","applicationId":"app","javascriptKey":"wrong"}"#).await;
        s.on_text(r#"{"op":"connect","applicationId":"app","javascriptKey":"js"}"#).await;
        s.on_text(r#"{"op":"subscribe","requestId":1,"query":{"className":"Msg","where":{"a":{"$inQuery":{}}}}}"#)
            .await;
        for id in 2..=7 {
            s.on_text(&format!(r#"{{"op":"subscribe","requestId":{id},"query":{{"className":"Msg","where":{{}}}}}}"#))
                .await;
        }
        s.on_binary();
        let r = frames(&s, &mut rx);
        assert_eq!(
            r[0],
            serde_json::json!({"op":"error","error":"Key in request is not valid","code":4,"reconnect":true,"requestId":null})
        );
        assert_eq!(r[1]["op"], "connected");
        assert_eq!(
            r[2],
            serde_json::json!({"op":"error","error":"Unsupported query operator: $inQuery \u{2014} relations and sub-queries cannot be evaluated on a single row","code":102,"reconnect":false,"requestId":1})
        );
        assert_eq!(r[8]["code"], 155);
        assert_eq!(r[8]["requestId"], 7);
        assert_eq!(r[9]["error"], "Missing required property: op");
        assert_eq!(hub.stats().subscriptions, 5);
    }

    #[tokio::test]
    async fn a_lapsed_token_suspends_and_a_fresh_one_resumes_where_it_stopped() {
        let Harness { session: mut s, mut rx, hub, tokens } = harness(KeyPairs::default());
        tokens.user("t1", "u1");
        tokens.user("t2", "u1");
        s.on_text(r#"{"op":"connect","applicationId":"app","sessionToken":"t1"}"#).await;
        s.on_text(SUBSCRIBE).await;
        assert_eq!(
            frames(&s, &mut rx).iter().map(|f| f["op"].clone()).collect::<Vec<_>>(),
            ["connected", "subscribed"]
        );
        assert!(s.next_check().is_some(), "a token in use is re-checked");
        tokens.set("t1", Err(TokenError::Expired));
        s.revalidate().await;
        let r = frames(&s, &mut rx);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0]["code"].as_i64(), r[0]["requestId"].as_i64()), (Some(209), Some(1)));
        assert_eq!(r[0]["error"], "Session token is expired.");
        assert_eq!(hub.stats().subscriptions, 0, "nothing more is delivered");
        // A refused token keeps it suspended; a fresh one resumes it (through catch-up).
        s.on_text(r#"{"op":"subscribe","requestId":1,"sessionToken":"nope","query":{"className":"Msg","where":{}}}"#)
            .await;
        assert_eq!(frames(&s, &mut rx)[0]["code"], 209);
        s.on_text(r#"{"op":"subscribe","requestId":1,"sessionToken":"t2","query":{"className":"Msg","where":{}}}"#)
            .await;
        let frame = next_frame(&s, &mut rx).await;
        assert_eq!((frame["op"].as_str(), frame["requestId"].as_i64()), (Some("subscribed"), Some(1)));
        assert_eq!(hub.stats().subscriptions, 1);
    }

    #[tokio::test]
    async fn a_refused_token_at_connect_is_209_without_a_client() {
        let (mut s, mut rx, _) = session(KeyPairs::default());
        s.on_text(r#"{"op":"connect","applicationId":"app","sessionToken":"nope"}"#).await;
        s.on_text(SUBSCRIBE).await;
        let r = frames(&s, &mut rx);
        assert_eq!(
            (r[0]["code"].as_i64(), r[0]["error"].as_str()),
            (Some(209), Some("Invalid session token: unknown token"))
        );
        assert_eq!(r[1]["code"], 2, "not connected");
    }

    #[tokio::test]
    async fn keys_longer_than_the_field_list_limit_are_refused() {
        let (mut s, mut rx, hub) = session(KeyPairs::default());
        s.on_text(CONNECT).await;
        let keys: Vec<String> = (0..9).map(|i| format!("f{i}")).collect();
        let subscribe = serde_json::json!({"op": "subscribe", "requestId": 4,
            "query": {"className": "Msg", "where": {}, "keys": keys}});
        s.on_text(&subscribe.to_string()).await;
        let r = frames(&s, &mut rx);
        assert_eq!(
            (r[1]["code"].as_i64(), r[1]["requestId"].as_i64(), r[1]["error"].as_str()),
            (Some(102), Some(4), Some("keys lists 9 fields, more than limits.field_list (8)"))
        );
        assert_eq!(hub.stats().subscriptions, 0);
    }

    #[tokio::test]
    async fn requests_past_the_rate_are_refused_and_the_connection_stays() {
        let (mut s, mut rx, hub) = session(KeyPairs::default());
        s.on_text(CONNECT).await;
        for id in 1..=25 {
            s.on_text(&format!(
                r#"{{"op":"subscribe","requestId":{id},"query":{{"className":"Msg","where":{{"n":{id}}}}}}}"#
            ))
            .await;
        }
        let r = frames(&s, &mut rx);
        let refused: Vec<_> =
            r.iter().filter(|f| f["error"].as_str().is_some_and(|e| e.contains("request_rate"))).collect();
        // A burst of 20 (the connect took one), then the rate of 5 a second: no time has passed.
        assert_eq!(refused.len(), 6, "{r:?}");
        assert_eq!(refused[0]["error"], "Too many requests on this connection (limits.request_rate = 5 per second)");
        assert_eq!(refused[0]["requestId"], 20);
        assert_eq!(hub.stats().subscriptions, 5, "the hub limit of this harness is 5 anyway");
        s.on_text(r#"{"op":"unsubscribe","requestId":1}"#).await;
        assert_eq!(frames(&s, &mut rx)[0]["op"], "unsubscribed", "unsubscribes are never refused");
    }

    #[tokio::test]
    async fn a_failed_resubscribe_leaves_no_untracked_subscription() {
        let (mut s, mut rx, hub) = session(KeyPairs::default());
        s.on_text(CONNECT).await;
        s.on_text(SUBSCRIBE).await;
        s.on_text(r#"{"op":"subscribe","requestId":1,"query":{"className":"Msg","where":{"a":{"$bogus":1}}}}"#).await;
        let r = frames(&s, &mut rx);
        assert_eq!((r[2]["code"].as_i64(), r[2]["requestId"].as_i64()), (Some(102), Some(1)));
        assert_eq!(hub.stats().subscriptions, 0);
    }
}
