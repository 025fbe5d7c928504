//! Builds the gateway from a [`Config`]: the configuration validated once into [`Settings`],
//! the database (created and migrated), watched tables, feed, hub, the subscribe pipeline and
//! the HTTP server on a `TcpListener` (port 0 in tests), and runs it until stopped.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpServer};

use crate::admission::{Admission, AdmissionLimits};
use crate::auth::sessions::SessionStore;
use crate::auth::Authenticator;
use crate::catchup::Catchup;
use crate::config::{Config, ConfigError, Settings};
use crate::database::{self, DatabaseConfig, DatabaseError};
use crate::feed::{self, Feed};
use crate::http::cors;
use crate::http::{self, HealthState};
use crate::hub::Hub;
use crate::quota::Gate;
use crate::session::SessionSettings;
use crate::transport::frame_guard::ReceiveBudget;
use crate::transport::sse::{self, SseSettings};
use crate::transport::ws::WsSettings;

/// Why the gateway could not start; `Display` is the one line shown to the operator.
#[derive(Debug)]
pub enum StartError {
    Config(ConfigError),
    Database(DatabaseError),
    /// The listen address cannot be bound, or served on.
    Listen {
        action: &'static str,
        address: SocketAddr,
        source: std::io::Error,
    },
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(e) => e.fmt(f),
            StartError::Database(e) => e.fmt(f),
            StartError::Listen { action, address, source } => write!(f, "cannot {action} {address}: {source}"),
        }
    }
}

impl std::error::Error for StartError {}

impl From<DatabaseError> for StartError {
    fn from(e: DatabaseError) -> Self {
        StartError::Database(e)
    }
}

impl From<ConfigError> for StartError {
    fn from(e: ConfigError) -> Self {
        StartError::Config(e)
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
    /// Validates `config`, then starts everything; nothing touches the database before the
    /// configuration is known to be good.
    pub async fn build(config: Config) -> Result<Application, StartError> {
        let settings = config.validate()?;
        let pool = database::open_pool(&settings.database).await?;
        database::migrate(&pool).await?;
        for table in &settings.feed.tables {
            feed::watch(&pool, table).await?;
        }
        let hub = Arc::new(Hub::new(settings.hub));
        let listener_options = database::connect_options(&settings.database, feed::LISTENER_APPLICATION_NAME)?;
        let sessions = SessionStore::new(pool.clone(), &settings.sessions);
        let replay =
            DatabaseConfig { max_connections: settings.history.replay_connections, ..settings.database.clone() };
        let history_pool = database::open_pool(&replay).await?;
        let feed =
            Feed::start(pool, history_pool, listener_options, hub.clone(), &settings.feed, &settings.history).await?;
        let address = settings.server.listen;
        let listener = TcpListener::bind(address).map_err(|source| listen_error("listen on", address, source))?;
        let port = listener.local_addr().map_err(|source| listen_error("listen on", address, source))?.port();
        let health = HealthState { hub: hub.clone(), feed_position: feed.position_handle(), feed: feed.health() };
        let catchup = Arc::new(Catchup::new(hub.clone(), feed.history(), settings.replay_changes));
        let server = serve(listener, settings, hub.clone(), catchup, sessions, health)?;
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

fn listen_error(action: &'static str, address: SocketAddr, source: std::io::Error) -> StartError {
    StartError::Listen { action, address, source }
}

/// The HTTP server on `listener`: both transports over one subscribe pipeline, CORS and the
/// Origin check in front of every route.
fn serve(
    listener: TcpListener,
    settings: Settings,
    hub: Arc<Hub>,
    catchup: Arc<Catchup>,
    sessions: SessionStore,
    health: HealthState,
) -> Result<Server, StartError> {
    let Settings { server, websocket, sse, send_queue, keys, origins, jwt, rules, connections, request_rate, .. } =
        settings;
    let gate = Gate::new(connections);
    let tokens = Arc::new(Authenticator::new(jwt, sessions));
    let limits = AdmissionLimits {
        query: settings.query_limits,
        field_list: settings.field_list,
        revalidate_every: settings.revalidate_every,
    };
    let admission = Arc::new(Admission::new(hub, catchup, tokens, Arc::new(rules), limits));
    let master_key = keys.master_key.clone();
    let sse = SseSettings {
        admission: admission.clone(),
        master_key,
        config: sse,
        send_queue: send_queue.clone(),
        gate: gate.clone(),
    };
    let ws = WsSettings {
        session: Arc::new(SessionSettings {
            keys,
            admission,
            request_rate: request_rate.0,
            request_burst: request_rate.1,
        }),
        ping_interval: Duration::from_millis(websocket.timeout_ms),
        max_frame_bytes: websocket.max_frame_bytes,
        receive_budget: Arc::new(ReceiveBudget::new(websocket.receive_buffer_bytes)),
        send_queue,
        gate,
    };
    let origins = Arc::new(origins);
    let mut http = HttpServer::new(move || {
        let origins = origins.clone();
        App::new()
            .wrap_fn(move |req, srv| cors::apply(&origins, req, srv))
            .app_data(web::Data::new(ws.clone()))
            .app_data(web::Data::new(sse.clone()))
            .app_data(web::Data::new(health.clone()))
            .configure(http::routes)
    })
    .on_connect(sse::remember_socket)
    .shutdown_timeout(5)
    .disable_signals();
    if server.workers > 0 {
        http = http.workers(server.workers);
    }
    let address = server.listen;
    Ok(http.listen(listener).map_err(|source| listen_error("serve on", address, source))?.run())
}

/// Stops a running application gracefully within `timeout`.
pub async fn stop(handle: ServerHandle, timeout: Duration) {
    let _ = tokio::time::timeout(timeout, handle.stop(true)).await;
}
