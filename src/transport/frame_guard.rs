//! Frame limits judged from the announced length, before any payload is buffered.
//!
//! actix-http's WebSocket codec compares a frame with `max_frame_size` only once the whole frame
//! has arrived, and `actix-ws` appends everything the socket delivers to one buffer meanwhile: a
//! client announcing a 1 GB frame (or 2^62 bytes) makes the gateway buffer all of it first. The
//! [`FrameGuard`] sits between the request payload and `actix-ws`, reads each client frame
//! header as it streams past ([`FrameScanner`], pure), and passes the bytes on unchanged. When a
//! header announces more than the frame limit, or a fragment would take its message past the
//! message limit, the guard stops the stream before that frame's payload is read. (What still
//! gets read is bounded by actix-http, not by the frame: the chunk that held the header, the
//! HTTP dispatcher's 32 KiB read-ahead, and after the close frame whatever the dispatcher
//! discards during its lingering close, at most `client_disconnect_timeout`, 1 s by default.)
//!
//! It also keeps the bytes of frames still being received on all connections together within a
//! [`ReceiveBudget`]: each connection holds a [`Reservation`] as large as its in-flight frame's
//! announced length plus the fragments its unfinished message already holds. A connection whose
//! next frame would go past the budget is stopped (nobody waits for room); a reservation shrinks
//! when the frame completes and is returned when the connection ends.
//!
//! A refusal reaches the transport twice: as the stream's error (which `actix-ws` wraps into
//! its own) and as the connection's [`Verdict`], from which the transport picks the close code
//! without having to take apart a foreign error type.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};

use actix_web::error::PayloadError;
use bytes::Bytes;
use futures_util::Stream;

/// RFC 6455 §5.2: a 64-bit length is an unsigned 63-bit number; a set top bit is never valid.
const MAX_ANNOUNCED: u64 = i64::MAX as u64;
const OPCODE_CONTINUATION: u8 = 0x0;
/// Opcodes 0x8 and above are control frames (close, ping, pong and reserved ones).
const CONTROL_BIT: u8 = 0x8;
/// 2 bytes, up to 8 of extended length, 4 of masking key.
const LONGEST_HEADER: usize = 14;

/// The largest frame, and the largest message (the sum of its fragments), a client may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    pub frame: u64,
    pub message: u64,
}

/// Why the guard stopped a connection's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A header announced more than the frame limit (or an invalid 64-bit length).
    FrameTooLarge,
    /// A fragment would have taken its message past the message limit.
    MessageTooLarge,
    /// The frame would have taken the shared receive budget past its limit.
    ReceiveBufferFull,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::FrameTooLarge => "announced frame exceeds the frame limit",
            Refusal::MessageTooLarge => "announced fragment takes the message past its limit",
            Refusal::ReceiveBufferFull => "receive buffer budget exhausted",
        })
    }
}

impl std::error::Error for Refusal {}

/// What a complete frame header announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: u8,
    pub len: u64,
}

impl Header {
    fn is_control(&self) -> bool {
        self.opcode & CONTROL_BIT != 0
    }
}

/// The bytes of a header received so far.
#[derive(Debug, Default)]
struct PartialHeader {
    bytes: [u8; LONGEST_HEADER],
    have: usize,
}

impl PartialHeader {
    /// The header's full length, as far as known: the second byte tells whether an extended
    /// length and a masking key follow. (Unmasked client frames are a protocol error the codec
    /// reports; they are still measured right so that the guard never loses its place.)
    fn needed(&self) -> usize {
        if self.have < 2 {
            return 2;
        }
        let second = self.bytes[1];
        let extended = match second & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if second & 0x80 != 0 { 4 } else { 0 };
        2 + extended + mask
    }

    /// Takes header bytes from the front of `input`; returns how many it took.
    fn fill(&mut self, input: &[u8]) -> usize {
        let mut taken = 0;
        while self.have < self.needed() && taken < input.len() {
            let count = (self.needed() - self.have).min(input.len() - taken);
            self.bytes[self.have..self.have + count].copy_from_slice(&input[taken..taken + count]);
            self.have += count;
            taken += count;
        }
        taken
    }

    /// The header, once all of it has arrived; the buffer is then ready for the next one.
    fn take(&mut self) -> Option<Header> {
        if self.have < self.needed() {
            return None;
        }
        let [first, second, ..] = self.bytes;
        let len = match second & 0x7f {
            126 => big_endian(&self.bytes[2..4]),
            127 => big_endian(&self.bytes[2..10]),
            short => u64::from(short),
        };
        self.have = 0;
        Some(Header { fin: first & 0x80 != 0, opcode: first & 0x0f, len })
    }
}

fn big_endian(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0, |value, &byte| value << 8 | u64::from(byte))
}

/// Follows the client→server frame sequence across chunks of any size: which header bytes
/// have arrived, how much payload of the current frame is still to come, and how much the
/// unfinished fragmented message holds. No I/O.
#[derive(Debug)]
pub struct FrameScanner {
    limits: FrameLimits,
    header: PartialHeader,
    /// The frame whose payload is arriving, and how many of its bytes are still to come.
    frame: Option<(Header, u64)>,
    /// Payload bytes of the completed fragments of the message in progress.
    message: u64,
}

impl FrameScanner {
    pub fn new(limits: FrameLimits) -> FrameScanner {
        FrameScanner { limits, header: PartialHeader::default(), frame: None, message: 0 }
    }

    /// Follows `chunk`; on success returns how many bytes this connection holds or has been
    /// promised afterwards (see [`FrameScanner::held`]). A refusal leaves the scanner where
    /// it stopped: the stream is over.
    pub fn scan(&mut self, mut chunk: &[u8]) -> Result<u64, Refusal> {
        while !chunk.is_empty() {
            let taken = match self.frame {
                Some(_) => self.take_payload(chunk.len()),
                None => self.take_header(chunk)?,
            };
            chunk = &chunk[taken..];
        }
        Ok(self.held())
    }

    /// The bytes the codec will have to hold before it can hand the data on: the fragments of
    /// the unfinished message, plus the whole announced payload of the frame in flight.
    pub fn held(&self) -> u64 {
        let in_flight = self.frame.map_or(0, |(header, _)| header.len);
        self.message.saturating_add(in_flight)
    }

    fn take_header(&mut self, chunk: &[u8]) -> Result<usize, Refusal> {
        let taken = self.header.fill(chunk);
        if let Some(header) = self.header.take() {
            self.admit(header)?;
            if header.len == 0 {
                self.complete(header);
            } else {
                self.frame = Some((header, header.len));
            }
        }
        Ok(taken)
    }

    fn take_payload(&mut self, available: usize) -> usize {
        let Some((header, remaining)) = self.frame else { return 0 };
        // `remaining` may exceed usize on 32-bit targets; then the whole chunk is payload.
        let taken = usize::try_from(remaining).map_or(available, |remaining| remaining.min(available));
        let remaining = remaining - taken as u64;
        if remaining == 0 {
            self.frame = None;
            self.complete(header);
        } else {
            self.frame = Some((header, remaining));
        }
        taken
    }

    /// Judges a header by what it announces, before any of its payload is read.
    fn admit(&mut self, header: Header) -> Result<(), Refusal> {
        if header.len > self.limits.frame || header.len > MAX_ANNOUNCED {
            return Err(Refusal::FrameTooLarge);
        }
        // Control frames may come between fragments; they are no part of the message.
        if header.is_control() {
            return Ok(());
        }
        if header.opcode != OPCODE_CONTINUATION {
            // A text or binary frame starts a message (starting one inside another is the
            // codec's protocol error to report).
            self.message = 0;
        }
        if self.message.saturating_add(header.len) > self.limits.message {
            return Err(Refusal::MessageTooLarge);
        }
        Ok(())
    }

    fn complete(&mut self, header: Header) {
        if header.is_control() {
            return;
        }
        self.message = if header.fin { 0 } else { self.message + header.len };
    }
}

/// The bytes of frames in flight that all connections together may hold.
#[derive(Debug)]
pub struct ReceiveBudget {
    limit: usize,
    used: AtomicUsize,
}

impl ReceiveBudget {
    pub fn new(limit: usize) -> ReceiveBudget {
        ReceiveBudget { limit, used: AtomicUsize::new(0) }
    }

    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Takes `bytes` if they fit; never waits.
    fn try_take(&self, bytes: usize) -> bool {
        let fits = |used: usize| used.checked_add(bytes).filter(|&total| total <= self.limit);
        self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, fits).is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// One connection's share of the [`ReceiveBudget`]; returned in full when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<ReceiveBudget>,
    held: usize,
}

impl Reservation {
    pub fn new(budget: Arc<ReceiveBudget>) -> Reservation {
        Reservation { budget, held: 0 }
    }

    /// Makes the share exactly `bytes`; false (and the share unchanged) when growing it would
    /// take the budget past its limit.
    pub fn resize(&mut self, bytes: usize) -> bool {
        // Most chunks are the middle of a frame: leave the shared counter alone then.
        if bytes == self.held {
            return true;
        }
        if bytes > self.held {
            if !self.budget.try_take(bytes - self.held) {
                return false;
            }
        } else {
            self.budget.give_back(self.held - bytes);
        }
        self.held = bytes;
        true
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.give_back(self.held);
    }
}

/// Why the guard stopped a connection, once it has; shared with the transport.
#[derive(Debug, Clone, Default)]
pub struct Verdict(Arc<OnceLock<Refusal>>);

impl Verdict {
    pub fn refusal(&self) -> Option<Refusal> {
        self.0.get().copied()
    }
}

/// The request payload, passed through unchanged while [`FrameScanner`] and [`Reservation`]
/// admit it; stopped (an error, then the end) at the first refusal, without reading further.
pub struct FrameGuard<S> {
    inner: S,
    scanner: FrameScanner,
    reservation: Reservation,
    verdict: Verdict,
    stopped: bool,
}

impl<S> FrameGuard<S> {
    /// The guarded stream, and the verdict the transport reads once the stream fails.
    pub fn new(inner: S, limits: FrameLimits, budget: Arc<ReceiveBudget>) -> (FrameGuard<S>, Verdict) {
        let verdict = Verdict::default();
        let scanner = FrameScanner::new(limits);
        let guard = FrameGuard {
            inner,
            scanner,
            reservation: Reservation::new(budget),
            verdict: verdict.clone(),
            stopped: false,
        };
        (guard, verdict)
    }

    fn admit(&mut self, chunk: &[u8]) -> Result<(), Refusal> {
        // Measured after the whole chunk: a frame that starts and ends within one chunk never
        // waits for more bytes, so it never touches the shared counter.
        let held = self.scanner.scan(chunk)?;
        // Over usize it could never fit anyway.
        let held = usize::try_from(held).unwrap_or(usize::MAX);
        if self.reservation.resize(held) {
            Ok(())
        } else {
            Err(Refusal::ReceiveBufferFull)
        }
    }

    fn refuse(&mut self, refusal: Refusal) -> PayloadError {
        self.stopped = true;
        // The connection is over: its share is free for others right away.
        self.reservation.resize(0);
        let _ = self.verdict.0.set(refusal);
        PayloadError::Io(io::Error::new(io::ErrorKind::InvalidData, refusal))
    }
}

impl<S> Stream for FrameGuard<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.stopped {
            // Not polling the request payload any more leaves the rest of the frame unread.
            return Poll::Ready(None);
        }
        let chunk = match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
            Some(Ok(chunk)) => chunk,
            other => return Poll::Ready(other),
        };
        match this.admit(&chunk) {
            Ok(()) => Poll::Ready(Some(Ok(chunk))),
            Err(refusal) => Poll::Ready(Some(Err(this.refuse(refusal)))),
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{stream, StreamExt};

    use super::*;

    const TEXT: u8 = 0x1;
    const BINARY: u8 = 0x2;
    const CLOSE: u8 = 0x8;
    const PING: u8 = 0x9;
    const PONG: u8 = 0xa;
    const KIB64: u64 = 64 * 1024;

    fn limits(frame: u64, message: u64) -> FrameLimits {
        FrameLimits { frame, message }
    }

    /// A client frame header announcing `len` bytes, in the shortest encoding.
    fn header(fin: bool, opcode: u8, len: u64, masked: bool) -> Vec<u8> {
        let mask_bit = if masked { 0x80 } else { 0 };
        let mut out = vec![if fin { 0x80 | opcode } else { opcode }];
        match len {
            0..=125 => out.push(mask_bit | len as u8),
            126..=0xffff => {
                out.push(mask_bit | 126);
                out.extend((len as u16).to_be_bytes());
            }
            _ => {
                out.push(mask_bit | 127);
                out.extend(len.to_be_bytes());
            }
        }
        if masked {
            out.extend([0x11, 0x22, 0x33, 0x44]);
        }
        out
    }

    /// A whole masked frame: header and `len` bytes of payload.
    fn frame(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
        let mut out = header(fin, opcode, len as u64, true);
        out.extend(std::iter::repeat_n(0xa5, len));
        out
    }

    fn scan_all(scanner: &mut FrameScanner, chunks: &[&[u8]]) -> Result<u64, Refusal> {
        let mut held = 0;
        for chunk in chunks {
            held = scanner.scan(chunk)?;
        }
        Ok(held)
    }

    #[test]
    fn headers_of_every_length_encoding_parse() {
        for (len, header_len) in [(0, 6), (125, 6), (126, 8), (65_535, 8), (65_536, 14), (1 << 40, 14)] {
            let bytes = header(true, BINARY, len, true);
            assert_eq!(bytes.len(), header_len, "len {len}");
            let mut partial = PartialHeader::default();
            assert_eq!(partial.fill(&bytes), header_len);
            assert_eq!(partial.take(), Some(Header { fin: true, opcode: BINARY, len }));
        }
    }

    #[test]
    fn a_header_split_at_every_byte_is_the_same_header() {
        for len in [5, 300, 70_000] {
            for masked in [true, false] {
                let bytes = header(false, TEXT, len, masked);
                for split in 0..=bytes.len() {
                    let mut partial = PartialHeader::default();
                    let first = partial.fill(&bytes[..split]);
                    assert_eq!(first, split);
                    assert_eq!(partial.take().is_some(), split == bytes.len(), "split {split} of {len}");
                    if split < bytes.len() {
                        assert_eq!(partial.fill(&bytes[split..]), bytes.len() - split);
                        assert_eq!(partial.take(), Some(Header { fin: false, opcode: TEXT, len }));
                    }
                }
            }
        }
    }

    #[test]
    fn a_header_takes_no_bytes_of_the_payload_after_it() {
        let mut bytes = header(true, TEXT, 3, true);
        bytes.extend(b"abc");
        let mut partial = PartialHeader::default();
        assert_eq!(partial.fill(&bytes), 6);
    }

    #[test]
    fn a_stream_split_at_every_byte_admits_the_same_frames() {
        let stream: Vec<u8> =
            [frame(true, TEXT, 10), frame(true, PING, 0), frame(true, BINARY, 200), frame(true, TEXT, 70_000)].concat();
        for split in 0..=stream.len() {
            let mut scanner = FrameScanner::new(limits(KIB64 * 2, KIB64 * 2));
            let (left, right) = stream.split_at(split);
            assert_eq!(scan_all(&mut scanner, &[left, right]), Ok(0), "split at {split}");
        }
    }

    #[test]
    fn a_stream_fed_byte_by_byte_tracks_the_frame_in_flight() {
        let first = frame(true, TEXT, 300);
        let stream = [first.clone(), frame(true, PONG, 4)].concat();
        let mut scanner = FrameScanner::new(limits(KIB64, KIB64));
        for (index, byte) in stream.iter().enumerate() {
            let held = scanner.scan(std::slice::from_ref(byte)).unwrap();
            let header_done = index + 1 >= 8;
            let in_first = header_done && index + 1 < first.len();
            let in_pong_payload = index + 1 >= first.len() + 6 && index + 1 < stream.len();
            let expected = if in_first {
                300
            } else if in_pong_payload {
                4
            } else {
                0
            };
            assert_eq!(held, expected, "after byte {index}");
        }
    }

    #[test]
    fn several_frames_in_one_chunk_are_all_followed() {
        let chunk = [frame(true, PING, 3), frame(true, TEXT, 40), frame(true, PONG, 0), frame(true, CLOSE, 2)].concat();
        let mut scanner = FrameScanner::new(limits(100, 100));
        assert_eq!(scanner.scan(&chunk), Ok(0));
        // And the next frame is judged on its own header.
        assert_eq!(scanner.scan(&header(true, TEXT, 101, true)), Err(Refusal::FrameTooLarge));
    }

    #[test]
    fn a_frame_at_the_limit_passes_and_one_byte_more_is_refused_from_its_header_alone() {
        let mut scanner = FrameScanner::new(limits(KIB64, KIB64));
        assert_eq!(scanner.scan(&header(true, TEXT, KIB64, true)), Ok(KIB64));
        assert_eq!(scanner.scan(&vec![0; KIB64 as usize]), Ok(0));
        assert_eq!(scanner.scan(&header(true, TEXT, KIB64 + 1, true)), Err(Refusal::FrameTooLarge));
    }

    #[test]
    fn huge_announced_lengths_are_refused_before_any_payload() {
        for len in [1 << 30, 1 << 62, (1 << 63) - 1, 1 << 63, u64::MAX] {
            let mut scanner = FrameScanner::new(limits(KIB64, KIB64));
            assert_eq!(scanner.scan(&header(true, BINARY, len, true)), Err(Refusal::FrameTooLarge), "len {len}");
        }
    }

    #[test]
    fn a_64_bit_length_with_its_top_bit_set_is_refused_whatever_the_limit() {
        let mut scanner = FrameScanner::new(limits(u64::MAX, u64::MAX));
        assert_eq!(scanner.scan(&header(true, BINARY, 1 << 63, true)), Err(Refusal::FrameTooLarge));
        let mut scanner = FrameScanner::new(limits(u64::MAX, u64::MAX));
        assert_eq!(scanner.scan(&header(true, BINARY, (1 << 63) - 1, true)), Ok((1 << 63) - 1));
    }

    #[test]
    fn the_2_pow_62_header_is_refused_when_split_at_every_byte() {
        let bytes = header(true, TEXT, 1 << 62, true);
        for split in 1..bytes.len() {
            let mut scanner = FrameScanner::new(limits(KIB64, KIB64));
            assert_eq!(scanner.scan(&bytes[..split]), Ok(0), "split {split}");
            assert_eq!(scanner.scan(&bytes[split..]), Err(Refusal::FrameTooLarge), "split {split}");
        }
    }

    #[test]
    fn unmasked_client_frames_are_measured_without_a_masking_key() {
        let mut stream = header(true, TEXT, 5, false);
        stream.extend(b"hello");
        stream.extend(frame(true, TEXT, 7));
        stream.extend(header(true, TEXT, 200, false));
        let mut scanner = FrameScanner::new(limits(100, 100));
        assert_eq!(scanner.scan(&stream), Err(Refusal::FrameTooLarge));
        let mut scanner = FrameScanner::new(limits(100, 100));
        assert_eq!(scanner.scan(&stream[..stream.len() - 4]), Ok(0));
    }

    #[test]
    fn fragments_count_towards_their_message_and_what_it_holds() {
        let mut scanner = FrameScanner::new(limits(100, 250));
        assert_eq!(scanner.scan(&frame(false, TEXT, 100)), Ok(100));
        assert_eq!(scanner.scan(&header(false, OPCODE_CONTINUATION, 100, true)), Ok(200));
        assert_eq!(scanner.scan(&[0; 100]), Ok(200));
        assert_eq!(scanner.scan(&header(true, OPCODE_CONTINUATION, 51, true)), Err(Refusal::MessageTooLarge));
    }

    #[test]
    fn the_last_fragment_ends_the_message() {
        let mut scanner = FrameScanner::new(limits(100, 150));
        let message = [frame(false, BINARY, 100), frame(true, OPCODE_CONTINUATION, 50)].concat();
        assert_eq!(scanner.scan(&message), Ok(0));
        // A new message starts from nothing.
        assert_eq!(scanner.scan(&message), Ok(0));
    }

    #[test]
    fn many_small_fragments_cannot_exceed_the_message_limit() {
        let mut scanner = FrameScanner::new(limits(KIB64, KIB64));
        assert_eq!(scanner.scan(&frame(false, TEXT, 1024)), Ok(1024));
        for sent in 2..=64 {
            assert_eq!(scanner.scan(&frame(false, OPCODE_CONTINUATION, 1024)), Ok(sent * 1024));
        }
        assert_eq!(scanner.scan(&header(false, OPCODE_CONTINUATION, 1, true)), Err(Refusal::MessageTooLarge));
    }

    #[test]
    fn control_frames_between_fragments_neither_count_nor_end_the_message() {
        let mut scanner = FrameScanner::new(limits(100, 200));
        assert_eq!(scanner.scan(&frame(false, TEXT, 100)), Ok(100));
        assert_eq!(scanner.scan(&header(true, PING, 20, true)), Ok(120));
        assert_eq!(scanner.scan(&[0; 20]), Ok(100));
        assert_eq!(scanner.scan(&frame(true, PONG, 0)), Ok(100));
        assert_eq!(scanner.scan(&header(true, OPCODE_CONTINUATION, 100, true)), Ok(200));
        assert_eq!(scanner.scan(&[0; 100]), Ok(0));
    }

    #[test]
    fn a_new_message_resets_the_count_of_an_abandoned_one() {
        // Starting a message inside another is the codec's protocol error; the guard only
        // must not count the abandoned fragments twice.
        let mut scanner = FrameScanner::new(limits(100, 150));
        assert_eq!(scanner.scan(&frame(false, TEXT, 100)), Ok(100));
        assert_eq!(scanner.scan(&frame(true, TEXT, 100)), Ok(0));
    }

    #[test]
    fn the_budget_is_shared_and_never_exceeded() {
        let budget = Arc::new(ReceiveBudget::new(1000));
        let mut first = Reservation::new(budget.clone());
        let mut second = Reservation::new(budget.clone());
        assert!(first.resize(600));
        assert!(!second.resize(401));
        assert!(second.resize(400));
        assert_eq!(budget.in_use(), 1000);
        assert!(first.resize(100), "shrinking always succeeds");
        assert!(second.resize(900));
        assert!(!first.resize(101));
        assert_eq!(budget.in_use(), 1000);
        drop(second);
        assert_eq!(budget.in_use(), 100);
        drop(first);
        assert_eq!(budget.in_use(), 0);
    }

    fn chunks(parts: Vec<Vec<u8>>) -> impl Stream<Item = Result<Bytes, PayloadError>> + Unpin {
        stream::iter(parts.into_iter().map(|part| Ok(Bytes::from(part))))
    }

    #[tokio::test]
    async fn the_guard_passes_bytes_through_unchanged() {
        let parts = vec![frame(true, TEXT, 10), frame(false, BINARY, 300)[..50].to_vec(), vec![7; 256]];
        let budget = Arc::new(ReceiveBudget::new(1000));
        let (guard, verdict) = FrameGuard::new(chunks(parts.clone()), limits(1000, 1000), budget.clone());
        let passed: Vec<Bytes> = guard.map(|chunk| chunk.unwrap()).collect().await;
        assert_eq!(passed, parts.into_iter().map(Bytes::from).collect::<Vec<_>>());
        assert_eq!(verdict.refusal(), None);
    }

    #[tokio::test]
    async fn a_refused_header_stops_the_stream_without_reading_on() {
        let parts = vec![frame(true, TEXT, 10), header(true, BINARY, 1 << 62, true), vec![0; 100]];
        let budget = Arc::new(ReceiveBudget::new(1000));
        let (mut guard, verdict) = FrameGuard::new(chunks(parts), limits(1000, 1000), budget.clone());
        assert!(matches!(guard.next().await, Some(Ok(_))));
        assert!(matches!(guard.next().await, Some(Err(PayloadError::Io(_)))));
        assert_eq!(verdict.refusal(), Some(Refusal::FrameTooLarge));
        assert!(guard.next().await.is_none(), "the stream ends at the refusal");
        assert_eq!(guard.inner.size_hint(), (1, Some(1)), "the chunk after the refusal was never read");
    }

    #[tokio::test]
    async fn frames_in_flight_share_the_budget_and_give_it_back() {
        let budget = Arc::new(ReceiveBudget::new(1000));
        let partial = frame(true, TEXT, 600)[..100].to_vec();
        let rest = vec![0; 600 - (100 - 8)];
        let (mut first, _) = FrameGuard::new(chunks(vec![partial.clone(), rest]), limits(1000, 1000), budget.clone());
        let (mut second, verdict) = FrameGuard::new(chunks(vec![partial]), limits(1000, 1000), budget.clone());
        assert!(matches!(first.next().await, Some(Ok(_))));
        assert_eq!(budget.in_use(), 600);
        assert!(matches!(second.next().await, Some(Err(_))));
        assert_eq!(verdict.refusal(), Some(Refusal::ReceiveBufferFull));
        assert_eq!(budget.in_use(), 600, "the refused connection holds nothing");
        assert!(matches!(first.next().await, Some(Ok(_))));
        assert_eq!(budget.in_use(), 0, "a completed frame is given back");
    }

    #[tokio::test]
    async fn a_connection_that_ends_mid_frame_gives_its_share_back() {
        let budget = Arc::new(ReceiveBudget::new(1000));
        let (mut guard, _) =
            FrameGuard::new(chunks(vec![header(true, TEXT, 700, true)]), limits(1000, 1000), budget.clone());
        assert!(matches!(guard.next().await, Some(Ok(_))));
        assert_eq!(budget.in_use(), 700);
        drop(guard);
        assert_eq!(budget.in_use(), 0);
    }
}
