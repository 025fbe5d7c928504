//! Test harness: a fresh database per test, the real app on port 0, real WebSocket clients.

mod database;
pub mod metrics;
pub mod process;
pub mod sse;

pub use database::{server_url, TestDb};

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use livegate::app::Application;
use livegate::config::Config;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The standard watched table of these tests.
pub const MESSAGES: &str = "create table messages (
    id bigserial primary key,
    room text,
    body text,
    n integer,
    tags text[],
    due date,
    place jsonb,
    owner jsonb,
    secret_note text,
    _internal text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
)";

pub struct TestApp {
    pub port: u16,
    pub db: TestDb,
    handle: actix_web::dev::ServerHandle,
    /// What it was started with, for a restart.
    config: Config,
}

impl TestApp {
    /// A database with the `messages` table, watched, and the gateway on it.
    pub async fn spawn() -> TestApp {
        TestApp::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(configure: impl FnOnce(&mut Config)) -> TestApp {
        let db = TestDb::create().await;
        db.execute(MESSAGES).await;
        TestApp::spawn_on(db, |config| {
            config.feed.tables = vec!["messages".into()];
            configure(config)
        })
        .await
    }

    pub async fn spawn_on(db: TestDb, configure: impl FnOnce(&mut Config)) -> TestApp {
        if std::env::var_os("RUST_LOG").is_some() {
            livegate::telemetry::log::init(&Default::default());
        }
        let mut config = test_config(&db.url);
        configure(&mut config);
        let app = Application::build(config.clone()).await.expect("the app starts");
        let port = app.port();
        let handle = app.handle();
        tokio::spawn(app.run_until_stopped());
        TestApp { port, db, handle, config }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port)
    }

    pub async fn client(&self) -> WsClient {
        WsClient::connect(&self.ws_url()).await
    }

    /// A client that has connected and subscribed (requestId 1) to `where_` on `messages`.
    pub async fn subscriber(&self, where_: Value) -> WsClient {
        let mut client = self.client().await;
        client.connect_parse().await;
        client.subscribe(1, "messages", where_).await;
        client
    }

    pub async fn health(&self) -> Value {
        self.get_json("/health").await.1
    }

    /// `GET /ready`: its status and JSON body.
    pub async fn ready(&self) -> (u16, Value) {
        self.get_json("/ready").await
    }

    async fn get_json(&self, path: &str) -> (u16, Value) {
        let (status, body) = get(self.port, path, &[]).await;
        (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path} body {body:?}: {e}")))
    }

    /// Waits until the gateway has fanned out every change committed so far.
    pub async fn wait_until_published(&self) {
        for _ in 0..200 {
            let (head, unsequenced): (i64, i64) = sqlx::query_as(
                "select coalesce(max(pos), 0), count(*) filter (where pos is null) from livegate.changes",
            )
            .fetch_one(&self.db.pool)
            .await
            .unwrap();
            if unsequenced == 0 && self.health().await["feedPosition"] == head {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the gateway did not catch up with the change table");
    }

    /// Waits until `/health` satisfies `ready`, or panics after a few seconds.
    pub async fn wait_for_health(&self, ready: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..100 {
            let health = self.health().await;
            if ready(&health) {
                return health;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("health never became ready: {}", self.health().await);
    }
}

/// `GET path` on `port` with extra header lines: the status and the body.
pub async fn get(port: u16, path: &str, headers: &[&str]) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}Connection: close\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response).to_string();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

impl TestApp {
    /// Stops the gateway abruptly (open streams are cut); the database stays.
    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }

    /// Starts a gateway again on the same database and port, with the default test config.
    /// Starts the gateway again on the same port, with the configuration it had.
    pub async fn restart(&mut self) {
        let mut config = self.config.clone();
        config.server.listen = format!("127.0.0.1:{}", self.port).parse().unwrap();
        let app = Application::build(config).await.expect("the app restarts");
        self.handle = app.handle();
        tokio::spawn(app.run_until_stopped());
    }
}

/// The configuration tests start from: port 0, one worker, quick polling and reconnects.
pub fn test_config(database_url: &str) -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.workers = 1;
    config.database.url = database_url.to_string();
    config.feed.poll_interval_ms = 200;
    config.feed.reconnect_min_ms = 20;
    config.feed.reconnect_max_ms = 200;
    config
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        tokio::spawn(async move { handle.stop(false).await });
    }
}

pub struct WsClient {
    pub socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How long a test waits for a frame that should come.
pub const PATIENCE: Duration = Duration::from_secs(10);

impl WsClient {
    pub async fn connect(url: &str) -> WsClient {
        let (socket, _) = tokio_tungstenite::connect_async(url).await.expect("websocket handshake");
        WsClient { socket }
    }

    pub async fn send(&mut self, frame: Value) {
        self.send_text(&frame.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.socket.send(Message::text(text)).await.expect("send frame");
    }

    /// The next text frame as JSON (pings are answered by the client library).
    pub async fn recv(&mut self) -> Value {
        self.recv_within(PATIENCE).await.expect("a frame in time")
    }

    pub async fn recv_within(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let message = tokio::time::timeout_at(deadline, self.socket.next()).await.ok()?;
            match message {
                Some(Ok(Message::Text(text))) => {
                    return Some(serde_json::from_str(&text).expect("server frames are JSON"))
                }
                Some(Ok(Message::Close(frame))) => panic!("socket closed: {frame:?}"),
                Some(Ok(_)) => continue,
                other => panic!("socket ended: {other:?}"),
            }
        }
    }

    /// Asserts that no text frame arrives for `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Some(frame) = self.recv_within(wait).await {
            panic!("unexpected frame {frame}");
        }
    }

    /// Waits for the server to close the socket and returns the close code.
    pub async fn closed(&mut self) -> Option<CloseCode> {
        loop {
            match tokio::time::timeout(PATIENCE, self.socket.next()).await.expect("the server closes the socket") {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    }

    pub async fn connect_parse(&mut self) -> String {
        self.send(json!({"op": "connect", "applicationId": "app"})).await;
        let reply = self.recv().await;
        assert_eq!(reply["op"], "connected", "{reply}");
        reply["clientId"].as_str().unwrap().to_string()
    }

    pub async fn subscribe(&mut self, request_id: i64, class: &str, where_: Value) {
        self.send(json!({"op": "subscribe", "requestId": request_id, "query": {"className": class, "where": where_}}))
            .await;
        let reply = self.recv().await;
        assert_eq!(reply["op"], "subscribed", "{reply}");
        assert_eq!(reply["requestId"], request_id);
    }

    /// The next event frame, asserting its op.
    pub async fn expect_event(&mut self, op: &str) -> Value {
        let frame = self.recv().await;
        assert_eq!(frame["op"], op, "expected {op}, got {frame}");
        frame
    }
}

/// A TCP proxy in front of PostgreSQL that can cut every connection and refuse new ones, to
/// stage a database outage (or restart) as the gateway sees it, while tests keep writing
/// directly to the server.
pub struct Proxy {
    pub port: u16,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream_port: u16) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        let flag = down.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if flag.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused, as by a stopped server
                }
                let mut cuts = cuts.clone();
                cuts.mark_unchanged(); // only cuts from now on end this connection
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream_port)).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Proxy { port, down, cut, accept }
    }

    /// Closes every proxied connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.down.store(true, std::sync::atomic::Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    pub fn restore(&self) {
        self.down.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
