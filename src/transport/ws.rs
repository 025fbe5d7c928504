//! WebSocket transport: moves frames between a socket and a [`ParseSession`], pings the peer
//! every `websocket.timeout_ms` and drops it when the previous ping went unanswered, refuses
//! frames and messages above `websocket.max_frame_bytes` (close 1009) as soon as their header
//! announces them, closes a client whose next frame would take the frames in flight on all
//! connections past `websocket.receive_buffer_bytes` (close 1013, see [`super::frame_guard`]),
//! closes a client whose send queue overflowed (close 1008) without anyone else noticing, and
//! closes every client with 1001 (after what is queued for it) when the gateway shuts down.
//! Each connection logs one line when it opens and one when it closes (why, and how long it
//! lasted), and counts what it sent and why it ended in the gateway's metrics.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{dev, web, FromRequest, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, ProtocolError};
use serde::{Deserialize, Serialize};
use tokio::time::{interval_at, Instant, MissedTickBehavior};

use super::frame_guard::{FrameGuard, FrameLimits, ReceiveBudget, Refusal, Verdict};
use super::sleep_until;
use crate::hub::{CloseCause, ConnectionId, Outbox, Outgoing, Queue, QueueBudget};
use crate::quota::{Gate, Permit};
use crate::session::{Framer, ParseSession, SessionSettings};
use crate::telemetry::metrics::Tally;
use crate::telemetry::{Disconnect, Metrics, Transport};

/// The `[websocket]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// Ping interval; a peer that has not answered the previous ping is dropped.
    pub timeout_ms: u64,
    /// Largest frame (and message) a client may send, in bytes.
    pub max_frame_bytes: usize,
    /// Bytes of frames still being received that all connections together may hold.
    pub receive_buffer_bytes: usize,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig { timeout_ms: 10_000, max_frame_bytes: 64 * 1024, receive_buffer_bytes: 64 * 1024 * 1024 }
    }
}

/// Everything a WebSocket connection needs from the server. (Which browser origins may open a
/// socket is decided before the upgrade reaches this module: see `http::cors`.)
#[derive(Clone)]
pub struct WsSettings {
    pub session: Arc<SessionSettings>,
    pub ping_interval: Duration,
    pub max_frame_bytes: usize,
    /// One per server, shared by every worker's connections.
    pub receive_budget: Arc<ReceiveBudget>,
    pub send_queue: QueueBudget,
    /// Connections per client address and in total.
    pub gate: Arc<Gate>,
}

pub async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    settings: web::Data<WsSettings>,
) -> actix_web::Result<HttpResponse> {
    let permit = match settings.gate.admit(super::peer_ip(&req, &settings.gate), Transport::WebSocket) {
        Ok(permit) => permit,
        Err(turned) => return Ok(super::turned_away(turned)),
    };
    let limit = settings.max_frame_bytes as u64;
    let limits = FrameLimits { frame: limit, message: limit };
    let (guard, verdict) = FrameGuard::new(body, limits, settings.receive_budget.clone());
    let (response, socket, stream) = actix_ws::handle(&req, guarded(&req, guard).await?)?;
    // The codec's own limits stay as a second line; the guard refuses first, from the header.
    let stream = stream
        .max_frame_size(settings.max_frame_bytes)
        .aggregate_continuations()
        .max_continuation_size(settings.max_frame_bytes);
    let peer = super::peer_ip(&req, &settings.gate);
    actix_web::rt::spawn(serve(socket, stream, verdict, settings.get_ref().clone(), peer, permit));
    Ok(response)
}

/// The request body read through `guard`, again as the `web::Payload` that `actix_ws::handle`
/// insists on (it has no variant taking any other stream).
async fn guarded(req: &HttpRequest, guard: FrameGuard<web::Payload>) -> actix_web::Result<web::Payload> {
    let mut payload: dev::Payload = dev::Payload::Stream { payload: Box::pin(guard) };
    web::Payload::from_request(req, &mut payload).await
}

/// One connection's life; `_permit` holds its place in the connection quotas until it ends.
// long: one select over the socket, the queue, token checks and pings, with its setup and
// teardown; each arm needs most of the connection's state, so splitting only moves it around.
async fn serve(
    mut socket: actix_ws::Session,
    mut stream: actix_ws::AggregatedMessageStream,
    verdict: Verdict,
    settings: WsSettings,
    peer: IpAddr,
    _permit: Permit,
) {
    let opened = Instant::now();
    let metrics = settings.session.metrics.clone();
    let (outbox, mut queue) = Outbox::new(settings.send_queue.clone());
    let mut session = ParseSession::new(settings.session.clone(), outbox.clone());
    let connection = session.connection();
    tracing::info!(transport = "websocket", connection, %peer, "connection opened");
    let framer = session.framer();
    let mut tally = Tally::default();
    let mut ping = pinger(settings.ping_interval);
    let mut awaiting_pong = false;

    let stop: Stop = loop {
        let mut sender = Sender {
            socket: &mut socket,
            queue: &mut queue,
            framer: &framer,
            outbox: &outbox,
            tally: &mut tally,
            metrics: &metrics,
        };
        tokio::select! {
            biased;
            _ = outbox.closed() => break sender.closed().await,
            message = stream.recv() => {
                if let Err(stop) = received(message, &mut session, &mut sender, &verdict, &mut awaiting_pong).await {
                    break stop;
                }
            }
            item = sender.queue.recv() => {
                let Some(item) = item else { break Stop::client() };
                if let Err(stop) = sender.send(item).await {
                    break stop;
                }
            }
            _ = sleep_until(session.next_check()) => {
                if let Err(stop) = sender.send_while(session.revalidate()).await {
                    break stop;
                }
            }
            _ = ping.tick() => {
                if let Some(stop) = pinged(&mut awaiting_pong) {
                    break stop;
                }
                if socket.ping(b"").await.is_err() {
                    break Stop::client();
                }
            }
        }
    };
    tally.flush(&metrics, Transport::WebSocket);
    ended(&metrics, connection, opened, stop.reason);
    // Leave the hub before the (possibly slow) close handshake.
    drop(session);
    let _ = socket.close(stop.close).await;
}

fn pinger(every: Duration) -> tokio::time::Interval {
    let mut ping = interval_at(Instant::now() + every, every);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ping
}

/// Counts and logs the end of a connection.
fn ended(metrics: &Metrics, connection: ConnectionId, opened: Instant, reason: Disconnect) {
    metrics.disconnected(reason);
    let duration_ms = opened.elapsed().as_millis() as u64;
    let reason = reason.as_str();
    tracing::info!(transport = "websocket", connection, reason, duration_ms, "connection closed");
}

/// At a ping tick: the stop when the previous ping went unanswered, else a ping is now due.
fn pinged(awaiting_pong: &mut bool) -> Option<Stop> {
    if *awaiting_pong {
        return Some(Stop { reason: Disconnect::PingTimeout, close: None });
    }
    *awaiting_pong = true;
    None
}

/// Handles one message from the client (or the end of its stream).
async fn received(
    message: Option<Result<AggregatedMessage, ProtocolError>>,
    session: &mut ParseSession,
    sender: &mut Sender<'_>,
    verdict: &Verdict,
    awaiting_pong: &mut bool,
) -> Result<(), Stop> {
    match message {
        None | Some(Ok(AggregatedMessage::Close(_))) => Err(Stop::client()),
        Some(Ok(AggregatedMessage::Text(text))) => sender.send_while(session.on_text(&text)).await,
        Some(Ok(AggregatedMessage::Binary(_))) => {
            session.on_binary();
            Ok(())
        }
        Some(Ok(AggregatedMessage::Ping(bytes))) => sender.socket.pong(&bytes).await.map_err(|_| Stop::client()),
        Some(Ok(AggregatedMessage::Pong(_))) => {
            *awaiting_pong = false;
            Ok(())
        }
        Some(Err(e)) => Err(receive_error(e, verdict)),
    }
}

/// The sending side of a connection: the queue drained into the socket, counted.
struct Sender<'a> {
    socket: &'a mut actix_ws::Session,
    queue: &'a mut Queue,
    framer: &'a Framer,
    outbox: &'a Outbox,
    tally: &'a mut Tally,
    metrics: &'a Metrics,
}

/// Why a connection ends, and the close frame to send, if any.
struct Stop {
    reason: Disconnect,
    close: Option<CloseReason>,
}

impl Stop {
    /// The client closed or went away: nothing more to tell it.
    fn client() -> Stop {
        Stop { reason: Disconnect::Client, close: None }
    }
}

impl Sender<'_> {
    /// Frames and writes one item; the socket's own buffer may be full too, so overflow of the
    /// queue is watched meanwhile.
    async fn send(&mut self, item: Outgoing) -> Result<(), Stop> {
        let Some(text) = self.encode(item) else { return Ok(()) };
        let sent = tokio::select! {
            sent = self.socket.text(text) => sent.map_err(|_| Stop::client()),
            _ = self.outbox.closed() => Err(self.closed().await),
        };
        if self.queue.is_empty() {
            self.tally.flush(self.metrics, Transport::WebSocket);
        }
        sent
    }

    /// The frame for `item`, counted in the connection's tally and metrics.
    fn encode(&mut self, item: Outgoing) -> Option<String> {
        self.count(&item);
        let text = self.framer.frame(item)?;
        self.tally.bytes(text.len());
        Some(text)
    }

    fn count(&mut self, item: &Outgoing) {
        match item {
            Outgoing::Event(delivery) => {
                self.tally.event(delivery.op);
                if delivery.replayed {
                    self.metrics.replayed(Transport::WebSocket, 1);
                }
            }
            Outgoing::Gap { gap, request_id, .. } => {
                self.metrics.gap(Transport::WebSocket, *gap);
                tracing::info!(transport = "websocket", %request_id, reason = gap.as_str(), "gap announced");
            }
            Outgoing::Refused { refusal, .. } => self.metrics.refused(refusal.code),
            Outgoing::Text(_) | Outgoing::Subscribed { .. } | Outgoing::Result { .. } => {}
        }
    }

    /// The outbox was closed: a shutdown (what is queued is still sent, then 1001) or a client
    /// too slow for its queue (1008).
    async fn closed(&mut self) -> Stop {
        match self.outbox.cause() {
            Some(CloseCause::Shutdown { .. }) => {
                while let Ok(item) = self.queue.try_recv() {
                    let Some(text) = self.encode(item) else { continue };
                    if self.socket.text(text).await.is_err() {
                        return Stop::client();
                    }
                }
                Stop { reason: Disconnect::Shutdown, close: Some(reason(CloseCode::Away, "server shutting down")) }
            }
            Some(CloseCause::Ended) => Stop::client(),
            Some(CloseCause::TooSlow) | None => Stop { reason: Disconnect::SlowConsumer, close: Some(too_slow()) },
        }
    }

    /// Runs `work` (a frame's handling, a token re-check) while still sending what the queue
    /// holds: a slow token lookup never holds up the connection's events.
    async fn send_while(&mut self, work: impl std::future::Future<Output = ()>) -> Result<(), Stop> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                biased;
                () = &mut work => return Ok(()),
                _ = self.outbox.closed() => return Err(self.closed().await),
                item = self.queue.recv() => match item {
                    Some(item) => self.send(item).await?,
                    None => return Err(Stop::client()),
                },
            }
        }
    }
}

fn too_slow() -> CloseReason {
    reason(CloseCode::Policy, "send queue full: client too slow")
}

/// The close a receive error earns. The guard's verdict comes first: its refusal reaches this
/// loop only as an I/O error that actix-ws wrapped into its own.
fn receive_error(error: ProtocolError, verdict: &Verdict) -> Stop {
    let too_large =
        |description| Stop { reason: Disconnect::FrameTooLarge, close: Some(reason(CloseCode::Size, description)) };
    if let Some(refusal) = verdict.refusal() {
        tracing::debug!(%refusal, "websocket frame refused by its header");
        return match refusal {
            Refusal::FrameTooLarge => too_large("frame too large"),
            Refusal::MessageTooLarge => too_large("message too large"),
            Refusal::ReceiveBufferFull => Stop {
                reason: Disconnect::ReceiveBufferFull,
                close: Some(reason(CloseCode::Again, "receive buffer full: try again later")),
            },
        };
    }
    match error {
        ProtocolError::Overflow => too_large("frame too large"),
        ProtocolError::Io(e) if e.to_string().contains("continuation size") => too_large("message too large"),
        // The connection itself failed or ended mid-frame: the client went away.
        ProtocolError::Io(e) => {
            tracing::debug!(error = %e, "websocket connection ended");
            Stop::client()
        }
        e => {
            tracing::debug!(error = %e, "websocket protocol error");
            Stop { reason: Disconnect::ProtocolError, close: Some(reason(CloseCode::Protocol, "protocol error")) }
        }
    }
}

fn reason(code: CloseCode, description: &str) -> CloseReason {
    CloseReason { code, description: Some(description.to_string()) }
}
