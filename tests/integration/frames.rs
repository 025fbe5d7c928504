//! Frame limits enforced from the announced length: a client announcing a huge frame is closed
//! (1009) as soon as its header arrives, before the gateway reads (let alone buffers) the
//! payload; frames in flight on all connections together stay within
//! `websocket.receive_buffer_bytes` (1013 beyond it). The clients here are bare TCP streams that
//! do the upgrade by hand, so they can write any frame header they like.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::support::{TestApp, PATIENCE};

const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
/// The key every frame of these clients is masked with (clients must mask, RFC 6455 §5.3).
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_announcing_2_pow_62_bytes_is_closed_with_1009_at_once() {
    let app = TestApp::spawn().await;
    let mut stream = handshake(app.port).await;
    stream.write_all(&header(TEXT, true, 1 << 62)).await.unwrap();
    let code = timeout(Duration::from_secs(1), close_code(&mut stream)).await.expect("a close within 1 s");
    assert_eq!(code, Some(1009));
    assert_connection_ends(&mut stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_announcing_100_mb_is_refused_before_its_payload_is_read() {
    let app = TestApp::spawn().await;
    let mut bystander = app.subscriber(json!({})).await;
    let (mut reader, writer) = handshake(app.port).await.into_split();
    let written = Arc::new(AtomicUsize::new(0));
    let flood = tokio::spawn(flood(writer, 100_000_000, written.clone()));

    // Paced at under 8 MB/s: a gateway that reads the payload before judging the frame would
    // take seconds to answer; one that judges the header answers within milliseconds.
    let code = timeout(Duration::from_secs(5), close_code(&mut reader))
        .await
        .expect("a close while the payload is still streaming");
    let accepted = written.load(Ordering::SeqCst);
    assert_eq!(code, Some(1009));
    assert!(accepted < 1_000_000, "the close came only after {accepted} payload bytes were accepted");

    // Meanwhile (the flood is still running) another connection is served as usual.
    app.db.execute("insert into messages (room) values ('meanwhile')").await;
    assert_eq!(bystander.expect_event("create").await["object"]["room"], "meanwhile");
    assert_connection_ends(&mut reader).await;
    flood.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_in_flight_beyond_the_receive_budget_are_refused_with_1013() {
    let app = TestApp::spawn_with(|config| {
        config.websocket.max_frame_bytes = 64 * 1024;
        config.websocket.receive_buffer_bytes = 200_000;
    })
    .await;
    // Three 60 KB frames in flight fit in 200 KB; a fourth and fifth do not.
    let mut holders = Vec::new();
    for _ in 0..3 {
        holders.push(PartialFrame::start(app.port).await);
    }
    // Also gives the gateway time to take in their headers before the next ones arrive.
    for holder in &mut holders {
        holder.expect_open().await;
    }
    for _ in 0..2 {
        let mut late = PartialFrame::start(app.port).await;
        let code = timeout(Duration::from_secs(1), close_code(&mut late.stream)).await.expect("a close within 1 s");
        assert_eq!(code, Some(1013));
    }

    // The first ones are unaffected: one completes its frame and is answered; the others leave
    // in the middle of theirs.
    let mut first = holders.remove(0);
    assert_eq!(first.finish().await["op"], "connected");
    drop(holders);
    app.wait_for_health(|health| health["connections"] == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Their shares are free again: three new frames in flight fit, and all are answered.
    let mut fresh = Vec::new();
    for _ in 0..3 {
        fresh.push(PartialFrame::start(app.port).await);
    }
    for partial in &mut fresh {
        partial.expect_open().await;
    }
    for partial in &mut fresh {
        assert_eq!(partial.finish().await["op"], "connected");
    }
}

/// A connection in the middle of a 60 KB text frame (a Parse `connect` padded with spaces):
/// the header and the first 10 KB are sent, the rest waits for [`PartialFrame::finish`].
struct PartialFrame {
    stream: TcpStream,
    payload: Vec<u8>,
}

impl PartialFrame {
    const LEN: usize = 60_000;
    const FIRST: usize = 10_000;

    async fn start(port: u16) -> PartialFrame {
        let mut payload = br#"{"op": "connect", "applicationId": "app"}"#.to_vec();
        payload.resize(Self::LEN, b' ');
        let mut stream = handshake(port).await;
        let mut start = header(TEXT, true, Self::LEN as u64);
        start.extend(masked(&payload[..Self::FIRST], 0));
        stream.write_all(&start).await.unwrap();
        PartialFrame { stream, payload }
    }

    /// Nothing (no close) arrives for a while.
    async fn expect_open(&mut self) {
        let frame = timeout(Duration::from_millis(300), next_frame(&mut self.stream)).await;
        assert!(frame.is_err(), "the server sent {frame:?}");
    }

    /// Sends the rest of the frame and returns the server's answer.
    async fn finish(&mut self) -> Value {
        let rest = masked(&self.payload[Self::FIRST..], Self::FIRST);
        self.stream.write_all(&rest).await.unwrap();
        text_frame(&mut self.stream).await
    }
}

/// Upgrades a bare TCP connection to a WebSocket and returns it right after the response head.
async fn handshake(port: u16) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // The sample nonce of RFC 6455 §1.3, whose accept value is known.
    let request = "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    // Byte by byte up to the blank line, so that nothing after the head is swallowed.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await.unwrap());
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    stream
}

/// A masked client frame header announcing `len` payload bytes, in the shortest encoding.
fn header(opcode: u8, fin: bool, len: u64) -> Vec<u8> {
    let mut out = vec![if fin { 0x80 | opcode } else { opcode }];
    match len {
        0..=125 => out.push(0x80 | len as u8),
        126..=0xffff => {
            out.push(0x80 | 126);
            out.extend((len as u16).to_be_bytes());
        }
        _ => {
            out.push(0x80 | 127);
            out.extend(len.to_be_bytes());
        }
    }
    out.extend(MASK);
    out
}

/// `payload` masked as the bytes at `offset` of a frame's payload.
fn masked(payload: &[u8], offset: usize) -> Vec<u8> {
    payload.iter().enumerate().map(|(i, byte)| byte ^ MASK[(offset + i) % 4]).collect()
}

/// Announces a text frame of `len` bytes, then streams its payload in 8 KB writes at least 1 ms
/// apart, counting the bytes the socket accepted, until done or the connection breaks.
async fn flood(mut writer: impl AsyncWrite + Unpin, len: usize, written: Arc<AtomicUsize>) {
    if writer.write_all(&header(TEXT, true, len as u64)).await.is_err() {
        return;
    }
    let chunk = vec![b' '; 8 * 1024];
    while written.load(Ordering::SeqCst) < len {
        if writer.write_all(&chunk).await.is_err() {
            return;
        }
        written.fetch_add(chunk.len(), Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The next frame from the server (servers never mask): its opcode and payload.
async fn next_frame(reader: &mut (impl AsyncRead + Unpin)) -> std::io::Result<(u8, Vec<u8>)> {
    let first = reader.read_u8().await?;
    let len = match reader.read_u8().await? & 0x7f {
        126 => u64::from(reader.read_u16().await?),
        127 => reader.read_u64().await?,
        short => u64::from(short),
    };
    let mut payload = vec![0; len as usize];
    reader.read_exact(&mut payload).await?;
    Ok((first & 0x0f, payload))
}

/// Reads frames up to the server's close frame and returns its code; None when the stream ends
/// without one.
async fn close_code(reader: &mut (impl AsyncRead + Unpin)) -> Option<u16> {
    loop {
        match next_frame(reader).await {
            Ok((CLOSE, payload)) => return payload.get(..2).map(|code| u16::from_be_bytes([code[0], code[1]])),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

/// The next text frame from the server, as JSON.
async fn text_frame(reader: &mut (impl AsyncRead + Unpin)) -> Value {
    loop {
        let (opcode, payload) = timeout(PATIENCE, next_frame(reader)).await.expect("a frame in time").unwrap();
        match opcode {
            TEXT => return serde_json::from_slice(&payload).unwrap(),
            CLOSE => panic!("closed: {payload:?}"),
            _ => continue,
        }
    }
}

/// The server ends the TCP connection (end of stream or reset) within a few seconds.
async fn assert_connection_ends(reader: &mut (impl AsyncRead + Unpin)) {
    let mut buffer = vec![0u8; 64 * 1024];
    let ended = timeout(Duration::from_secs(3), async {
        while let Ok(n) = reader.read(&mut buffer).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the server kept the TCP connection open");
}
