//! The route table: a WebSocket upgrade on any path (as Parse accepts), Server-Sent Events on
//! `/events/{className}`, the demo page on `/`, `/health` (liveness), `/ready` (readiness),
//! `/metrics` (Prometheus), and JSON 404s; [`Listeners`]: which of them a listener serves;
//! [`cors`]: which browser origins may use them.

pub mod cors;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::{guard, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::feed::FeedStatus;
use crate::hub::Hub;
use crate::quota::Gate;
use crate::telemetry::metrics::Snapshot;
use crate::telemetry::Metrics;
use crate::transport::{sse, ws};

/// Whether a request asks for a WebSocket upgrade (any path may, as in Parse).
pub fn is_upgrade(req: &actix_web::dev::RequestHead) -> bool {
    req.headers
        .get(actix_web::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// The `[metrics]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `GET /metrics` at all.
    pub enabled: bool,
    /// A separate address for `/metrics` (with `/health` and `/ready`), e.g. one only the
    /// monitoring network reaches; none serves it on `server.listen`.
    pub listen: Option<SocketAddr>,
    /// When set, a scrape must send `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { enabled: true, listen: None, token: None }
    }
}

/// What the plain HTTP endpoints report on.
#[derive(Clone)]
pub struct Status {
    pub hub: Arc<Hub>,
    pub feed: Arc<FeedStatus>,
    /// Draining once a shutdown started.
    pub gate: Arc<Gate>,
    pub metrics: Arc<Metrics>,
    pub metrics_token: Option<Arc<str>>,
    pub ready_max_lag: Duration,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/{any:.*}", web::get().guard(guard::fn_guard(|ctx| is_upgrade(ctx.head()))).to(ws::upgrade))
        .route("/events/{class}", web::get().to(sse::events))
        .route("/", web::get().to(demo_page))
        .route("/livegate.js", web::get().to(client_module))
        .route("/health", web::get().to(health))
        .route("/ready", web::get().to(ready))
        .route("/metrics", web::get().to(metrics))
        .default_service(web::to(not_found));
}

/// Which paths a listener serves: with `metrics.listen` set, `/metrics` is served only there
/// (beside `/health` and `/ready`), and nothing else is; without it, `/metrics` is served on
/// `server.listen` when enabled.
#[derive(Debug, Clone, Copy)]
pub struct Listeners {
    pub metrics_enabled: bool,
    /// The port of the separate metrics listener, if any.
    pub metrics_port: Option<u16>,
}

impl Listeners {
    /// Whether a request for `path` that arrived on `local_port` is served.
    pub fn serves(&self, local_port: u16, path: &str) -> bool {
        let on_metrics_listener = self.metrics_port == Some(local_port);
        match path {
            "/metrics" => self.metrics_enabled && (on_metrics_listener || self.metrics_port.is_none()),
            "/health" | "/ready" => true,
            _ => !on_metrics_listener,
        }
    }
}

/// Middleware: answers 404 for what the listener a request arrived on does not serve.
pub fn restrict<S, B>(
    listeners: Listeners,
    req: ServiceRequest,
    service: &S,
) -> impl Future<Output = Result<ServiceResponse<EitherBody<B>>, actix_web::Error>>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let served = listeners.serves(req.app_config().local_addr().port(), req.path());
    let step = if served { Ok(service.call(req)) } else { Err(req.into_response(not_found_response())) };
    async move {
        match step {
            Ok(call) => Ok(call.await?.map_into_left_body()),
            Err(answer) => Ok(answer.map_into_right_body()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{unready, Listeners};

    #[test]
    fn readiness_names_the_first_thing_wrong() {
        assert_eq!(unready(true, true, false, false), None);
        assert_eq!(unready(true, true, false, true), Some("the feed is behind by more than server.ready_max_lag_ms"));
        assert_eq!(unready(true, false, false, true), Some("the change listener is not connected"));
        assert_eq!(unready(false, false, false, false), Some("the database cannot be read"));
        assert_eq!(unready(false, false, true, true), Some("shutting down"), "a drain wins over everything");
    }

    #[test]
    fn a_separate_metrics_listener_serves_metrics_and_probes_only() {
        let apart = Listeners { metrics_enabled: true, metrics_port: Some(9100) };
        assert!(apart.serves(9100, "/metrics") && apart.serves(9100, "/ready") && apart.serves(9100, "/health"));
        assert!(!apart.serves(9100, "/events/messages") && !apart.serves(9100, "/"));
        assert!(!apart.serves(8080, "/metrics") && apart.serves(8080, "/events/messages"));
        let together = Listeners { metrics_enabled: true, metrics_port: None };
        assert!(together.serves(8080, "/metrics") && together.serves(8080, "/"));
        let off = Listeners { metrics_enabled: false, metrics_port: None };
        assert!(!off.serves(8080, "/metrics") && off.serves(8080, "/health"));
    }
}

/// Liveness: the process serves HTTP. Always 200, with what it holds.
async fn health(state: web::Data<Status>) -> HttpResponse {
    let stats = state.hub.stats();
    HttpResponse::Ok().json(json!({
        "status": "ok",
        "connections": stats.connections,
        "subscriptions": stats.subscriptions,
        "distinctQueries": stats.distinct_queries,
        "feedPosition": state.feed.position(),
    }))
}

/// Readiness, for load balancers and orchestrators: 200 only while the feed listens, reads the
/// change table and is within `server.ready_max_lag_ms`, and no shutdown has started; else 503
/// naming what is wrong.
async fn ready(state: web::Data<Status>) -> HttpResponse {
    let (database, listener, draining) = (state.feed.reading(), state.feed.listening(), state.gate.draining());
    let lag = state.feed.lag();
    let reason = unready(database, listener, draining, lag > state.ready_max_lag);
    let body = json!({
        "status": if reason.is_none() { "ready" } else { "unavailable" },
        "reason": reason,
        "database": database,
        "listener": listener,
        "draining": draining,
        "lagMs": lag.as_millis() as u64,
    });
    if reason.is_none() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Why the gateway is not ready, the first thing wrong in order of importance; `None` when ready.
fn unready(database: bool, listener: bool, draining: bool, lagging: bool) -> Option<&'static str> {
    if draining {
        Some("shutting down")
    } else if !database {
        Some("the database cannot be read")
    } else if !listener {
        Some("the change listener is not connected")
    } else if lagging {
        Some("the feed is behind by more than server.ready_max_lag_ms")
    } else {
        None
    }
}

/// The Prometheus exposition, behind the bearer token when one is configured.
async fn metrics(req: HttpRequest, state: web::Data<Status>) -> HttpResponse {
    if let Some(token) = &state.metrics_token {
        let presented = req.headers().get("authorization").and_then(|v| v.to_str().ok());
        let presented = presented.and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
        if !presented.is_some_and(|p| crate::auth::constant_time_eq(p, token)) {
            return HttpResponse::Unauthorized()
                .insert_header(("www-authenticate", "Bearer"))
                .json(json!({"code": 401, "error": "a bearer token is required for /metrics"}));
        }
    }
    let census = state.hub.census();
    let feed = &state.feed;
    let snapshot = Snapshot {
        connections: census.connections,
        subscriptions: census.subscriptions,
        indexed_queries: census.indexed_queries,
        scanned_queries: census.scanned_queries,
        feed_position: feed.position(),
        feed_head: feed.head(),
        feed_lag_seconds: feed.lag().as_secs_f64(),
        history_changes: (feed.head() - feed.floor()).max(0),
        history_floor: feed.floor(),
        notify_queue_usage: feed.notify_queue_usage(),
    };
    HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(state.metrics.render(&snapshot))
}

/// A live view of one query over SSE (static/index.html, compiled in): a working example to copy.
async fn demo_page() -> HttpResponse {
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(include_str!("../../static/index.html"))
}

/// The browser client (static/livegate.js, compiled in): an ES module that keeps a live list.
async fn client_module() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header(("cache-control", "no-cache"))
        .body(include_str!("../../static/livegate.js"))
}

async fn not_found() -> HttpResponse {
    not_found_response()
}

fn not_found_response() -> HttpResponse {
    HttpResponse::NotFound().json(json!({"code": 404, "error": "not found"}))
}
