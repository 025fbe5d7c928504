//! A Server-Sent Events client over a raw TCP socket (HTTP/1.1, chunked bodies), as strict as a
//! browser's EventSource about framing, and a gateway run as a real child process that can be
//! killed and started again.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::PATIENCE;

/// Percent-encodes a URL query value.
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One SSE message block (the lines up to a blank line).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub id: Option<String>,
    pub data: Option<String>,
    pub retry: Option<u64>,
    pub comment: Option<String>,
}

impl SseEvent {
    pub fn name(&self) -> &str {
        self.event.as_deref().unwrap_or("message")
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().expect("the event has data")).expect("data is JSON")
    }

    pub fn id(&self) -> String {
        self.id.clone().expect("the event has an id")
    }
}

pub struct SseClient {
    stream: TcpStream,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    raw: Vec<u8>,
    chunked: bool,
    /// Decoded body bytes not yet split into events.
    body: Vec<u8>,
    pub ended: bool,
}

impl SseClient {
    /// Sends `GET path` with extra headers and reads the status line and headers.
    pub async fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> SseClient {
        SseClient::try_get(port, path, headers).await.unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// [`SseClient::get`] for a gateway that may be down.
    pub async fn try_get(port: u16, path: &str, headers: &[(&str, &str)]) -> Result<SseClient, String> {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut client = SseClient {
            stream,
            status: 0,
            headers: Vec::new(),
            raw: Vec::new(),
            chunked: false,
            body: Vec::new(),
            ended: false,
        };
        let head_end = loop {
            if let Some(end) = find(&client.raw, b"\r\n\r\n") {
                break end;
            }
            if !client.fill(PATIENCE).await {
                return Err("no response head".into());
            }
        };
        let head = String::from_utf8(client.raw[..head_end].to_vec()).expect("the head is text");
        client.raw.drain(..head_end + 4);
        let mut lines = head.lines();
        client.status =
            lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).ok_or("no status line")?;
        client.headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        client.chunked = client.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        Ok(client)
    }

    /// Subscribes to `class` with `where` (JSON) and extra query parameters.
    pub async fn subscribe(port: u16, class: &str, where_: &Value, extra: &str, headers: &[(&str, &str)]) -> SseClient {
        let path = format!("/events/{class}?where={}{extra}", encode(&where_.to_string()));
        SseClient::get(port, &path, headers).await
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Reads more bytes; false at end of stream or when `wait` passes.
    async fn fill(&mut self, wait: Duration) -> bool {
        let mut buf = [0u8; 16 * 1024];
        match tokio::time::timeout(wait, self.stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                self.raw.extend_from_slice(&buf[..n]);
                true
            }
            Ok(_) => {
                self.ended = true;
                false
            }
            Err(_) => false,
        }
    }

    /// Moves complete chunks (or plain bytes) from `raw` to `body`.
    fn decode(&mut self) {
        if !self.chunked {
            self.body.append(&mut self.raw);
            return;
        }
        loop {
            let Some(line_end) = find(&self.raw, b"\r\n") else { return };
            let size_text = String::from_utf8_lossy(&self.raw[..line_end]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
            if self.raw.len() < line_end + 2 + size + 2 {
                return;
            }
            if size == 0 {
                self.ended = true;
            }
            self.body.extend_from_slice(&self.raw[line_end + 2..line_end + 2 + size]);
            self.raw.drain(..line_end + 2 + size + 2);
        }
    }

    /// The whole body of a non-streaming (error) response, as JSON.
    pub async fn json_body(&mut self) -> Value {
        let length: usize = self.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        while self.raw.len() < length && self.fill(PATIENCE).await {}
        serde_json::from_slice(&self.raw[..length]).expect("a JSON body")
    }

    /// The next message block (comments included), or `None` when `wait` passes or the stream ends.
    pub async fn next_block_within(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            self.decode();
            if let Some(end) = find(&self.body, b"\n\n") {
                let block = String::from_utf8(self.body[..end].to_vec()).expect("events are UTF-8");
                self.body.drain(..end + 2);
                return Some(parse_block(&block));
            }
            if self.ended {
                return None;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || (!self.fill(left).await && !self.ended) {
                return None; // timed out
            }
        }
    }

    /// The next event that is not a comment or a bare `retry:` hint.
    pub async fn next_event_within(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let block = self.next_block_within(left).await?;
            if block.event.is_some() || block.data.is_some() {
                return Some(block);
            }
        }
    }

    pub async fn next_event(&mut self) -> SseEvent {
        self.next_event_within(PATIENCE).await.expect("an SSE event in time")
    }

    /// The next event, asserting its name.
    pub async fn expect(&mut self, name: &str) -> SseEvent {
        let event = self.next_event().await;
        assert_eq!(event.name(), name, "expected {name}, got {event:?}");
        event
    }
}

fn parse_block(block: &str) -> SseEvent {
    let mut event = SseEvent::default();
    for line in block.lines() {
        if let Some(comment) = line.strip_prefix(':') {
            event.comment = Some(comment.trim().to_string());
            continue;
        }
        let (field, value) =
            line.split_once(':').map(|(f, v)| (f, v.strip_prefix(' ').unwrap_or(v))).unwrap_or((line, ""));
        match field {
            "event" => event.event = Some(value.to_string()),
            "id" => event.id = Some(value.to_string()),
            "retry" => event.retry = value.parse().ok(),
            "data" => {
                let data = event.data.get_or_insert_with(String::new);
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value);
            }
            other => panic!("unknown SSE field {other:?} in {block:?}"),
        }
    }
    event
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

pub use super::process::GatewayProcess;

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}
