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
use crate::hub::{Outbox, QueueBudget};
use crate::quota::{Gate, Kind, Permit};
use crate::session::{ParseSession, SessionSettings};

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
    let permit = match settings.gate.admit(super::peer_ip(&req), Kind::WebSocket) {
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
    let (outbox, mut queue) = Outbox::new(settings.send_queue);
    let mut session = ParseSession::new(settings.session.clone(), outbox.clone());
    let mut ping = interval_at(Instant::now() + settings.ping_interval, settings.ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut awaiting_pong = false;

    let close: Option<CloseReason> = loop {
        tokio::select! {
            biased;
            _ = outbox.closed() => break Some(reason(CloseCode::Policy, "send queue full: client too slow")),
            message = stream.recv() => match message {
                None | Some(Ok(AggregatedMessage::Close(_))) => break None,
                Some(Ok(AggregatedMessage::Text(text))) => session.on_text(&text).await,
                Some(Ok(AggregatedMessage::Binary(_))) => session.on_binary(),
                Some(Ok(AggregatedMessage::Ping(bytes))) => {
                    if socket.pong(&bytes).await.is_err() {
                        break None;
                    }
                }
                Some(Ok(AggregatedMessage::Pong(_))) => awaiting_pong = false,
                Some(Err(e)) => break Some(receive_error(e, &verdict)),
            },
            item = queue.recv() => {
                let Some(item) = item else { break None };
                let Some(text) = session.frame(item) else { continue };
                // The socket's own buffer may be full too: keep watching for overflow meanwhile.
                tokio::select! {
                    sent = socket.text(text) => if sent.is_err() { break None },
                    _ = outbox.closed() => break Some(reason(CloseCode::Policy, "send queue full: client too slow")),
                }
            }
            _ = sleep_until(session.next_check()) => session.revalidate().await,
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
