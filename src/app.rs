//! Builds the gateway from a [`Config`]: the configuration validated once into [`Settings`],
//! the metrics registry, the database (created and migrated), watched tables, feed, hub, the
//! subscribe pipeline and the HTTP server on a `TcpListener` (port 0 in tests), and runs it
//! until stopped, or drains it ([`Shutdown`]).

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpServer};
use sqlx::PgPool;

use crate::admission::{Admission, AdmissionLimits};
use crate::auth::sessions::SessionStore;
use crate::auth::Authenticator;
use crate::catchup::Catchup;
use crate::config::{Config, ConfigError, Settings};
use crate::database::{self, DatabaseConfig, DatabaseError};
use crate::feed::{self, Feed, Snapshots};
use crate::http::cors;
use crate::http::{self, Listeners, Status};
use crate::hub::Hub;
use crate::quota::Gate;
use crate::session::SessionSettings;
use crate::snapshot::SnapshotSource;
use crate::telemetry::Metrics;
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
    metrics_port: Option<u16>,
    feed: Feed,
    hub: Arc<Hub>,
    gate: Arc<Gate>,
    metrics: Arc<Metrics>,
    shutdown: ShutdownTimes,
}

/// The `[server]` keys a shutdown follows.
#[derive(Debug, Clone, Copy)]
struct ShutdownTimes {
    drain_delay: Duration,
    timeout: Duration,
}

impl Application {
    /// Validates `config`, then starts everything; nothing touches the database before the
    /// configuration is known to be good.
    pub async fn build(config: Config) -> Result<Application, StartError> {
        let settings = config.validate()?;
        let metrics = Arc::new(Metrics::new());
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
        let feed = Feed::start(
            pool,
            history_pool,
            listener_options,
            hub.clone(),
            &settings.feed,
            &settings.history,
            metrics.clone(),
        )
        .await?;
        let listeners = bind(&settings)?;
        let gate = Gate::new(settings.connections.clone());
        let status = Status {
            hub: hub.clone(),
            feed: feed.status(),
            gate: gate.clone(),
            metrics: metrics.clone(),
            metrics_token: settings.metrics.token.as_deref().map(Arc::from),
            ready_max_lag: Duration::from_millis(settings.server.ready_max_lag_ms),
        };
        let snapshot_pool =
            DatabaseConfig { max_connections: settings.snapshot_connections, ..settings.database.clone() };
        let snapshot_pool = database::open_pool(&snapshot_pool).await?;
        let snapshots: Arc<dyn SnapshotSource> =
            Arc::new(Snapshots::new(snapshot_pool, settings.feed.aliases.clone(), settings.snapshot_timeout));
        let (history, rows) = (feed.history(), settings.snapshot_rows);
        let catchup = Catchup::new(hub.clone(), history, settings.replay_changes, snapshots.clone(), rows);
        let catchup = (Arc::new(catchup), snapshots);
        let (port, metrics_port) = (listeners.port, listeners.metrics_port);
        let shutdown = ShutdownTimes {
            drain_delay: Duration::from_millis(settings.server.drain_delay_ms),
            timeout: Duration::from_millis(settings.server.shutdown_timeout_ms),
        };
        let server = serve(listeners, settings, catchup, sessions, status)?;
        Ok(Application { server, port, metrics_port, feed, hub, gate, metrics, shutdown })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of the separate metrics listener (`metrics.listen`), if there is one.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics_port
    }

    pub fn hub(&self) -> Arc<Hub> {
        self.hub.clone()
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// A handle that stops the server at once (see [`ServerHandle::stop`]).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// A handle that drains and stops the gateway (see [`Shutdown::run`]).
    pub fn shutdown(&self) -> Shutdown {
        Shutdown { server: self.server.handle(), hub: self.hub.clone(), gate: self.gate.clone(), times: self.shutdown }
    }

    /// Runs until the server is stopped through its handle; the feed stops with it.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let Application { server, feed, .. } = self;
        let result = server.await;
        drop(feed);
        result
    }
}

/// Drains a running gateway and stops it.
#[derive(Clone)]
pub struct Shutdown {
    server: ServerHandle,
    hub: Arc<Hub>,
    gate: Arc<Gate>,
    times: ShutdownTimes,
}

impl Shutdown {
    /// `server.shutdown_timeout_ms`.
    pub fn timeout(&self) -> Duration {
        self.times.timeout
    }

    /// `/ready` turns 503 and new connections are refused at once; after `drain_delay_ms` every
    /// WebSocket is closed with 1001 and every SSE stream ends with its position (both after
    /// what is queued for them); the server then stops, within `shutdown_timeout_ms` in all.
    pub async fn run(self) {
        let deadline = tokio::time::Instant::now() + self.times.timeout;
        self.gate.drain();
        tracing::info!(drain_delay_ms = self.times.drain_delay.as_millis() as u64, "draining: /ready says 503");
        tokio::time::sleep(self.times.drain_delay).await;
        let at = self.hub.close_all();
        let open = self.hub.census().connections.iter().sum::<usize>();
        tracing::info!(position = %at, connections = open, "closing every connection");
        // Connections leave the hub once their last frames are written.
        while self.hub.census().connections.iter().sum::<usize>() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let _ = tokio::time::timeout(left, self.server.stop(true)).await;
        self.server.stop(false).await;
    }
}

/// The bound sockets: the main one, and the metrics one when `metrics.listen` is set.
struct Bound {
    main: TcpListener,
    port: u16,
    metrics: Option<TcpListener>,
    metrics_port: Option<u16>,
}

fn bind(settings: &Settings) -> Result<Bound, StartError> {
    let bind_one = |address: SocketAddr| -> Result<(TcpListener, u16), StartError> {
        let listener = TcpListener::bind(address).map_err(|source| listen_error("listen on", address, source))?;
        let port = listener.local_addr().map_err(|source| listen_error("listen on", address, source))?.port();
        Ok((listener, port))
    };
    let (main, port) = bind_one(settings.server.listen)?;
    let (metrics, metrics_port) = match settings.metrics.listen.filter(|_| settings.metrics.enabled) {
        Some(address) => bind_one(address).map(|(l, p)| (Some(l), Some(p)))?,
        None => (None, None),
    };
    Ok(Bound { main, port, metrics, metrics_port })
}

fn listen_error(action: &'static str, address: SocketAddr, source: std::io::Error) -> StartError {
    StartError::Listen { action, address, source }
}

/// The HTTP server on the bound sockets: both transports over one subscribe pipeline, CORS
/// and the Origin check in front of every route, `/metrics` where [`Listeners`] says.
fn serve(
    bound: Bound,
    settings: Settings,
    catchup: (Arc<Catchup>, Arc<dyn SnapshotSource>),
    sessions: SessionStore,
    status: Status,
) -> Result<Server, StartError> {
    let (server, metrics_config, origins) =
        (settings.server.clone(), settings.metrics.clone(), settings.origins.clone());
    let (ws, sse) = transports(settings, catchup, sessions, &status);
    let origins = Arc::new(origins);
    let listeners = Listeners { metrics_enabled: metrics_config.enabled, metrics_port: bound.metrics_port };
    let mut http = HttpServer::new(move || {
        let origins = origins.clone();
        App::new()
            .wrap_fn(move |req, srv| cors::apply(&origins, req, srv))
            .wrap_fn(move |req, srv| http::restrict(listeners, req, srv))
            .app_data(web::Data::new(ws.clone()))
            .app_data(web::Data::new(sse.clone()))
            .app_data(web::Data::new(status.clone()))
            .configure(http::routes)
    })
    .on_connect(|connection, data| {
        // Frames are small and latency matters more than packet count: no Nagle delay.
        if let Some(tcp) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
            let _ = tcp.set_nodelay(true);
        }
        sse::remember_socket(connection, data)
    })
    .shutdown_timeout(server.shutdown_timeout_ms.div_ceil(1000))
    .disable_signals();
    if server.workers > 0 {
        http = http.workers(server.workers);
    }
    let address = server.listen;
    http = http.listen(bound.main).map_err(|source| listen_error("serve on", address, source))?;
    if let (Some(listener), Some(address)) = (bound.metrics, metrics_config.listen) {
        http = http.listen(listener).map_err(|source| listen_error("serve on", address, source))?;
    }
    Ok(http.run())
}

/// What each transport's connections share: one subscribe pipeline, the quotas, the metrics.
fn transports(
    settings: Settings,
    (catchup, snapshots): (Arc<Catchup>, Arc<dyn SnapshotSource>),
    sessions: SessionStore,
    status: &Status,
) -> (WsSettings, SseSettings) {
    let Settings { websocket, sse, send_queue, keys, jwt, rules, request_rate, .. } = settings;
    let (hub, gate, metrics) = (status.hub.clone(), status.gate.clone(), status.metrics.clone());
    let tokens = Arc::new(Authenticator::new(jwt, sessions, metrics.clone()));
    let limits = AdmissionLimits {
        query: settings.query_limits,
        field_list: settings.field_list,
        revalidate_every: settings.revalidate_every,
        snapshot_rows: settings.snapshot_rows,
    };
    let admission = Arc::new(Admission::new(hub, catchup, tokens, Arc::new(rules), snapshots, limits));
    let master_key = keys.master_key.clone();
    let sse = SseSettings {
        admission: admission.clone(),
        master_key,
        config: sse,
        send_queue: send_queue.clone(),
        gate: gate.clone(),
        metrics: metrics.clone(),
    };
    let ws = WsSettings {
        session: Arc::new(SessionSettings {
            keys,
            admission,
            request_rate: request_rate.0,
            request_burst: request_rate.1,
            metrics,
        }),
        ping_interval: Duration::from_millis(websocket.timeout_ms),
        max_frame_bytes: websocket.max_frame_bytes,
        receive_budget: Arc::new(ReceiveBudget::new(websocket.receive_buffer_bytes)),
        send_queue,
        gate,
    };
    (ws, sse)
}

/// Opens the configured database (creating it when `database.create_if_missing` allows), for
/// the administrative commands.
pub async fn connect(config: Config) -> Result<PgPool, StartError> {
    let settings = config.validate()?;
    Ok(database::open_pool(&settings.database).await?)
}

/// Applies livegate's migrations.
pub async fn migrate(pool: &PgPool) -> Result<(), StartError> {
    Ok(database::migrate(pool).await?)
}

/// Installs the capture trigger on `table` (migrating first, so a fresh database works).
pub async fn watch(pool: &PgPool, table: &str) -> Result<(), StartError> {
    database::migrate(pool).await?;
    Ok(feed::watch(pool, table).await?)
}

/// Removes the capture trigger from `table`.
pub async fn unwatch(pool: &PgPool, table: &str) -> Result<(), StartError> {
    database::migrate(pool).await?;
    Ok(feed::unwatch(pool, table).await?)
}
