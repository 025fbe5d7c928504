//! WebSocket transport: moves frames between a socket and a [`ParseSession`], pings the peer
//! every `websocket.timeout_ms` and drops it when the previous ping went unanswered, refuses
//! frames above `websocket.max_frame_bytes` (close 1009), and closes a client whose send queue
//! overflowed (close 1008) without anyone else noticing.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, ProtocolError};
use serde::Deserialize;
use tokio::time::{interval_at, Instant, MissedTickBehavior};

use super::sleep_until;
use crate::hub::{Outbox, QueueBudget};
use crate::session::{ParseSession, SessionSettings};

/// The `[websocket]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// Ping interval; a peer that has not answered the previous ping is dropped.
    pub timeout_ms: u64,
    /// Largest frame (and message) a client may send, in bytes.
    pub max_frame_bytes: usize,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig { timeout_ms: 10_000, max_frame_bytes: 64 * 1024 }
    }
}

/// Everything a WebSocket connection needs from the server. (Which browser origins may open a
/// socket is decided before the upgrade reaches this module: see `http::cors`.)
#[derive(Clone)]
pub struct WsSettings {
    pub session: Arc<SessionSettings>,
    pub ping_interval: Duration,
    pub max_frame_bytes: usize,
    pub send_queue: QueueBudget,
}

pub async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    settings: web::Data<WsSettings>,
) -> actix_web::Result<HttpResponse> {
    let (response, socket, stream) = actix_ws::handle(&req, body)?;
    let stream = stream
        .max_frame_size(settings.max_frame_bytes)
        .aggregate_continuations()
        .max_continuation_size(settings.max_frame_bytes);
    actix_web::rt::spawn(serve(socket, stream, settings.get_ref().clone()));
    Ok(response)
}

async fn serve(mut socket: actix_ws::Session, mut stream: actix_ws::AggregatedMessageStream, settings: WsSettings) {
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
                Some(Err(ProtocolError::Overflow)) => break Some(reason(CloseCode::Size, "frame too large")),
                Some(Err(ProtocolError::Io(e))) if e.to_string().contains("continuation size") => {
                    break Some(reason(CloseCode::Size, "message too large"))
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "websocket protocol error");
                    break Some(reason(CloseCode::Protocol, "protocol error"));
                }
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

fn reason(code: CloseCode, description: &str) -> CloseReason {
    CloseReason { code, description: Some(description.to_string()) }
}
