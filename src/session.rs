//! One Parse LiveQuery connection's state machine: connect, subscribe, update, unsubscribe, with
//! Parse's replies and error codes. No socket I/O: replies go into the connection's outbox,
//! state into the hub; the transport only moves frames. The one thing it awaits is turning a
//! `sessionToken` into an identity ([`Authenticator`], cached).
//!
//! Identity: a subscription's own token wins over the connection's; class rules are checked at
//! subscribe. Tokens in use are re-checked every `revalidate_every` and at their expiry; a
//! subscription whose identity lapsed is suspended (error 209 with its requestId) at a known
//! position, and re-subscribing the same requestId with a fresh token resumes from there.
//!
//! The resume extension (`since` on subscribe) hands the subscription to [`Catchup`], which
//! replays missed changes on a task of its own and then registers it in the hub.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::auth::rules::ClassRules;
use crate::auth::{self, check_keys, Authenticator, Identity, KeyCheck, TokenError};
use crate::catchup::{Catchup, Replies, Resume};
use crate::config::KeyPairs;
use crate::hub::{ConnectionId, Hub, IndexEntry, Outbox, Outgoing, Start, SubscribeError, Subscription};
use crate::position::Position;
use crate::protocol::{self, code, decode, encode_error, encode_reply, Decoded, Reply, Request, RequestId, Subscribe};
use crate::query::{canonical_key, Query, QueryLimits};

/// What every session of one server shares.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub keys: KeyPairs,
    pub query_limits: QueryLimits,
    /// Replays history for subscriptions that resume; `None` refuses `since` positions.
    pub catchup: Option<Arc<Catchup>>,
    /// Verifies session tokens; `None` refuses every token.
    pub auth: Option<Authenticator>,
    pub rules: Arc<ClassRules>,
    /// How often tokens in use are checked again (revocation is noticed within this).
    pub revalidate_every: Duration,
}

/// Parse's INVALID_SESSION_TOKEN.
pub const CODE_INVALID_SESSION_TOKEN: i64 = 209;

#[derive(Debug, Clone)]
struct Client {
    client_id: String,
    installation_id: Option<String>,
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
}

impl ParseSession {
    pub fn new(hub: Arc<Hub>, settings: Arc<SessionSettings>, outbox: Outbox) -> ParseSession {
        let connection = hub.register(outbox.clone());
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
        }
    }

    /// Handles one text frame.
    pub async fn on_text(&mut self, text: &str) {
        match decode(text) {
            Decoded::Ignored => tracing::debug!(connection = self.connection, "ignored a frame that is not JSON"),
            Decoded::Invalid(message) => self.error(code::SCHEMA, &message, true, None),
            Decoded::Request(request) => self.on_request(request).await,
        }
    }

    /// Binary frames are not parsed by Parse; they fail the schema like an empty object.
    pub fn on_binary(&mut self) {
        self.error(code::SCHEMA, "Missing required property: op", true, None);
    }

    /// The text frame for one outbox item, or `None` for an event before `connect`.
    pub fn frame(&self, item: Outgoing) -> Option<String> {
        match item {
            Outgoing::Text(text) => Some(text),
            Outgoing::Event(delivery) => {
                let client = self.client.as_ref()?;
                let position = delivery.positioned.then(|| delivery.payload.position.to_string());
                Some(protocol::encode_event(
                    delivery.op,
                    &client.client_id,
                    client.installation_id.as_deref(),
                    &delivery.request_id,
                    &delivery.payload.object,
                    delivery.payload.original.as_deref(),
                    position.as_deref(),
                ))
            }
            Outgoing::Gap { request_id, gap, position } => {
                let client = self.client.as_ref()?;
                let position = position.to_string();
                Some(reply_text(
                    client,
                    &Reply::Gap { request_id: &request_id, reason: gap.as_str(), position: &position },
                ))
            }
        }
    }

    async fn on_request(&mut self, request: Request) {
        match request {
            Request::Connect(connect) => {
                let master = match check_keys(&self.settings.keys, &connect.keys) {
                    KeyCheck::Accepted { master } => master,
                    KeyCheck::Refused => {
                        return self.error(code::INVALID_KEYS, "Key in request is not valid", true, None)
                    }
                };
                let token = match &connect.session_token {
                    None => None,
                    Some(token) => match self.verify(token).await {
                        Ok(verified) => Some(verified),
                        Err(e) => return self.error(CODE_INVALID_SESSION_TOKEN, &e.to_string(), false, None),
                    },
                };
                // A second connect replaces the first client cleanly (Parse 2024 leaked it).
                self.stop_catchups();
                self.hub.unsubscribe_all(self.connection);
                self.held.clear();
                self.suspended.clear();
                let client = Client {
                    client_id: uuid::Uuid::new_v4().to_string(),
                    installation_id: connect.installation_id,
                    master,
                    token,
                };
                self.push_reply(&client, &Reply::Connected);
                self.client = Some(client);
            }
            Request::Subscribe(subscribe) => {
                if self.client.is_none() {
                    return self.not_connected("subscribing");
                }
                self.subscribe(subscribe).await;
            }
            Request::Update(subscribe) => {
                if self.client.is_none() {
                    self.not_connected("unsubscribing");
                    return self.not_connected("subscribing");
                }
                let suspended = self.suspended.contains_key(&subscribe.request_id);
                if !self.hub.unsubscribe(self.connection, &subscribe.request_id) && !suspended {
                    self.unknown_subscription(&subscribe.request_id);
                }
                self.subscribe(subscribe).await;
            }
            Request::Unsubscribe { request_id } => {
                let Some(client) = self.client.clone() else {
                    return self.not_connected("unsubscribing");
                };
                self.stop_catchup(&request_id);
                self.held.remove(&request_id);
                let suspended = self.suspended.remove(&request_id).is_some();
                if self.hub.unsubscribe(self.connection, &request_id) || suspended {
                    self.push_reply(&client, &Reply::Unsubscribed(&request_id));
                } else {
                    self.unknown_subscription(&request_id);
                }
            }
        }
    }

    async fn subscribe(&mut self, request: Subscribe) {
        let Some(client) = self.client.clone() else { return };
        // A reused requestId replaces the subscription, including one still catching up; one
        // that was suspended resumes where it stopped (unless the client says where).
        self.stop_catchup(&request.request_id);
        self.held.remove(&request.request_id);
        let suspended_at = self.suspended.remove(&request.request_id);
        let request_id = request.request_id.clone();
        let query = match Query::compile(&request.where_, self.settings.query_limits) {
            Ok(query) => query,
            Err(e) => return self.error(code::INVALID_QUERY, &e.0, false, Some(&request_id)),
        };
        let resume_from = match request.since.as_deref() {
            None | Some("now") => suspended_at,
            Some(text) => match text.parse::<Position>() {
                Ok(position) => Some(position),
                Err(e) => return self.error(code::SCHEMA, &format!("since: {e}"), false, Some(&request_id)),
            },
        };
        let own_token = match &request.session_token {
            None => None,
            Some(token) => match self.verify(token).await {
                Ok(verified) => Some(verified),
                Err(e) => {
                    if let Some(position) = suspended_at {
                        // Still suspended: a later fresh token resumes from the same place.
                        self.suspended.insert(request_id.clone(), position);
                    }
                    return self.error(CODE_INVALID_SESSION_TOKEN, &e.to_string(), false, Some(&request_id));
                }
            },
        };
        let mut identity = own_token.as_ref().or(client.token.as_ref()).map(|v| v.identity.clone()).unwrap_or_default();
        identity.master = client.master;
        if let Err(denied) =
            self.settings.rules.check(&request.class_name, &identity, &request.where_, request.watch.as_deref())
        {
            return self.error(denied.code, &denied.message, false, Some(&request_id));
        }
        let positions = request.since.is_some();
        self.held.insert(request_id.clone(), Held { token: own_token, identity: identity.clone() });
        let subscription = Subscription {
            hidden: self.settings.rules.hidden_fields(&request.class_name, &identity),
            key: canonical_key(&request.class_name, &request.where_),
            index: IndexEntry::of(&request.where_),
            class: request.class_name.into(),
            query: Arc::new(query),
            keys: request.keys.map(Into::into),
            watch: request.watch.map(Into::into),
            identity,
            positions,
        };
        let subscribed = {
            let (client, request_id) = (client.clone(), request_id.clone());
            move |position: Position| {
                let position = position.to_string();
                let reply = if positions {
                    Reply::SubscribedAt(&request_id, &position)
                } else {
                    Reply::Subscribed(&request_id)
                };
                Outgoing::Text(reply_text(&client, &reply))
            }
        };
        let result = match (resume_from, &self.settings.catchup) {
            (None, _) => self
                .hub
                .subscribe(self.connection, request_id.clone(), subscription, Start::Now, subscribed)
                .map(|_| ()),
            (Some(since), Some(catchup)) => {
                let refused = {
                    let request_id = request_id.clone();
                    move |e: &SubscribeError| refusal(e, &request_id).map(Outgoing::Text)
                };
                let resume = Resume {
                    connection: self.connection,
                    request_id: request_id.clone(),
                    subscription,
                    since,
                    outbox: self.outbox.clone(),
                    replies: Replies { subscribed: Box::new(subscribed), refused: Box::new(refused) },
                };
                catchup.start(resume).map(|task| {
                    self.catchups.retain(|_, t| !t.is_finished());
                    self.catchups.insert(request_id.clone(), task);
                })
            }
            (Some(_), None) => {
                return self.error(code::SCHEMA, "since: resuming is not available here", false, Some(&request_id))
            }
        };
        if let Err(e) = result {
            self.held.remove(&request_id);
            if let Some(text) = refusal(&e, &request_id) {
                self.outbox.push(Outgoing::Text(text));
            }
        }
    }

    async fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        let Some(auth) = &self.settings.auth else {
            return Err(TokenError::Invalid("session tokens are not accepted here".into()));
        };
        let identity = auth.identify(token).await?;
        Ok(Verified { token: token.into(), identity })
    }

    /// When [`ParseSession::revalidate`] should next run: `None` while no token is in use.
    pub fn next_check(&self) -> Option<Instant> {
        let tokens = self
            .client
            .iter()
            .filter_map(|c| c.token.as_ref())
            .chain(self.held.values().filter_map(|h| h.token.as_ref()));
        tokens.map(|v| auth::next_check(&v.identity, self.last_check, self.settings.revalidate_every)).min()
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
        match &self.settings.auth {
            Some(auth) => auth.recheck(&verified.token, &verified.identity).await,
            None => Err(TokenError::Invalid("session tokens are not accepted here".into())),
        }
    }

    fn suspend(&mut self, request_id: &RequestId, why: &TokenError) {
        self.stop_catchup(request_id);
        self.held.remove(request_id);
        // A subscription still catching up holds only a reservation: it stops at its `since`.
        let position = self.hub.suspend(self.connection, request_id);
        self.hub.unsubscribe(self.connection, request_id);
        if let Some(position) = position {
            self.suspended.insert(request_id.clone(), position);
        }
        self.error(CODE_INVALID_SESSION_TOKEN, &why.to_string(), false, Some(request_id));
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

    fn not_connected(&self, action: &str) {
        self.error(
            code::NOT_FOUND,
            &format!("Can not find this client, make sure you connect to server before {action}"),
            true,
            None,
        );
    }

    fn unknown_subscription(&self, request_id: &RequestId) {
        let client_id = self.client.as_ref().map(|c| c.client_id.as_str()).unwrap_or_default();
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
        self.outbox.push(Outgoing::Text(reply_text(client, reply)));
    }
}

fn reply_text(client: &Client, reply: &Reply<'_>) -> String {
    encode_reply(reply, &client.client_id, client.installation_id.as_deref())
}

/// The error frame for a subscription the hub refused; `None` when the client is gone anyway.
fn refusal(error: &SubscribeError, request_id: &RequestId) -> Option<String> {
    match error {
        SubscribeError::TooManySubscriptions { limit } => Some(encode_error(
            code::LIMIT_EXCEEDED,
            &format!("Too many subscriptions on this connection (limit {limit})"),
            false,
            Some(request_id),
        )),
        SubscribeError::UnknownConnection => Some(encode_error(
            code::NOT_FOUND,
            "Can not find this client, make sure you connect to server before subscribing",
            true,
            None,
        )),
        SubscribeError::Moved(_) | SubscribeError::Cancelled => None,
    }
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
    use serde_json::Value;
    use tokio::sync::mpsc::Receiver;

    fn session(keys: KeyPairs) -> (ParseSession, Receiver<Outgoing>, Arc<Hub>) {
        let hub = Arc::new(Hub::new(5));
        let (outbox, rx) = Outbox::new(64);
        let settings = Arc::new(SessionSettings {
            keys,
            query_limits: QueryLimits::default(),
            catchup: None,
            auth: None,
            rules: Arc::new(ClassRules::default()),
            revalidate_every: Duration::from_secs(5),
        });
        (ParseSession::new(hub.clone(), settings, outbox), rx, hub)
    }

    fn replies(rx: &mut Receiver<Outgoing>) -> Vec<Value> {
        let mut out = Vec::new();
        while let Ok(Outgoing::Text(t)) = rx.try_recv() {
            out.push(serde_json::from_str(&t).unwrap());
        }
        out
    }

    const CONNECT: &str = r#"{"op":"connect","applicationId":"app","installationId":"inst"}"#;
    const SUBSCRIBE: &str = r#"{"op":"subscribe","requestId":1,"query":{"className":"Msg","where":{}}}"#;

    #[tokio::test]
    async fn connect_subscribe_unsubscribe() {
        let (mut s, mut rx, hub) = session(KeyPairs::default());
        s.on_text(CONNECT).await;
        s.on_text(SUBSCRIBE).await;
        s.on_text(r#"{"op":"unsubscribe","requestId":1}"#).await;
        let r = replies(&mut rx);
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
        let r = replies(&mut rx);
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
        let r = replies(&mut rx);
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
        let r = replies(&mut rx);
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
}
