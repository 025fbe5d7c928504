//! Transports: the only code that knows socket framing. Each moves frames between a client and
//! the shared hub; everything protocol-specific happens in pure code (`protocol`, `session`).

pub mod frame_guard;
pub mod sse;
pub mod ws;

use std::net::IpAddr;

use actix_web::{HttpRequest, HttpResponse};
use tokio::time::Instant;

use crate::quota::{Gate, Turned};

/// The address a connection counts against in the per-address quotas: its peer, or the client
/// a trusted proxy names (see [`Gate::client_ip`]).
fn peer_ip(req: &HttpRequest, gate: &Gate) -> IpAddr {
    let peer = req.peer_addr().map_or(IpAddr::from([0, 0, 0, 0]), |addr| addr.ip());
    let forwarded_for = req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok());
    gate.client_ip(peer, forwarded_for)
}

/// The answer to a connection the quotas turned away: 429 or 503 with a JSON body, and a hint
/// to retry a second later.
fn turned_away(turned: Turned) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(turned.status())
        .unwrap_or(actix_web::http::StatusCode::SERVICE_UNAVAILABLE);
    HttpResponse::build(status)
        .insert_header(("retry-after", "1"))
        .json(serde_json::json!({"code": turned.status(), "error": turned.message()}))
}

/// Sleeps until `at`, forever when there is nothing to wait for (no token to re-check).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
