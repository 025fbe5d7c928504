//! Builds the gateway from a [`Config`]: database (created and migrated), watched tables, feed,
//! hub and HTTP server on a `TcpListener` (port 0 in tests), and runs it until stopped.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpServer};

use crate::auth::jwt::JwtVerifier;
use crate::auth::rules::ClassRules;
use crate::auth::sessions::SessionStore;
use crate::auth::Authenticator;
use crate::catchup::Catchup;
use crate::config::Config;
use crate::database::{self, DatabaseError};
use crate::feed::{self, Feed};
use crate::http::cors::{self, OriginPolicy};
use crate::http::{self, HealthState};
use crate::hub::Hub;
use crate::session::SessionSettings;
use crate::transport::sse::SseSettings;
use crate::transport::ws::WsSettings;

/// Why the gateway could not start; `Display` is the one line shown to the operator.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

impl From<DatabaseError> for StartError {
    fn from(e: DatabaseError) -> Self {
        StartError(e.0)
    }
}

/// A built, not yet running gateway.
pub struct Application {
    server: Server,
    port: u16,
    feed: Feed,
    hub: Arc<Hub>,
}

impl Application {
    pub async fn build(config: Config) -> Result<Application, StartError> {
        let pool = database::open_pool(&config.database).await?;
        database::migrate(&pool).await?;
        for table in &config.feed.tables {
            feed::watch(&pool, table).await?;
        }
        let hub = Arc::new(Hub::new(config.limits.subscriptions_per_connection));
        let listener_options = database::connect_options(&config.database, feed::LISTENER_APPLICATION_NAME)?;
        let jwt = JwtVerifier::from_config(&config.jwt)
            .map_err(|e| StartError(format!("invalid configuration: jwt: {e}")))?;
        let auth = Authenticator::new(jwt, SessionStore::new(pool.clone(), &config.sessions));
        let rules =
            Arc::new(ClassRules::new(&config.classes).map_err(|e| StartError(format!("invalid configuration: {e}")))?);
        let revalidate_every = Duration::from_millis(config.sessions.cache_ttl_ms.max(100));
        let feed = Feed::start(pool, listener_options, hub.clone(), &config.feed, &config.history).await?;
        let catchup = Arc::new(Catchup::new(hub.clone(), feed.history()));

        let listener = TcpListener::bind(config.server.listen)
            .map_err(|e| StartError(format!("cannot listen on {}: {e}", config.server.listen)))?;
        let port = listener.local_addr().map_err(|e| StartError(format!("cannot read the bound address: {e}")))?.port();
        let origins = Arc::new(
            OriginPolicy::new(&config.browser)
                .map_err(|e| StartError(format!("invalid configuration: browser.allowed_origins: {e}")))?,
        );
        let ws = WsSettings {
            hub: hub.clone(),
            session: Arc::new(SessionSettings {
                keys: config.keys.clone(),
                query_limits: config.query_limits(),
                catchup: Some(catchup.clone()),
                auth: Some(auth.clone()),
                rules: rules.clone(),
                revalidate_every,
            }),
            ping_interval: config.websocket_timeout(),
            max_frame_bytes: config.websocket.max_frame_bytes,
            send_queue: config.limits.send_queue,
            origins: origins.clone(),
        };
        let sse = SseSettings {
            hub: hub.clone(),
            auth,
            rules,
            master_key: config.keys.master_key.clone(),
            token_cookie: config.sse.token_cookie.clone(),
            revalidate_every,
            catchup,
            query_limits: config.query_limits(),
            keepalive: Duration::from_millis(config.sse.keepalive_ms),
            retry: Duration::from_millis(config.sse.retry_ms),
            send_queue: config.limits.send_queue,
        };
        let health = HealthState { hub: hub.clone(), feed_position: feed.position_handle() };
        let mut server = HttpServer::new(move || {
            let origins = origins.clone();
            App::new()
                .wrap_fn(move |req, srv| cors::apply(&origins, req, srv))
                .app_data(web::Data::new(ws.clone()))
                .app_data(web::Data::new(sse.clone()))
                .app_data(web::Data::new(health.clone()))
                .configure(http::routes)
        })
        .shutdown_timeout(5)
        .disable_signals();
        if config.server.workers > 0 {
            server = server.workers(config.server.workers);
        }
        let server = server
            .listen(listener)
            .map_err(|e| StartError(format!("cannot serve on {}: {e}", config.server.listen)))?
            .run();
        Ok(Application { server, port, feed, hub })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn hub(&self) -> Arc<Hub> {
        self.hub.clone()
    }

    /// A handle that stops the server (see [`ServerHandle::stop`]).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Runs until the server is stopped through its handle; the feed stops with it.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let Application { server, feed, .. } = self;
        let result = server.await;
        drop(feed);
        result
    }
}

/// Stops a running application gracefully within `timeout`.
pub async fn stop(handle: ServerHandle, timeout: Duration) {
    let _ = tokio::time::timeout(timeout, handle.stop(true)).await;
}
