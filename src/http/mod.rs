//! The route table: a WebSocket upgrade on any path (as Parse accepts), Server-Sent Events on
//! `/events/{className}`, the demo page on `/`, `/health`, and JSON 404s; [`cors`]: which browser origins may use them.

pub mod cors;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use actix_web::{guard, web, HttpResponse};
use serde_json::json;

use crate::feed::FeedHealth;
use crate::hub::Hub;
use crate::transport::{sse, ws};

/// Whether a request asks for a WebSocket upgrade (any path may, as in Parse).
pub fn is_upgrade(req: &actix_web::dev::RequestHead) -> bool {
    req.headers
        .get(actix_web::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// What the plain HTTP endpoints report.
#[derive(Clone)]
pub struct HealthState {
    pub hub: Arc<Hub>,
    pub feed_position: Arc<AtomicI64>,
    pub feed: Arc<FeedHealth>,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/{any:.*}", web::get().guard(guard::fn_guard(|ctx| is_upgrade(ctx.head()))).to(ws::upgrade))
        .route("/events/{class}", web::get().to(sse::events))
        .route("/", web::get().to(demo_page))
        .route("/health", web::get().to(health))
        .route("/ready", web::get().to(ready))
        .default_service(web::to(not_found));
}

async fn health(state: web::Data<HealthState>) -> HttpResponse {
    let stats = state.hub.stats();
    HttpResponse::Ok().json(json!({
        "status": "ok",
        "connections": stats.connections,
        "subscriptions": stats.subscriptions,
        "distinctQueries": stats.distinct_queries,
        "feedPosition": state.feed_position.load(Ordering::Acquire),
    }))
}

/// Whether this gateway can deliver changes now: 200 when its feed listens and reads the change
/// table, 503 (with what is down) while the database or the listener is lost. For load
/// balancers and orchestrators; `/health` only says the process answers.
async fn ready(state: web::Data<HealthState>) -> HttpResponse {
    let (database, listener) = (state.feed.reading(), state.feed.listening());
    let body = json!({
        "status": if database && listener { "ready" } else { "unavailable" },
        "database": database,
        "listener": listener,
    });
    if database && listener {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// A live view of one query over SSE (static/index.html, compiled in): a working example to copy.
async fn demo_page() -> HttpResponse {
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(include_str!("../../static/index.html"))
}

async fn not_found() -> HttpResponse {
    HttpResponse::NotFound().json(json!({"code": 404, "error": "not found"}))
}
