//! Server-Sent Events for browsers: `GET /events/{className}` streams one live query to a plain
//! `EventSource`, from the same hub as WebSocket clients.
//!
//! Parameters: `where` (JSON), `keys` and `watch` (comma-separated field names), `since` (a
//! position to resume from on a first connect; a browser's `Last-Event-ID` header, sent by
//! itself on reconnect, takes precedence). A bad request is refused before the stream starts:
//! 400 with the JSON `{"code", "error"}` the WebSocket would give.
//!
//! Identity: a token from `Authorization: Bearer`, the token cookie, or the `sessionToken`
//! parameter (in that order of precedence); the master key from `X-Parse-Master-Key`. A token
//! that is refused gives 401, a class rule 403, both with the WebSocket's code. A token that
//! lapses while streaming ends the stream with `event: error` (code 209) whose `id:` is where
//! delivery stopped, so a reconnect with a fresh token and that position loses nothing.
//!
//! The stream: a `retry:` hint; then, once the subscription is live (after any replay of
//! missed changes), `event: subscribed` whose `id:` is the live position; data events
//! (`create`/`enter`/`update`/`leave`/`delete`) with `id:` = their position and `data:` =
//! `{"object":…,"original":…}`; `event: gap` when history cannot be replayed (refetch, then
//! carry on); a comment every `keepalive` on an idle stream. A client too slow for its queue is
//! cut off; the browser then reconnects and resumes from its last event.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::{interval_at, Instant, Interval, MissedTickBehavior};

use crate::auth::rules::ClassRules;
use crate::auth::{constant_time_eq, Authenticator, Identity, TokenError};
use crate::catchup::{Catchup, Replies, Resume};
use crate::hub::{ConnectionId, Delivery, Hub, IndexEntry, Outbox, Outgoing, Start, Subscription};
use crate::position::Position;
use crate::protocol::{code, RequestId};
use crate::query::{canonical_key, Query, QueryLimits};
use crate::session::CODE_INVALID_SESSION_TOKEN;

/// Everything an SSE stream needs from the server.
#[derive(Clone)]
pub struct SseSettings {
    pub hub: Arc<Hub>,
    pub auth: Authenticator,
    pub rules: Arc<ClassRules>,
    pub master_key: Option<String>,
    pub token_cookie: String,
    pub revalidate_every: Duration,
    pub catchup: Arc<Catchup>,
    pub query_limits: QueryLimits,
    pub keepalive: Duration,
    pub retry: Duration,
    pub send_queue: usize,
}

/// The URL parameters; unknown ones are refused so that a typo never widens a query.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(rename = "where")]
    where_: Option<String>,
    keys: Option<String>,
    watch: Option<String>,
    since: Option<String>,
    /// A session token in the URL: visible in logs and history; prefer the cookie or header.
    #[serde(rename = "sessionToken")]
    session_token: Option<String>,
}

/// A refusal before the stream starts, with the code the WebSocket protocol would use.
struct Refusal {
    status: StatusCode,
    code: i64,
    message: String,
}

impl Refusal {
    fn bad_request(code: i64, message: impl Into<String>) -> Refusal {
        Refusal { status: StatusCode::BAD_REQUEST, code, message: message.into() }
    }

    fn response(self) -> HttpResponse {
        HttpResponse::build(self.status).json(json!({"code": self.code, "error": self.message}))
    }
}

/// What a valid request asks for.
struct Request {
    subscription: Subscription,
    since: Option<Position>,
    where_: Map<String, Value>,
    /// The token the identity came from, re-checked while streaming.
    token: Option<Arc<str>>,
}

pub async fn events(req: HttpRequest, class: web::Path<String>, settings: web::Data<SseSettings>) -> HttpResponse {
    let mut request = match parse(&req, class.into_inner(), &settings) {
        Ok(request) => request,
        Err(refusal) => return refusal.response(),
    };
    if let Err(refusal) = authorize(&req, &mut request, &settings).await {
        return refusal.response();
    }
    stream(request, settings.get_ref().clone())
}

/// Resolves who is asking and checks the class rules; fills in identity and hidden fields.
async fn authorize(req: &HttpRequest, request: &mut Request, settings: &SseSettings) -> Result<(), Refusal> {
    let master = header(req, "x-parse-master-key")
        .is_some_and(|key| settings.master_key.as_deref().is_some_and(|m| !m.is_empty() && constant_time_eq(m, key)));
    let bearer = header(req, "authorization").and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
    let cookie = header(req, "cookie").and_then(|cookies| {
        cookies
            .split(';')
            .filter_map(|c| c.trim().split_once('='))
            .find(|(name, _)| *name == settings.token_cookie)
            .map(|(_, value)| value.to_string())
    });
    let token = bearer.map(str::to_string).or(cookie).or(request.token.as_deref().map(str::to_string));
    let mut identity = match &token {
        None => Identity::default(),
        Some(token) => settings.auth.identify(token).await.map_err(|e| Refusal {
            status: match e {
                TokenError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::UNAUTHORIZED,
            },
            code: CODE_INVALID_SESSION_TOKEN,
            message: e.to_string(),
        })?,
    };
    identity.master = master;
    let subscription = &mut request.subscription;
    let watch = subscription.watch.as_deref();
    settings.rules.check(&subscription.class, &identity, &request.where_, watch).map_err(|denied| Refusal {
        status: StatusCode::FORBIDDEN,
        code: denied.code,
        message: denied.message,
    })?;
    subscription.hidden = settings.rules.hidden_fields(&subscription.class, &identity);
    subscription.identity = identity;
    request.token = token.map(Into::into);
    Ok(())
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn parse(req: &HttpRequest, class: String, settings: &SseSettings) -> Result<Request, Refusal> {
    let params = web::Query::<Params>::from_query(req.query_string())
        .map_err(|e| Refusal::bad_request(code::SCHEMA, format!("invalid parameters: {e}")))?
        .into_inner();
    if class.is_empty() {
        return Err(Refusal::bad_request(code::SCHEMA, "the class name is empty"));
    }
    let where_: Map<String, Value> = match params.where_.as_deref() {
        None | Some("") => Map::new(),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => map,
            Ok(_) => return Err(Refusal::bad_request(code::SCHEMA, "Invalid type: where must be a JSON object")),
            Err(e) => return Err(Refusal::bad_request(code::SCHEMA, format!("where is not valid JSON: {e}"))),
        },
    };
    let query =
        Query::compile(&where_, settings.query_limits).map_err(|e| Refusal::bad_request(code::INVALID_QUERY, e.0))?;
    let keys = field_list("keys", params.keys.as_deref())?;
    let watch = field_list("watch", params.watch.as_deref())?;
    let last_event_id = req.headers().get("last-event-id").and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty());
    let since = match last_event_id.or(params.since.as_deref()) {
        None | Some("now") => None,
        Some(text) => {
            Some(text.parse::<Position>().map_err(|e| Refusal::bad_request(code::SCHEMA, format!("since: {e}")))?)
        }
    };
    let subscription = Subscription {
        key: canonical_key(&class, &where_),
        index: IndexEntry::of(&where_),
        class: class.into(),
        query: Arc::new(query),
        keys,
        watch,
        identity: Identity::default(),
        hidden: None,
        positions: true,
    };
    Ok(Request { subscription, since, where_, token: params.session_token.map(Into::into) })
}

/// `a,b,c` → field names; empty items and repeats are refused, as the WebSocket schema does.
fn field_list(name: &str, value: Option<&str>) -> Result<Option<Arc<[String]>>, Refusal> {
    let Some(value) = value else { return Ok(None) };
    let mut seen = HashSet::new();
    let mut fields = Vec::new();
    for field in value.split(',').map(str::trim) {
        if field.is_empty() {
            return Err(Refusal::bad_request(code::SCHEMA, format!("{name}: empty field name")));
        }
        if !seen.insert(field) {
            return Err(Refusal::bad_request(code::SCHEMA, format!("{name}: {field} is listed twice")));
        }
        fields.push(field.to_string());
    }
    Ok(Some(fields.into()))
}

/// The one subscription of an SSE stream.
fn request_id() -> RequestId {
    RequestId::from(1)
}

fn stream(request: Request, settings: SseSettings) -> HttpResponse {
    let request_identity = request.subscription.identity.clone();
    let (outbox, queue) = Outbox::new(settings.send_queue);
    let connection = settings.hub.register(outbox.clone());
    let mut guard = Registration { hub: settings.hub.clone(), connection, catchup: None };
    let subscribed = |position: Position| {
        Outgoing::Text(format!("event: subscribed\nid: {position}\ndata: {{\"position\":\"{position}\"}}\n\n"))
    };
    // The stream's own connection holds one subscription, so the hub can only refuse it if
    // the connection vanished meanwhile; answered as a server error, never silently.
    let registered = match request.since {
        // Registered before the response starts: no change after the first byte is missed.
        None => {
            settings.hub.subscribe(connection, request_id(), request.subscription, Start::Now, subscribed).map(|_| ())
        }
        Some(since) => {
            let resume = Resume {
                connection,
                request_id: request_id(),
                subscription: request.subscription,
                since,
                outbox: outbox.clone(),
                replies: Replies { subscribed: Box::new(subscribed), refused: Box::new(|_| None) },
            };
            settings.catchup.start(resume).map(|task| guard.catchup = Some(task))
        }
    };
    if let Err(e) = registered {
        tracing::warn!(error = ?e, "an SSE subscription was refused");
        let message = "cannot subscribe".to_string();
        return Refusal { status: StatusCode::SERVICE_UNAVAILABLE, code: 1, message }.response();
    }
    let mut keepalive = interval_at(Instant::now() + settings.keepalive, settings.keepalive);
    keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let first = Bytes::from(format!("retry: {}\n\n", settings.retry.as_millis()));
    let check = request.token.map(|token| TokenCheck {
        auth: settings.auth.clone(),
        token,
        identity: request_identity,
        every: settings.revalidate_every,
        last: Instant::now(),
    });
    let state = Stream { first: Some(first), queue, outbox, keepalive, check, registration: guard, ended: false };
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache, no-transform"))
        // nginx and similar proxies buffer responses unless told not to.
        .insert_header(("x-accel-buffering", "no"))
        .streaming(futures_util::stream::unfold(state, Stream::next))
}

/// Leaves the hub when the stream is dropped (the client went away or was cut off).
struct Registration {
    hub: Arc<Hub>,
    connection: ConnectionId,
    catchup: Option<AbortHandle>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(task) = &self.catchup {
            task.abort();
        }
        self.hub.disconnect(self.connection);
    }
}

struct Stream {
    first: Option<Bytes>,
    queue: mpsc::Receiver<Outgoing>,
    outbox: Outbox,
    keepalive: Interval,
    check: Option<TokenCheck>,
    registration: Registration,
    ended: bool,
}

/// The stream's token, re-checked every `every` and at its expiry.
struct TokenCheck {
    auth: Authenticator,
    token: Arc<str>,
    identity: Identity,
    every: Duration,
    last: Instant,
}

impl TokenCheck {
    fn due(&self) -> Instant {
        crate::auth::next_check(&self.identity, self.last, self.every)
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Stream {
    async fn next(mut self) -> Option<(Result<Bytes, Infallible>, Stream)> {
        if let Some(first) = self.first.take() {
            return Some((Ok(first), self));
        }
        if self.ended {
            return None;
        }
        let text = loop {
            break tokio::select! {
                biased;
                _ = self.outbox.closed() => {
                    self.ended = true;
                    frame_error(code::LIMIT_EXCEEDED, "send queue full: client too slow; reconnect to resume")
                }
                item = self.queue.recv() => match item {
                    Some(item) => frame(item),
                    None => return None,
                },
                _ = self.keepalive.tick() => ": keep-alive\n\n".to_string(),
                _ = sleep_until(self.check.as_ref().map(TokenCheck::due)) => match self.revalidate().await {
                    Ok(()) => continue,
                    Err(error_event) => {
                        self.ended = true;
                        // Everything up to where delivery stopped is already queued: send it
                        // before the error, whose id is that position.
                        let mut text = String::new();
                        while let Ok(item) = self.queue.try_recv() {
                            text.push_str(&frame(item));
                        }
                        text.push_str(&error_event);
                        text
                    }
                },
            };
        };
        self.keepalive.reset();
        Some((Ok(Bytes::from(text)), self))
    }
}

impl Stream {
    /// Re-checks the token: a changed identity is updated in the hub; a lapsed one stops
    /// delivery and yields the final `error` event, whose id is where delivery stopped.
    async fn revalidate(&mut self) -> Result<(), String> {
        let Some(check) = self.check.as_mut() else { return Ok(()) };
        check.last = Instant::now();
        let identity = match check.auth.recheck(&check.token, &check.identity).await {
            Ok(identity) => identity,
            Err(e) => {
                let hub = &self.registration.hub;
                let stopped =
                    hub.suspend(self.registration.connection, &request_id()).unwrap_or_else(|| hub.position());
                self.registration.hub.unsubscribe(self.registration.connection, &request_id());
                let data = json!({"code": CODE_INVALID_SESSION_TOKEN, "error": e.to_string()});
                return Err(format!("event: error\nid: {stopped}\ndata: {data}\n\n"));
            }
        };
        if identity != check.identity {
            self.registration.hub.set_identity(self.registration.connection, &request_id(), identity.clone());
            check.identity = identity;
        }
        Ok(())
    }
}

fn frame(item: Outgoing) -> String {
    match item {
        Outgoing::Text(text) => text,
        Outgoing::Event(Delivery { op, payload, .. }) => {
            let mut out =
                String::with_capacity(64 + payload.object.len() + payload.original.as_ref().map_or(0, String::len));
            out.push_str("event: ");
            out.push_str(op.as_str());
            out.push_str("\nid: ");
            out.push_str(&payload.position.to_string());
            out.push_str("\ndata: {\"object\":");
            out.push_str(&payload.object);
            if let Some(original) = &payload.original {
                out.push_str(",\"original\":");
                out.push_str(original);
            }
            out.push_str("}\n\n");
            out
        }
        Outgoing::Gap { gap, position, .. } => {
            format!(
                "event: gap\nid: {position}\ndata: {{\"reason\":\"{}\",\"position\":\"{position}\"}}\n\n",
                gap.as_str()
            )
        }
    }
}

fn frame_error(code: i64, message: &str) -> String {
    format!("event: error\ndata: {}\n\n", json!({"code": code, "error": message}))
}
