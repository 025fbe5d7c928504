//! WebSocket transport: moves frames between a socket and a [`ParseSession`], pings the peer
//! every `websocket.timeout_ms` and drops it when the previous ping went unanswered, refuses
//! frames and messages above `websocket.max_frame_bytes` (close 1009) as soon as their header
//! announces them, closes a client whose next frame would take the frames in flight on all
//! connections past `websocket.receive_buffer_bytes` (close 1013, see [`super::frame_guard`]),
//! and closes a client whose send queue overflowed (close 1008) without anyone else noticing.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{dev, web, FromRequest, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, ProtocolError};
use serde::Deserialize;
use tokio::time::{interval_at, Instant, MissedTickBehavior};

use super::frame_guard::{FrameGuard, FrameLimits, ReceiveBudget, Refusal, Verdict};
use super::sleep_until;
use crate::hub::{Outbox, Outgoing, Queue, QueueBudget};
use crate::quota::{Gate, Kind, Permit};
use crate::session::{Framer, ParseSession, SessionSettings};

/// The `[websocket]` section.
#[derive(Debug, Clone, Deserialize)]
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
    let permit = match settings.gate.admit(super::peer_ip(&req, &settings.gate), Kind::WebSocket) {
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
    actix_web::rt::spawn(serve(socket, stream, verdict, settings.get_ref().clone(), permit));
    Ok(response)
}

/// The request body read through `guard`, again as the `web::Payload` that `actix_ws::handle`
/// insists on (it has no variant taking any other stream).
async fn guarded(req: &HttpRequest, guard: FrameGuard<web::Payload>) -> actix_web::Result<web::Payload> {
    let mut payload: dev::Payload = dev::Payload::Stream { payload: Box::pin(guard) };
    web::Payload::from_request(req, &mut payload).await
}

/// One connection's life; `_permit` holds its place in the connection quotas until it ends.
async fn serve(
    mut socket: actix_ws::Session,
    mut stream: actix_ws::AggregatedMessageStream,
    verdict: Verdict,
    settings: WsSettings,
    _permit: Permit,
) {
    let (outbox, mut queue) = Outbox::new(settings.send_queue.clone());
    let mut session = ParseSession::new(settings.session.clone(), outbox.clone());
    let framer = session.framer();
    let mut ping = interval_at(Instant::now() + settings.ping_interval, settings.ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut awaiting_pong = false;

    let close: Option<CloseReason> = loop {
        let mut sender = Sender { socket: &mut socket, queue: &mut queue, framer: &framer, outbox: &outbox };
        tokio::select! {
            biased;
            _ = outbox.closed() => break Some(too_slow()),
            message = stream.recv() => {
                if let Err(close) = received(message, &mut session, &mut sender, &verdict, &mut awaiting_pong).await {
                    break close;
                }
            }
            item = sender.queue.recv() => {
                let Some(item) = item else { break None };
                if let Err(close) = sender.send(item).await {
                    break close;
                }
            }
            _ = sleep_until(session.next_check()) => {
                if let Err(close) = sender.send_while(session.revalidate()).await {
                    break close;
                }
            }
            _ = ping.tick() => {
                if awaiting_pong {
                    tracing::debug!("websocket peer missed a pong; dropping it");
                    break None;
                }
                awaiting_pong = true;
                if socket.ping(b"").await.is_err() {
                    break None;
                }
            }
        }
    };
    // Leave the hub before the (possibly slow) close handshake.
    drop(session);
    let _ = socket.close(close).await;
}

/// Handles one message from the client (or the end of its stream).
async fn received(
    message: Option<Result<AggregatedMessage, ProtocolError>>,
    session: &mut ParseSession,
    sender: &mut Sender<'_>,
    verdict: &Verdict,
    awaiting_pong: &mut bool,
) -> Result<(), Stopped> {
    match message {
        None | Some(Ok(AggregatedMessage::Close(_))) => Err(None),
        Some(Ok(AggregatedMessage::Text(text))) => sender.send_while(session.on_text(&text)).await,
        Some(Ok(AggregatedMessage::Binary(_))) => {
            session.on_binary();
            Ok(())
        }
        Some(Ok(AggregatedMessage::Ping(bytes))) => sender.socket.pong(&bytes).await.map_err(|_| None),
        Some(Ok(AggregatedMessage::Pong(_))) => {
            *awaiting_pong = false;
            Ok(())
        }
        Some(Err(e)) => Err(Some(receive_error(e, verdict))),
    }
}

/// The sending side of a connection: the queue drained into the socket.
struct Sender<'a> {
    socket: &'a mut actix_ws::Session,
    queue: &'a mut Queue,
    framer: &'a Framer,
    outbox: &'a Outbox,
}

/// Why sending stopped: the close to send, if any.
type Stopped = Option<CloseReason>;

impl Sender<'_> {
    /// Frames and writes one item; the socket's own buffer may be full too, so overflow of the
    /// queue is watched meanwhile.
    async fn send(&mut self, item: Outgoing) -> Result<(), Stopped> {
        let Some(text) = self.framer.frame(item) else { return Ok(()) };
        tokio::select! {
            sent = self.socket.text(text) => sent.map_err(|_| None),
            _ = self.outbox.closed() => Err(Some(too_slow())),
        }
    }

    /// Runs `work` (a frame's handling, a token re-check) while still sending what the queue
    /// holds: a slow token lookup never holds up the connection's events.
    async fn send_while(&mut self, work: impl std::future::Future<Output = ()>) -> Result<(), Stopped> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                biased;
                () = &mut work => return Ok(()),
                _ = self.outbox.closed() => return Err(Some(too_slow())),
                item = self.queue.recv() => match item {
                    Some(item) => self.send(item).await?,
                    None => return Err(None),
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
fn receive_error(error: ProtocolError, verdict: &Verdict) -> CloseReason {
    if let Some(refusal) = verdict.refusal() {
        tracing::debug!(%refusal, "websocket frame refused by its header");
        return refused(refusal);
    }
    match error {
        ProtocolError::Overflow => reason(CloseCode::Size, "frame too large"),
        ProtocolError::Io(e) if e.to_string().contains("continuation size") => {
            reason(CloseCode::Size, "message too large")
        }
        e => {
            tracing::debug!(error = %e, "websocket protocol error");
            reason(CloseCode::Protocol, "protocol error")
        }
    }
}

fn refused(refusal: Refusal) -> CloseReason {
    match refusal {
        Refusal::FrameTooLarge => reason(CloseCode::Size, "frame too large"),
        Refusal::MessageTooLarge => reason(CloseCode::Size, "message too large"),
        Refusal::ReceiveBufferFull => reason(CloseCode::Again, "receive buffer full: try again later"),
    }
}

fn reason(code: CloseCode, description: &str) -> CloseReason {
    CloseReason { code, description: Some(description.to_string()) }
}
