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
//! cut off; the browser then reconnects and resumes from its last event. When the gateway shuts
//! down, what is queued is sent, then `event: shutdown` whose `id:` is where the stream stopped,
//! and the stream ends: the browser reconnects (to another gateway) and loses nothing.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::task::AbortHandle;
use tokio::time::{interval_at, Instant, Interval, MissedTickBehavior};

use super::{peer_ip, sleep_until, turned_away};
use crate::admission::{Admission, Refused, Started, SubscribeRequest};
use crate::auth::{constant_time_eq, Identity, TokenError};
use crate::hub::{CloseCause, ConnectionId, Delivery, Hub, Outbox, Outgoing, Queue, QueueBudget, Subscription};
use crate::position::Position;
use crate::protocol::{code, EventOp, Refusal, RequestId};
use crate::quota::{Gate, Permit};
use crate::snapshot::{SnapshotError, SnapshotRead};
use crate::telemetry::metrics::Tally;
use crate::telemetry::{Disconnect, Metrics, Transport};

/// The `[sse]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SseConfig {
    /// A comment line is sent this often on an idle stream, so proxies and browsers keep it.
    pub keepalive_ms: u64,
    /// The `retry:` hint: how long a browser waits before reconnecting.
    pub retry_ms: u64,
    /// Name of the cookie a session token may travel in.
    pub token_cookie: String,
    /// Most objects in one `event: snapshot`.
    pub snapshot_chunk: usize,
}

impl Default for SseConfig {
    fn default() -> Self {
        SseConfig { keepalive_ms: 15_000, retry_ms: 2_000, token_cookie: "livegate_token".into(), snapshot_chunk: 100 }
    }
}

/// Everything an SSE stream needs from the server.
#[derive(Clone)]
pub struct SseSettings {
    pub admission: Arc<Admission>,
    pub master_key: Option<String>,
    pub config: SseConfig,
    pub send_queue: QueueBudget,
    /// Connections per client address and in total.
    pub gate: Arc<Gate>,
    pub metrics: Arc<Metrics>,
}

/// The URL parameters; unknown ones are refused so that a typo never widens a query.
#[derive(Debug, Default, Deserialize, PartialEq)]
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
    /// `true`: the current rows first (`event: snapshot`), unless the stream resumes.
    snapshot: Option<String>,
    /// The events to send, e.g. `create,update` (all when absent).
    ops: Option<String>,
    /// `true`: an `update` carries `changes`, the fields whose value differs from `original`.
    changes: Option<String>,
}

impl Params {
    fn parse(query_string: &str) -> Result<Params, Rejection> {
        web::Query::<Params>::from_query(query_string)
            .map(web::Query::into_inner)
            .map_err(|e| Rejection::bad_request(code::SCHEMA, format!("invalid parameters: {e}")))
    }

    /// `where` as a JSON object; absent or empty matches everything.
    fn where_(&self) -> Result<Map<String, Value>, Rejection> {
        match self.where_.as_deref() {
            None | Some("") => Ok(Map::new()),
            Some(text) => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(map)) => Ok(map),
                Ok(_) => Err(Rejection::bad_request(code::SCHEMA, "Invalid type: where must be a JSON object")),
                Err(e) => Err(Rejection::bad_request(code::SCHEMA, format!("where is not valid JSON: {e}"))),
            },
        }
    }

    /// `keys` and `watch` as field lists.
    fn fields(&self) -> Result<Fields, Rejection> {
        Ok((field_list("keys", self.keys.as_deref())?, field_list("watch", self.watch.as_deref())?))
    }

    fn snapshot(&self) -> Result<bool, Rejection> {
        flag("snapshot", self.snapshot.as_deref())
    }

    /// What the stream sends: which events, and whether updates carry `changes`.
    fn framing(&self, snapshot_chunk: usize) -> Result<Framing, Rejection> {
        let ops = match self.ops.as_deref() {
            None => EventOp::ALL.to_vec(),
            Some(list) => list
                .split(',')
                .map(str::trim)
                .map(|name| {
                    EventOp::ALL.into_iter().find(|op| op.as_str() == name).ok_or_else(|| {
                        let message = format!("ops: {name:?} is not one of create, enter, update, leave, delete");
                        Rejection::bad_request(code::SCHEMA, message)
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(Framing { ops, changes: flag("changes", self.changes.as_deref())?, snapshot_chunk })
    }

    /// Where to resume from: a browser's own `Last-Event-ID` wins over the `since` parameter.
    fn since<'a>(&'a self, last_event_id: Option<&'a str>) -> Option<&'a str> {
        last_event_id.filter(|id| !id.is_empty()).or(self.since.as_deref())
    }
}

/// `keys` and `watch`.
type Fields = (Option<Vec<String>>, Option<Vec<String>>);

/// A boolean parameter: `true`/`1`/empty, or `false`/`0`.
fn flag(name: &str, value: Option<&str>) -> Result<bool, Rejection> {
    match value {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(other) => {
            Err(Rejection::bad_request(code::SCHEMA, format!("{name} must be true or false, not {other:?}")))
        }
    }
}

/// How a stream frames what it sends.
#[derive(Debug, Clone, PartialEq)]
struct Framing {
    /// The events it sends.
    ops: Vec<EventOp>,
    /// Updates carry `changes`.
    changes: bool,
    /// Most objects per `event: snapshot`.
    snapshot_chunk: usize,
}

/// `a,b,c` → field names; empty items and repeats are refused, as the WebSocket schema does.
fn field_list(name: &str, value: Option<&str>) -> Result<Option<Vec<String>>, Rejection> {
    let Some(value) = value else { return Ok(None) };
    let mut seen = HashSet::new();
    let mut fields = Vec::new();
    for field in value.split(',').map(str::trim) {
        if field.is_empty() {
            return Err(Rejection::bad_request(code::SCHEMA, format!("{name}: empty field name")));
        }
        if !seen.insert(field) {
            return Err(Rejection::bad_request(code::SCHEMA, format!("{name}: {field} is listed twice")));
        }
        fields.push(field.to_string());
    }
    Ok(Some(fields))
}

/// A refusal before the stream starts: an HTTP status and the code the WebSocket would use.
#[derive(Debug, PartialEq)]
struct Rejection {
    status: StatusCode,
    refusal: Refusal,
}

impl Rejection {
    fn bad_request(code: i64, message: impl Into<String>) -> Rejection {
        Rejection { status: StatusCode::BAD_REQUEST, refusal: Refusal::new(code, message) }
    }

    fn response(self) -> HttpResponse {
        let Refusal { code, message, .. } = self.refusal;
        HttpResponse::build(self.status).json(json!({"code": code, "error": message}))
    }

    /// The response, counted and logged as a refused subscription.
    fn refused(self, metrics: &Metrics, step: Option<&'static str>) -> HttpResponse {
        metrics.refused(self.refusal.code);
        let (status, code) = (self.status.as_u16(), self.refusal.code);
        tracing::info!(transport = "sse", status, code, step, "subscription refused");
        self.response()
    }
}

impl From<Refused> for Rejection {
    fn from(refused: Refused) -> Rejection {
        let status = match &refused {
            Refused::Query(_) | Refused::Since(_) => StatusCode::BAD_REQUEST,
            Refused::Token(TokenError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            Refused::Token(_) => StatusCode::UNAUTHORIZED,
            Refused::Denied(_) => StatusCode::FORBIDDEN,
            Refused::Hub(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refused::Snapshot(SnapshotError::TooManyRows { .. } | SnapshotError::TooLarge { .. }) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Refused::Snapshot(SnapshotError::Timeout { .. }) => StatusCode::GATEWAY_TIMEOUT,
            Refused::Snapshot(SnapshotError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
        };
        // The stream's own connection holds one subscription, so the hub can only refuse it if
        // the connection vanished meanwhile: answered as a server error, never silently.
        let refusal = match refused.refusal() {
            Some(refusal) if !matches!(refused, Refused::Hub(_)) => refusal,
            _ => Refusal::new(code::SCHEMA, "cannot subscribe"),
        };
        Rejection { status, refusal }
    }
}

/// What a request asks for, admitted: the subscription, where it resumes, and its token.
struct Admitted {
    subscription: Subscription,
    /// Its `where`, for a snapshot.
    where_: Map<String, Value>,
    /// The rows to send first (`snapshot=true` on a stream that does not resume).
    snapshot: bool,
    /// `snapshot=true`: also after a gap, when the stream resumes from a lost position.
    wants_snapshot: bool,
    framing: Framing,
    since: Option<Position>,
    /// The token the identity came from, re-checked while streaming.
    token: Option<Arc<str>>,
}

pub async fn events(req: HttpRequest, class: web::Path<String>, settings: web::Data<SseSettings>) -> HttpResponse {
    let peer = peer_ip(&req, &settings.gate);
    let permit = match settings.gate.admit(peer, Transport::Sse) {
        Ok(permit) => permit,
        Err(turned) => return turned_away(turned),
    };
    let admitted = match admit(&req, &class, &settings).await {
        Ok(admitted) => admitted,
        Err(rejection) => return rejection.refused(&settings.metrics, None),
    };
    let snapshot = match admitted.snapshot {
        true => match settings
            .admission
            .snapshot(&admitted.subscription, &admitted.where_, &request_id(), settings.send_queue.bytes)
            .await
        {
            Ok(read) => Some(read),
            Err(refused) => return Rejection::from(refused).refused(&settings.metrics, Some("snapshot")),
        },
        false => None,
    };
    stream(admitted, snapshot, settings.get_ref().clone(), Peer { ip: peer, permit }, peer_socket(&req))
}

/// Who a stream is for: the client's address, and its place in the quotas.
struct Peer {
    ip: IpAddr,
    permit: Permit,
}

/// The shared pipeline ([`Admission`]), fed from the URL and headers.
async fn admit(req: &HttpRequest, class: &str, settings: &SseSettings) -> Result<Admitted, Rejection> {
    let params = Params::parse(req.query_string())?;
    if class.is_empty() {
        return Err(Rejection::bad_request(code::SCHEMA, "the class name is empty"));
    }
    let where_ = params.where_()?;
    let admission = &settings.admission;
    // A bad `where` is reported before a bad field list, as it always was.
    let fields = params.fields();
    let (keys, watch) = fields.as_ref().map(Clone::clone).unwrap_or_default();
    let mut subscription =
        admission.compile(SubscribeRequest { class, where_: &where_, keys, watch, positions: true })?;
    fields?;
    let since = Admission::since(params.since(header(req, "last-event-id")))?;
    let wants_snapshot = params.snapshot()?;
    let framing = params.framing(settings.config.snapshot_chunk)?;
    let snapshot = wants_snapshot && since.is_none();
    let token = token(req, &settings.config.token_cookie).or(params.session_token);
    let mut identity = match &token {
        None => Identity::default(),
        Some(token) => admission.identify(token).await.map_err(Refused::Token)?,
    };
    identity.master = is_master(req, settings.master_key.as_deref());
    admission.authorize(&mut subscription, &where_, identity)?;
    Ok(Admitted { subscription, where_, snapshot, wants_snapshot, framing, since, token: token.map(Into::into) })
}

/// A token from `Authorization: Bearer`, else from the token cookie.
fn token(req: &HttpRequest, cookie_name: &str) -> Option<String> {
    let bearer = header(req, "authorization").and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
    let cookie = || {
        header(req, "cookie")?
            .split(';')
            .filter_map(|c| c.trim().split_once('='))
            .find(|(name, _)| *name == cookie_name)
            .map(|(_, value)| value.to_string())
    };
    bearer.map(str::to_string).or_else(cookie)
}

fn is_master(req: &HttpRequest, master_key: Option<&str>) -> bool {
    header(req, "x-parse-master-key")
        .is_some_and(|key| master_key.is_some_and(|m| !m.is_empty() && constant_time_eq(m, key)))
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The one subscription of an SSE stream.
fn request_id() -> RequestId {
    RequestId::from(1)
}

fn stream(
    admitted: Admitted,
    snapshot: Option<SnapshotRead>,
    settings: SseSettings,
    peer: Peer,
    socket: Option<tokio::net::TcpStream>,
) -> HttpResponse {
    let Admitted { subscription, since, token, where_, wants_snapshot, framing, .. } = admitted;
    let resnapshot = wants_snapshot.then(|| Arc::new(where_));
    let identity = subscription.identity.clone();
    let admission = settings.admission.clone();
    let (outbox, queue) = Outbox::new(settings.send_queue.clone());
    let connection = admission.hub().register(outbox.clone(), Transport::Sse);
    let registration = Arc::new(Registration {
        hub: admission.hub().clone(),
        connection,
        catchup: Mutex::new(None),
        ended: AtomicBool::new(false),
        reason: OnceLock::new(),
        opened: Instant::now(),
        metrics: settings.metrics.clone(),
        _permit: peer.permit,
    });
    // Registered (or reserved) before the response starts: no change after the first byte is
    // missed.
    let started = match snapshot {
        Some(read) => {
            let mut read = read;
            let objects = std::mem::take(&mut read.objects);
            outbox.push(Outgoing::Result { request_id: request_id(), objects, reset: false });
            admission.start_after(connection, request_id(), subscription, &read, &outbox)
        }
        None => admission.start(connection, request_id(), subscription, since, resnapshot, &outbox),
    };
    match started {
        Ok(Started::Live(_)) => {}
        Ok(Started::CatchingUp(task)) => {
            settings.metrics.replay_started(Transport::Sse);
            registration.hold(task);
        }
        Err(refused) => {
            let _ = registration.reason.set(None);
            let step = refused.step();
            return Rejection::from(refused).refused(&settings.metrics, Some(step));
        }
    }
    tracing::info!(transport = "sse", connection, peer = %peer.ip, "connection opened");
    let queue = Arc::new(tokio::sync::Mutex::new(queue));
    watch(registration.clone(), outbox.clone(), queue.clone(), socket);
    let every = admission.revalidate_every;
    let check = token.map(|token| TokenCheck { admission, token, identity, every, last: Instant::now() });
    let state = Stream::new(&settings.config, framing, queue, outbox, check, registration);
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache, no-transform"))
        // nginx and similar proxies buffer responses unless told not to.
        .insert_header(("x-accel-buffering", "no"))
        .streaming(futures_util::stream::unfold(state, Stream::next))
}

/// The stream's place in the hub and in the connection quotas. It leaves the hub once, at the
/// first of: the response stream being dropped (the client went away), or its outbox closing
/// (a client too slow for its queue, or one that stopped reading: actix then never polls the
/// stream again, so only [`watch`] notices).
struct Registration {
    hub: Arc<Hub>,
    connection: ConnectionId,
    catchup: Mutex<Option<AbortHandle>>,
    ended: AtomicBool,
    /// Why the stream ends, when it is not the client's doing; `None` when it never started.
    reason: OnceLock<Option<Disconnect>>,
    opened: Instant,
    metrics: Arc<Metrics>,
    /// Given back when the last holder (the stream or its watch) is gone.
    _permit: Permit,
}

impl Registration {
    fn hold(&self, task: AbortHandle) {
        *self.catchup.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
    }

    /// Notes why the stream is ending (the first reason given wins).
    fn ending(&self, reason: Disconnect) {
        let _ = self.reason.set(Some(reason));
    }

    fn end(&self) {
        if self.ended.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(task) = self.catchup.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
        self.hub.disconnect(self.connection);
        match self.reason.get() {
            Some(None) => {} // never streamed: refused at the start, counted as a refusal
            Some(Some(reason)) => self.log_end(*reason),
            None => self.log_end(Disconnect::Client),
        }
    }

    fn log_end(&self, reason: Disconnect) {
        self.metrics.disconnected(reason);
        let duration_ms = self.opened.elapsed().as_millis() as u64;
        let (connection, reason) = (self.connection, reason.as_str());
        tracing::info!(transport = "sse", connection, reason, duration_ms, "connection closed");
    }
}

/// Whatever path drops the last holder (a refused start included) leaves the hub.
impl Drop for Registration {
    fn drop(&mut self) {
        self.end();
    }
}

/// Waits for the stream's outbox to close, then leaves the hub and frees what is still queued
/// (unless the stream is being polled, and so drains it itself).
fn watch(
    registration: Arc<Registration>,
    outbox: Outbox,
    queue: Arc<tokio::sync::Mutex<Queue>>,
    socket: Option<tokio::net::TcpStream>,
) {
    tokio::spawn(async move {
        tokio::select! {
            _ = outbox.closed() => {}
            // Nothing may be written for a long while (a quiet query): the client's hang-up is
            // seen on the socket itself, not when a write fails at the next keep-alive.
            _ = hang_up(socket) => outbox.close_because(CloseCause::Ended),
        }
        registration.ending(match outbox.cause() {
            Some(CloseCause::Shutdown { .. }) => Disconnect::Shutdown,
            Some(CloseCause::Ended) => Disconnect::Client,
            Some(CloseCause::TooSlow) | None => Disconnect::SlowConsumer,
        });
        registration.end();
        if let Ok(mut queue) = queue.try_lock() {
            while queue.try_recv().is_ok() {}
        }
    });
}

/// The raw descriptor of an accepted connection, noted at accept ([`remember_socket`]) so that
/// an SSE stream can watch its own socket for the client hanging up.
#[derive(Debug, Clone, Copy)]
pub struct PeerSocket(std::os::fd::RawFd);

/// `HttpServer::on_connect` hook: notes each TCP connection's descriptor (nothing is opened).
pub fn remember_socket(connection: &dyn std::any::Any, data: &mut actix_web::dev::Extensions) {
    use std::os::fd::AsRawFd;
    if let Some(tcp) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
        data.insert(PeerSocket(tcp.as_raw_fd()));
    }
}

/// A second handle on the request's socket (one more descriptor, for SSE streams only), to
/// peek at it; `None` when there is none to be had.
fn peer_socket(req: &HttpRequest) -> Option<tokio::net::TcpStream> {
    let PeerSocket(fd) = *req.conn_data::<PeerSocket>()?;
    // SAFETY: the descriptor belongs to the connection this request is being served on, which
    // is open while its handler runs; it is only borrowed here, to duplicate it.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let owned = borrowed.try_clone_to_owned().ok()?;
    tokio::net::TcpStream::from_std(std::net::TcpStream::from(owned)).ok()
}

/// Resolves when the peer has closed its side (a peek reads end of stream) or the socket fails;
/// never when there is no socket to watch, or the client sends data (HTTP pipelining: left to
/// the dispatcher).
async fn hang_up(socket: Option<tokio::net::TcpStream>) {
    let mut byte = [0u8; 1];
    match socket {
        Some(socket) => match socket.peek(&mut byte).await {
            Ok(0) | Err(_) => {}
            Ok(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

struct Stream {
    first: Option<Bytes>,
    queue: Arc<tokio::sync::Mutex<Queue>>,
    outbox: Outbox,
    keepalive: Interval,
    check: Option<TokenCheck>,
    registration: Arc<Registration>,
    ended: bool,
    /// `subscribed` was sent: the subscription is live, so the hub's position is the client's.
    live: bool,
    /// The `id:` of the last event sent, where a browser resumes from.
    last_id: Option<String>,
    framing: Framing,
    tally: Tally,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.tally.flush(&self.registration.metrics, Transport::Sse);
        self.registration.end();
        // Wakes the watch, which then ends too.
        self.outbox.close_because(CloseCause::Ended);
    }
}

/// The stream's token, re-checked every `every` and at its expiry.
struct TokenCheck {
    admission: Arc<Admission>,
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

impl Stream {
    fn new(
        config: &SseConfig,
        framing: Framing,
        queue: Arc<tokio::sync::Mutex<Queue>>,
        outbox: Outbox,
        check: Option<TokenCheck>,
        registration: Arc<Registration>,
    ) -> Stream {
        let every = Duration::from_millis(config.keepalive_ms);
        let mut keepalive = interval_at(Instant::now() + every, every);
        keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let first = Bytes::from(format!("retry: {}\n\n", config.retry_ms));
        Stream {
            first: Some(first),
            queue,
            outbox,
            keepalive,
            check,
            registration,
            ended: false,
            live: false,
            last_id: None,
            tally: Tally::default(),
            framing,
        }
    }

    async fn next(mut self) -> Option<(Result<Bytes, Infallible>, Stream)> {
        if let Some(first) = self.first.take() {
            return Some((Ok(first), self));
        }
        if self.ended {
            return None;
        }
        let queue = self.queue.clone();
        let mut queue = queue.lock().await;
        let text = loop {
            break tokio::select! {
                biased;
                _ = self.outbox.closed() => {
                    self.ended = true;
                    self.closing(&mut queue)?
                }
                item = queue.recv() => match item {
                    Some(Outgoing::Event(d)) if !self.framing.ops.contains(&d.op) => continue,
                    Some(item) => self.render(item),
                    None => return None,
                },
                _ = self.keepalive.tick() => ": keep-alive\n\n".to_string(),
                _ = sleep_until(self.check.as_ref().map(TokenCheck::due)) => match self.revalidate().await {
                    Ok(()) => continue,
                    Err(error_event) => {
                        self.ended = true;
                        self.registration.ending(Disconnect::TokenExpired);
                        self.flush_then(&mut queue, error_event)
                    }
                },
            };
        };
        self.tally.bytes(text.len());
        if queue.is_empty() {
            self.tally.flush(&self.registration.metrics, Transport::Sse);
        }
        drop(queue);
        self.keepalive.reset();
        Some((Ok(Bytes::from(text)), self))
    }

    /// The last text of a stream whose outbox closed, or `None` when the client is gone. A
    /// shutdown sends what is queued, then a `shutdown` event whose id is where the client
    /// resumes (on any gateway) with nothing lost.
    fn closing(&mut self, queue: &mut Queue) -> Option<String> {
        match self.outbox.cause() {
            Some(CloseCause::Shutdown { at }) => {
                self.registration.ending(Disconnect::Shutdown);
                let id = self.resume_id(at);
                let data = json!({"reason": "the gateway is shutting down; reconnect to resume", "position": id});
                Some(self.flush_then(queue, format!("event: shutdown\n{}data: {data}\n\n", id_line(id.as_deref()))))
            }
            Some(CloseCause::Ended) => None,
            Some(CloseCause::TooSlow) | None => {
                self.registration.ending(Disconnect::SlowConsumer);
                Some(frame_error(code::LIMIT_EXCEEDED, "send queue full: client too slow; reconnect to resume"))
            }
        }
    }

    /// Where the client resumes from once delivery stopped at `at`: `at` itself when the
    /// subscription is live (everything up to it is queued), else (still catching up) the last
    /// id it was sent, if any.
    fn resume_id(&self, at: Position) -> Option<String> {
        if self.live {
            Some(at.to_string())
        } else {
            self.last_id.clone()
        }
    }

    /// Re-checks the token: a changed identity is updated in the hub; a lapsed one stops
    /// delivery and yields the final `error` event, whose id is where delivery stopped
    /// (everything up to it is already queued, and is sent before it).
    async fn revalidate(&mut self) -> Result<(), String> {
        let Some(check) = self.check.as_mut() else { return Ok(()) };
        check.last = Instant::now();
        let Registration { hub, connection, .. } = &*self.registration;
        let identity = match check.admission.recheck(&check.token, &check.identity).await {
            Ok(identity) => identity,
            Err(e) => {
                let stopped = hub.suspend(*connection, &request_id()).unwrap_or_else(|| hub.position());
                let data = json!({"code": code::INVALID_SESSION_TOKEN, "error": e.to_string()});
                let id = self.resume_id(stopped);
                return Err(format!("event: error\n{}data: {data}\n\n", id_line(id.as_deref())));
            }
        };
        if identity != check.identity {
            hub.set_identity(*connection, &request_id(), identity.clone());
            check.identity = identity;
        }
        Ok(())
    }

    /// Everything still queued, then `last`: the final text of an ending stream.
    fn flush_then(&mut self, queue: &mut Queue, last: String) -> String {
        let mut text = String::new();
        while let Ok(item) = queue.try_recv() {
            text.push_str(&self.render(item));
        }
        text.push_str(&last);
        text
    }

    /// Frames one item, counting it and noting where the client now stands.
    fn render(&mut self, item: Outgoing) -> String {
        let metrics = &self.registration.metrics;
        match &item {
            Outgoing::Event(delivery) => {
                self.tally.event(delivery.op);
                if delivery.replayed {
                    metrics.replayed(Transport::Sse, 1);
                }
                self.last_id = Some(delivery.payload.position.to_string());
            }
            Outgoing::Subscribed { position, .. } => {
                self.live = true;
                self.last_id = Some(position.to_string());
            }
            Outgoing::Gap { gap, position, snapshot, .. } => {
                metrics.gap(Transport::Sse, *gap);
                let connection = self.registration.connection;
                tracing::info!(transport = "sse", connection, reason = gap.as_str(), "gap announced");
                if !*snapshot {
                    self.last_id = Some(position.to_string());
                }
            }
            Outgoing::Refused { refusal, .. } => metrics.refused(refusal.code),
            Outgoing::Text(_) | Outgoing::Result { .. } => {}
        }
        frame(item, &self.framing)
    }
}

/// The `id:` line for a resume position, or nothing (the browser keeps the id it had).
fn id_line(id: Option<&str>) -> String {
    id.map(|id| format!("id: {id}\n")).unwrap_or_default()
}

/// `event: snapshot` events of at most `chunk` objects each (one, empty, for no rows); the first
/// says `"reset": true` when it replaces what the client had (after a gap).
fn frame_snapshot(objects: &[String], reset: bool, chunk: usize) -> String {
    let mut out = String::with_capacity(objects.iter().map(|o| o.len() + 1).sum::<usize>() + 64);
    let chunks: Vec<&[String]> = if objects.is_empty() { vec![&[]] } else { objects.chunks(chunk.max(1)).collect() };
    for (i, chunk) in chunks.into_iter().enumerate() {
        out.push_str("event: snapshot\ndata: {\"objects\":[");
        out.push_str(&chunk.join(","));
        out.push(']');
        if reset && i == 0 {
            out.push_str(",\"reset\":true");
        }
        out.push_str("}\n\n");
    }
    out
}

fn frame(item: Outgoing, framing: &Framing) -> String {
    match item {
        Outgoing::Result { objects, reset, .. } => frame_snapshot(&objects, reset, framing.snapshot_chunk),
        Outgoing::Text(text) => text,
        Outgoing::Event(delivery) => frame_event(&delivery, framing.changes),
        Outgoing::Subscribed { position, .. } => {
            format!("event: subscribed\nid: {position}\ndata: {{\"position\":\"{position}\"}}\n\n")
        }
        Outgoing::Refused { refusal, .. } => frame_error(refusal.code, &refusal.message),
        // A gap moves the browser's Last-Event-ID to where the stream continues, unless a
        // snapshot follows: then only the `subscribed` after it does.
        Outgoing::Gap { gap, position, snapshot: false, .. } => {
            format!(
                "event: gap\nid: {position}\ndata: {{\"reason\":\"{}\",\"position\":\"{position}\"}}\n\n",
                gap.as_str()
            )
        }
        Outgoing::Gap { gap, position, snapshot: true, .. } => {
            format!(
                "event: gap\ndata: {{\"reason\":\"{}\",\"position\":\"{position}\",\"snapshot\":true}}\n\n",
                gap.as_str()
            )
        }
    }
}

fn frame_event(Delivery { op, payload, .. }: &Delivery, changes: bool) -> String {
    let mut out = String::with_capacity(96 + payload.object.len() + payload.original.as_ref().map_or(0, String::len));
    out.push_str("event: ");
    out.push_str(op.as_str());
    out.push_str("\nid: ");
    out.push_str(&payload.position.to_string());
    out.push_str("\ndata: {\"object\":");
    out.push_str(&payload.object);
    if let Some(original) = &payload.original {
        out.push_str(",\"original\":");
        out.push_str(original);
        if changes && *op == EventOp::Update {
            out.push_str(",\"changes\":");
            out.push_str(&changed_fields(&payload.object, original));
        }
    }
    if let Some(timestamp) = &payload.timestamp {
        out.push_str(",\"timestamp\":\"");
        out.push_str(timestamp);
        out.push('"');
    }
    out.push_str("}\n\n");
    out
}

/// The fields whose value differs between two encoded objects (present in one only included),
/// as a JSON array in the object's field order.
fn changed_fields(object: &str, original: &str) -> String {
    let parse = |text: &str| serde_json::from_str::<Map<String, Value>>(text).unwrap_or_default();
    let (object, original) = (parse(object), parse(original));
    let changed = object
        .iter()
        .filter(|(k, v)| original.get(*k) != Some(*v))
        .map(|(k, _)| k)
        .chain(original.keys().filter(|k| !object.contains_key(*k)));
    Value::Array(changed.map(|k| Value::String(k.clone())).collect()).to_string()
}

fn frame_error(code: i64, message: &str) -> String {
    format!("event: error\ndata: {}\n\n", json!({"code": code, "error": message}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected<T: std::fmt::Debug>(result: Result<T, Rejection>) -> (u16, i64, String) {
        let rejection = result.expect_err("refused");
        (rejection.status.as_u16(), rejection.refusal.code, rejection.refusal.message)
    }

    #[test]
    fn parameters_parse_and_unknown_ones_are_refused() {
        let params = Params::parse("where=%7B%22a%22%3A1%7D&keys=a,b&watch=b&since=now&sessionToken=t").unwrap();
        assert_eq!(params.where_().unwrap(), json!({"a": 1}).as_object().cloned().unwrap());
        assert_eq!(params.fields().unwrap(), (Some(vec!["a".into(), "b".into()]), Some(vec!["b".into()])));
        assert_eq!(params.session_token.as_deref(), Some("t"));
        let (status, code, message) = rejected(Params::parse("wher=x"));
        assert_eq!((status, code), (400, 1));
        assert!(message.starts_with("invalid parameters:") && message.contains("wher"), "{message}");
        assert_eq!(Params::parse("").unwrap(), Params::default());
        assert_eq!(Params::default().where_().unwrap(), Map::new());
    }

    #[test]
    fn where_must_be_a_json_object() {
        let bad = |text: &str| rejected(Params { where_: Some(text.into()), ..Params::default() }.where_());
        assert_eq!(bad("[1]"), (400, 1, "Invalid type: where must be a JSON object".into()));
        let (status, code, message) = bad("{nope");
        assert_eq!((status, code), (400, 1));
        assert!(message.starts_with("where is not valid JSON:"), "{message}");
        assert_eq!(Params { where_: Some(String::new()), ..Params::default() }.where_().unwrap(), Map::new());
    }

    #[test]
    fn field_lists_refuse_empty_names_and_repeats() {
        assert_eq!(field_list("keys", Some(" a , b ")).unwrap(), Some(vec!["a".into(), "b".into()]));
        assert_eq!(field_list("keys", None).unwrap(), None);
        assert_eq!(rejected(field_list("keys", Some("a,,b"))), (400, 1, "keys: empty field name".into()));
        assert_eq!(rejected(field_list("watch", Some("a,a"))), (400, 1, "watch: a is listed twice".into()));
    }

    #[test]
    fn last_event_id_wins_over_since() {
        let params = Params { since: Some("now".into()), ..Params::default() };
        assert_eq!(params.since(Some("5-abc")), Some("5-abc"));
        assert_eq!(params.since(Some("")), Some("now"), "an empty Last-Event-ID is none");
        assert_eq!(params.since(None), Some("now"));
        assert_eq!(Params::default().since(None), None);
    }

    #[test]
    fn refusals_map_to_statuses() {
        let status = |refused: Refused| Rejection::from(refused).status.as_u16();
        assert_eq!(status(Refused::Since("x".into())), 400);
        assert_eq!(status(Refused::Token(TokenError::Expired)), 401);
        assert_eq!(status(Refused::Token(TokenError::Unavailable("down".into()))), 503);
        let denied = crate::auth::rules::Denied { code: 119, message: "no".into() };
        assert_eq!(Rejection::from(Refused::Denied(denied)).refusal, Refusal::new(119, "no"));
        let hub = Rejection::from(Refused::Hub(crate::hub::SubscribeError::UnknownConnection));
        assert_eq!((hub.status.as_u16(), hub.refusal.code, hub.refusal.message.as_str()), (503, 1, "cannot subscribe"));
    }
}
