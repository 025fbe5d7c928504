//! Connection quotas, decided before a WebSocket handshake or an SSE stream starts: open
//! connections per client IP and in total, SSE streams per IP, and connection attempts per
//! second per IP (a token bucket). An admitted connection holds a [`Permit`] until it ends.
//! Pure bookkeeping behind one mutex, touched once per connect and once per disconnect.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::telemetry::Transport;

/// The `[limits]` keys this module applies, and whom to believe about a client's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Proxies whose `X-Forwarded-For` is believed (`server.trusted_proxies`).
    pub trusted_proxies: Vec<IpAddr>,
    pub per_ip: usize,
    pub total: usize,
    pub sse_per_ip: usize,
    /// Connection attempts per second per IP; a burst of as many is allowed.
    pub attempts_per_second_per_ip: u32,
}

/// Why a connection was turned away; `message()` names the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turned {
    PerIp(usize),
    SsePerIp(usize),
    Total(usize),
    Rate(u32),
    /// The gateway is draining for a shutdown.
    Draining,
}

impl Turned {
    /// 429 when the client itself asks too much, 503 when the gateway as a whole is full.
    pub fn status(self) -> u16 {
        match self {
            Turned::Total(_) | Turned::Draining => 503,
            Turned::PerIp(_) | Turned::SsePerIp(_) | Turned::Rate(_) => 429,
        }
    }

    pub fn message(self) -> String {
        match self {
            Turned::PerIp(n) => format!("too many connections from this address (limits.connections_per_ip = {n})"),
            Turned::SsePerIp(n) => format!("too many SSE streams from this address (limits.sse_streams_per_ip = {n})"),
            Turned::Total(n) => format!("the gateway is full (limits.connections_total = {n}); try again later"),
            Turned::Draining => "the gateway is shutting down; connect again to reach another one".into(),
            Turned::Rate(n) => {
                format!("too many connection attempts from this address (limits.connection_rate_per_ip = {n}/s)")
            }
        }
    }
}

/// A token bucket: `rate` tokens a second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    /// A bucket whose burst is one second's worth.
    pub fn new(rate: u32) -> TokenBucket {
        TokenBucket::with_burst(rate, rate)
    }

    pub fn with_burst(rate: u32, burst: u32) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket { rate: f64::from(rate), burst, tokens: burst, refilled: Instant::now() }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self) -> bool {
        self.refill();
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }

    /// Whether the bucket is full again (nothing is remembered by keeping it).
    fn full(&mut self) -> bool {
        self.refill();
        self.tokens >= self.burst
    }

    fn refill(&mut self) {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.refilled).as_secs_f64() * self.rate).min(self.burst);
        self.refilled = now;
    }
}

#[derive(Debug)]
struct Peer {
    open: usize,
    sse: usize,
    /// Connection attempts.
    attempts: TokenBucket,
}

#[derive(Debug, Default)]
struct State {
    total: usize,
    peers: HashMap<IpAddr, Peer>,
    /// Peer count after the last sweep of idle peers.
    swept_at: usize,
}

#[derive(Debug)]
pub struct Gate {
    limits: ConnectionLimits,
    state: Mutex<State>,
    /// Set once a shutdown starts: nothing new is admitted.
    draining: AtomicBool,
}

/// An admitted connection; dropping it gives its place back.
#[derive(Debug)]
pub struct Permit {
    gate: Arc<Gate>,
    ip: IpAddr,
    kind: Transport,
}

impl Gate {
    pub fn new(limits: ConnectionLimits) -> Arc<Gate> {
        Arc::new(Gate { limits, state: Mutex::default(), draining: AtomicBool::new(false) })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Counters stay consistent under a panic elsewhere: every update is one statement.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The address a connection counts against: its peer, or, when the peer is a trusted proxy,
    /// the last address in `forwarded_for` (an `X-Forwarded-For` value) that is not one.
    pub fn client_ip(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        let trusted = |ip: &IpAddr| self.limits.trusted_proxies.contains(ip);
        if !trusted(&peer) {
            return peer;
        }
        let hops = forwarded_for.into_iter().flat_map(|v| v.split(',')).map(str::trim).rev();
        for hop in hops {
            match hop.parse::<IpAddr>() {
                Ok(ip) if trusted(&ip) => continue,
                Ok(ip) => return ip,
                // Garbage from beyond the last trusted hop: the nearest address we know.
                Err(_) => break,
            }
        }
        peer
    }

    /// Admits no connection from now on (a shutdown started).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn admit(self: &Arc<Self>, ip: IpAddr, kind: Transport) -> Result<Permit, Turned> {
        if self.draining() {
            return Err(Turned::Draining);
        }
        let limits = &self.limits;
        let mut state = self.lock();
        let state = &mut *state;
        let rate = limits.attempts_per_second_per_ip;
        let attempts = || TokenBucket::new(rate);
        let peer = state.peers.entry(ip).or_insert_with(|| Peer { open: 0, sse: 0, attempts: attempts() });
        if !peer.attempts.take() {
            return Err(Turned::Rate(limits.attempts_per_second_per_ip));
        }
        if peer.open >= limits.per_ip {
            return Err(Turned::PerIp(limits.per_ip));
        }
        if kind == Transport::Sse && peer.sse >= limits.sse_per_ip {
            return Err(Turned::SsePerIp(limits.sse_per_ip));
        }
        if state.total >= limits.total {
            return Err(Turned::Total(limits.total));
        }
        peer.open += 1;
        peer.sse += usize::from(kind == Transport::Sse);
        state.total += 1;
        Ok(Permit { gate: self.clone(), ip, kind })
    }

    /// Open connections in all.
    pub fn open(&self) -> usize {
        self.lock().total
    }

    fn release(&self, ip: IpAddr, kind: Transport) {
        let mut state = self.lock();
        state.total = state.total.saturating_sub(1);
        if let Some(peer) = state.peers.get_mut(&ip) {
            peer.open = peer.open.saturating_sub(1);
            peer.sse = peer.sse.saturating_sub(usize::from(kind == Transport::Sse));
        }
        // Forget peers with nothing open whose bucket has refilled, once the map has doubled:
        // a peer that reconnects at once keeps its (spent) bucket.
        if state.peers.len() > 2 * state.swept_at.max(512) {
            state.peers.retain(|_, p| p.open > 0 || !p.attempts.full());
            state.swept_at = state.peers.len();
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.release(self.ip, self.kind);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(per_ip: usize, total: usize, sse_per_ip: usize, rate: u32) -> Arc<Gate> {
        let trusted_proxies = vec![ip(9), ip(8)];
        Gate::new(ConnectionLimits { trusted_proxies, per_ip, total, sse_per_ip, attempts_per_second_per_ip: rate })
    }

    #[test]
    fn forwarded_for_is_believed_from_trusted_proxies_only() {
        let gate = gate(1, 1, 1, 1);
        assert_eq!(gate.client_ip(ip(1), Some("10.0.0.5")), ip(1), "not a proxy: the header is ignored");
        assert_eq!(gate.client_ip(ip(9), Some("10.0.0.5")), ip(5));
        assert_eq!(gate.client_ip(ip(9), Some("1.2.3.4, 10.0.0.5, 10.0.0.8")), ip(5), "trusted hops are skipped");
        assert_eq!(gate.client_ip(ip(9), Some("10.0.0.5, nonsense")), ip(9), "garbage stops the walk");
        assert_eq!(gate.client_ip(ip(9), None), ip(9));
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn connections_are_counted_per_ip_and_in_all_and_given_back() {
        let gate = gate(2, 3, 1, 1_000);
        let a1 = gate.admit(ip(1), Transport::WebSocket).unwrap();
        let _a2 = gate.admit(ip(1), Transport::Sse).unwrap();
        assert_eq!(gate.admit(ip(1), Transport::WebSocket).unwrap_err(), Turned::PerIp(2));
        let _b1 = gate.admit(ip(2), Transport::Sse).unwrap();
        assert_eq!(gate.admit(ip(2), Transport::Sse).unwrap_err(), Turned::SsePerIp(1));
        assert_eq!(gate.admit(ip(3), Transport::WebSocket).unwrap_err(), Turned::Total(3));
        assert_eq!(Turned::Total(3).status(), 503);
        assert_eq!(Turned::PerIp(2).status(), 429);
        drop(a1);
        assert_eq!(gate.open(), 2);
        assert!(gate.admit(ip(3), Transport::WebSocket).is_ok(), "a place given back is free");
    }

    #[test]
    fn a_draining_gate_admits_nothing() {
        let gate = gate(2, 3, 1, 1_000);
        let open = gate.admit(ip(1), Transport::WebSocket).unwrap();
        gate.drain();
        assert!(gate.draining());
        assert_eq!(gate.admit(ip(2), Transport::Sse).unwrap_err(), Turned::Draining);
        assert_eq!((Turned::Draining.status(), gate.open()), (503, 1), "what is open stays open");
        assert!(Turned::Draining.message().contains("shutting down"));
        drop(open);
    }

    #[test]
    fn attempts_are_rate_limited_per_ip() {
        let gate = gate(100, 100, 100, 3);
        for _ in 0..3 {
            drop(gate.admit(ip(1), Transport::WebSocket).unwrap());
        }
        assert_eq!(gate.admit(ip(1), Transport::WebSocket).unwrap_err(), Turned::Rate(3));
        assert!(gate.admit(ip(2), Transport::WebSocket).is_ok(), "other addresses are not affected");
        std::thread::sleep(std::time::Duration::from_millis(400));
        assert!(gate.admit(ip(1), Transport::WebSocket).is_ok(), "the bucket refills");
        assert!(Turned::Rate(3).message().contains("limits.connection_rate_per_ip = 3/s"));
    }
}
