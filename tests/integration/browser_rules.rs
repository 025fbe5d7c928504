//! Browser rules over real sockets: CORS answers and refusals on HTTP, preflights, and the Origin
//! check on WebSocket upgrades.

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Error as WsError;

use crate::support::{TestApp, WsClient, PATIENCE};

const APP: &str = "https://app.example";
const EVIL: &str = "https://evil.example";

/// One HTTP/1.1 response, read until the server closes the connection.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body {:?}: {e}", self.body))
    }

    fn assert_refused(&self, error: &str) {
        assert_eq!(self.status, 403, "{}", self.body);
        assert_eq!(self.json(), json!({"code": 403, "error": error}));
        assert_eq!(self.header("access-control-allow-origin"), None);
    }
}

/// Sends `method path` with `Host: 127.0.0.1:<port>` and `headers` over a fresh connection.
async fn request(app: &TestApp, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut stream = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n", app.port);
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    stream.write_all(text.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(PATIENCE, stream.read_to_string(&mut response)).await.expect("a response in time").unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end in {response:?}"));
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    Reply { status, headers, body: body.to_string() }
}

/// Opens a WebSocket on `/` carrying `origin`, or returns the refused handshake's status and body.
async fn ws_with_origin(app: &TestApp, origin: Option<&str>) -> Result<WsClient, (u16, Value)> {
    let mut request = app.ws_url().into_client_request().unwrap();
    if let Some(origin) = origin {
        request.headers_mut().insert("Origin", HeaderValue::from_str(origin).unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(WsClient { socket }),
        Err(WsError::Http(response)) => {
            let body = response.body().clone().unwrap_or_default();
            Err((response.status().as_u16(), serde_json::from_slice(&body).unwrap_or(Value::Null)))
        }
        Err(e) => panic!("handshake failed otherwise: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_answers_allowed_origins_and_refuses_others() {
    let app = TestApp::spawn_with(|c| c.browser.allowed_origins = vec![APP.into()]).await;

    let reply = request(&app, "GET", "/health", &[("Origin", APP)]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["status"], "ok");
    assert_eq!(reply.header("access-control-allow-origin"), Some(APP));
    assert_eq!(reply.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(reply.header("vary"), Some("Origin"));

    request(&app, "GET", "/health", &[("Origin", EVIL)])
        .await
        .assert_refused("origin https://evil.example is not allowed");
    // Refused before routing: not even the 404 handler runs.
    request(&app, "GET", "/nowhere", &[("Origin", EVIL)])
        .await
        .assert_refused("origin https://evil.example is not allowed");
    request(&app, "GET", "/health", &[("Origin", "null")]).await.assert_refused("origin null is not allowed");

    // No Origin: allowed by default, no CORS headers.
    let reply = request(&app, "GET", "/health", &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("access-control-allow-origin"), None);
    assert_eq!(reply.header("vary"), Some("Origin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_origin_can_be_refused() {
    let app = TestApp::spawn_with(|c| {
        c.browser.allowed_origins = vec![APP.into()];
        c.browser.allow_missing_origin = false;
    })
    .await;
    request(&app, "GET", "/health", &[]).await.assert_refused("requests without an Origin header are not allowed");
    assert_eq!(request(&app, "GET", "/health", &[("Origin", APP)]).await.status, 200);

    let (status, body) = ws_with_origin(&app, None).await.err().expect("refused without an Origin");
    assert_eq!(status, 403);
    assert_eq!(body, json!({"code": 403, "error": "requests without an Origin header are not allowed"}));
    let mut client = ws_with_origin(&app, Some(APP)).await.expect("allowed with an Origin");
    client.connect_parse().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflights_are_answered_on_any_path() {
    let app = TestApp::spawn_with(|c| c.browser.allowed_origins = vec![APP.into()]).await;
    let asks = |origin, headers| {
        [("Origin", origin), ("Access-Control-Request-Method", "GET"), ("Access-Control-Request-Headers", headers)]
    };

    let reply = request(&app, "OPTIONS", "/events/messages", &asks(APP, "Authorization, Last-Event-ID")).await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    assert_eq!(reply.header("access-control-allow-origin"), Some(APP));
    assert_eq!(reply.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(reply.header("access-control-allow-methods"), Some("GET, OPTIONS"));
    assert_eq!(reply.header("access-control-allow-headers"), Some("authorization, last-event-id"));
    assert_eq!(reply.header("access-control-max-age"), Some("600"));
    assert!(reply.header("vary").is_some_and(|v| v.starts_with("Origin")));
    assert_eq!(reply.body, "");

    request(&app, "OPTIONS", "/health", &asks(EVIL, "authorization"))
        .await
        .assert_refused("origin https://evil.example is not allowed");
    request(&app, "OPTIONS", "/health", &asks(APP, "authorization, x-evil"))
        .await
        .assert_refused("header x-evil is not allowed");
    request(&app, "OPTIONS", "/health", &[("Origin", APP), ("Access-Control-Request-Method", "DELETE")])
        .await
        .assert_refused("method DELETE is not allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_allows_any_origin_without_credentials() {
    let app = TestApp::spawn_with(|c| c.browser.allowed_origins = vec!["*".into()]).await;
    let reply = request(&app, "GET", "/health", &[("Origin", "https://anyone.example")]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
    assert_eq!(reply.header("access-control-allow-credentials"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_check_the_origin() {
    let app = TestApp::spawn_with(|c| c.browser.allowed_origins = vec![APP.into()]).await;

    let mut client = ws_with_origin(&app, Some(APP)).await.expect("an allowed origin upgrades");
    client.connect_parse().await;

    let (status, body) = ws_with_origin(&app, Some(EVIL)).await.err().expect("a disallowed origin is refused");
    assert_eq!(status, 403);
    assert_eq!(body, json!({"code": 403, "error": "origin https://evil.example is not allowed"}));
    // Nothing was upgraded: the refused attempt never became a connection.
    assert_eq!(app.health().await["connections"], 1);

    // No Origin (native clients) is allowed by default.
    ws_with_origin(&app, None).await.expect("no Origin upgrades").connect_parse().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_origin_is_always_allowed() {
    // Default config: no listed origins.
    let app = TestApp::spawn().await;
    let own = format!("http://127.0.0.1:{}", app.port);

    let reply = request(&app, "GET", "/health", &[("Origin", &own)]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("access-control-allow-origin"), Some(own.as_str()));
    request(&app, "GET", "/health", &[("Origin", APP)])
        .await
        .assert_refused("origin https://app.example is not allowed");

    // Another scheme is another origin, whatever X-Forwarded-Proto says: any client can send it.
    // (This asserted 200 while the gateway's own origin was derived from the request; an https
    // origin of the gateway is now configured in `public_origins`.)
    let tls = format!("https://127.0.0.1:{}", app.port);
    request(&app, "GET", "/health", &[("Origin", &tls)]).await.assert_refused(&format!("origin {tls} is not allowed"));
    request(&app, "GET", "/health", &[("Origin", &tls), ("X-Forwarded-Proto", "https")])
        .await
        .assert_refused(&format!("origin {tls} is not allowed"));

    ws_with_origin(&app, Some(&own)).await.expect("a same-origin page upgrades").connect_parse().await;
    let (status, _) = ws_with_origin(&app, Some(APP)).await.err().expect("another origin is refused");
    assert_eq!(status, 403);
}

/// Sends `GET path` with `Host: host` and `headers`, and reads the head and, when the answer has
/// a Content-Length, its body: enough for a refusal, and for an event stream that never ends.
async fn get_as_host(app: &TestApp, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut stream = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    let mut text = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    stream.write_all(text.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let read = async {
        loop {
            if let Some(reply) = complete_reply(&raw) {
                return reply;
            }
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the connection closed mid-answer: {:?}", String::from_utf8_lossy(&raw));
            raw.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(PATIENCE, read).await.expect("an answer in time")
}

/// The reply in `raw`, once its head and any Content-Length body have arrived.
fn complete_reply(raw: &[u8]) -> Option<Reply> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let length = headers.iter().find(|(n, _)| n == "content-length").map(|(_, v)| v.parse::<usize>().unwrap());
    match length {
        Some(length) if body.len() < length => None,
        Some(length) => Some(Reply { status, headers, body: body[..length].to_string() }),
        None => Some(Reply { status, headers, body: String::new() }),
    }
}

/// [`ws_with_origin`] with `Host: host` and more headers.
async fn ws_as_host(
    app: &TestApp,
    host: &str,
    origin: &str,
    headers: &[(&str, &str)],
) -> Result<WsClient, (u16, Value)> {
    let mut request = app.ws_url().into_client_request().unwrap();
    request.headers_mut().insert("Host", HeaderValue::from_str(host).unwrap());
    request.headers_mut().insert("Origin", HeaderValue::from_str(origin).unwrap());
    for (name, value) in headers {
        let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        request.headers_mut().insert(name, HeaderValue::from_str(value).unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(WsClient { socket }),
        Err(WsError::Http(response)) => {
            let body = response.body().clone().unwrap_or_default();
            Err((response.status().as_u16(), serde_json::from_slice(&body).unwrap_or(Value::Null)))
        }
        Err(e) => panic!("handshake failed otherwise: {e}"),
    }
}

const STREAM: &str = "/events/messages?where=%7B%7D";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_header_never_makes_an_origin_same_origin() {
    // A page on http://evil.example whose name the attacker re-pointed at the gateway (DNS
    // rebinding) sends Host and Origin alike; forwarding headers are anyone's to send too.
    let app = TestApp::spawn().await;
    let evil = "http://evil.example";
    let forwarded: &[(&str, &str)] = &[
        ("X-Forwarded-Host", "evil.example"),
        ("X-Forwarded-Proto", "http"),
        ("Forwarded", "proto=http;host=evil.example"),
    ];
    for extra in [&[][..], forwarded] {
        let headers: Vec<(&str, &str)> = [("Origin", evil)].into_iter().chain(extra.iter().copied()).collect();
        let reply = get_as_host(&app, "evil.example", STREAM, &headers).await;
        reply.assert_refused("origin http://evil.example is not allowed");
        assert_eq!(reply.header("content-type"), Some("application/json"));
        let (status, body) = ws_as_host(&app, "evil.example", evil, extra).await.err().expect("the upgrade is refused");
        assert_eq!(status, 403);
        assert_eq!(body, json!({"code": 403, "error": "origin http://evil.example is not allowed"}));
    }
    // Nor does a forwarded scheme turn another scheme into the gateway's own.
    let tls = format!("https://127.0.0.1:{}", app.port);
    let host = format!("127.0.0.1:{}", app.port);
    get_as_host(&app, &host, STREAM, &[("Origin", &tls), ("X-Forwarded-Proto", "https"), ("Forwarded", "proto=https")])
        .await
        .assert_refused(&format!("origin {tls} is not allowed"));
    assert_eq!(app.health().await["connections"], 0, "nothing was upgraded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_public_origin_is_the_gateways_own() {
    let public = "https://live.example";
    let app = TestApp::spawn_with(|c| c.browser.public_origins = vec![public.into()]).await;

    let reply = get_as_host(&app, "live.example", STREAM, &[("Origin", public)]).await;
    assert_eq!(reply.status, 200);
    assert!(reply.header("content-type").is_some_and(|v| v.starts_with("text/event-stream")), "{:?}", reply.headers);
    assert_eq!(reply.header("access-control-allow-origin"), Some(public));
    assert_eq!(reply.header("access-control-allow-credentials"), Some("true"));
    ws_as_host(&app, "live.example", public, &[]).await.expect("a public origin upgrades").connect_parse().await;

    // The list is what counts: a rebound name is still refused, and the loopback default is
    // replaced by the list.
    get_as_host(&app, "evil.example", STREAM, &[("Origin", "http://evil.example")])
        .await
        .assert_refused("origin http://evil.example is not allowed");
    let own = format!("http://127.0.0.1:{}", app.port);
    request(&app, "GET", "/health", &[("Origin", &own)]).await.assert_refused(&format!("origin {own} is not allowed"));
}
