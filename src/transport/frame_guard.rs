//! Frame limits judged from the announced length, before any payload is buffered.
//!
//! actix-http's WebSocket codec compares a frame with `max_frame_size` only once the whole frame
//! has arrived, and `actix-ws` appends everything the socket delivers to one buffer meanwhile: a
//! client announcing a 1 GB frame (or 2^62 bytes) makes the gateway buffer all of it first. The
//! [`FrameGuard`] sits between the request payload and `actix-ws`, reads each client frame
//! header as it streams past ([`FrameScanner`], pure), and passes the bytes on unchanged. When a
//! header announces more than the frame limit, or a fragment would take its message past the
//! message limit, the guard stops the stream before that frame's payload is read.
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
        let guard = FrameGuard { inner, scanner, reservation: Reservation::new(budget), verdict: verdict.clone(), stopped: false };
        (guard, verdict)
    }

    fn admit(&mut self, chunk: &[u8]) -> Result<(), Refusal> {
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
mod tests;
