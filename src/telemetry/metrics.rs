//! The gateway's Prometheus metrics, one [`Metrics`] per running gateway (so tests that run
//! several gateways in one process each read their own).
//!
//! Counters are `prometheus` handles resolved once per label set, so counting is one atomic
//! add; the per-event counters are summed per connection in a [`Tally`] and added when the
//! connection's queue runs dry, so a busy connection touches the shared counters once per burst,
//! not once per event. Gauges whose value lives elsewhere (connections in the hub, positions in
//! the feed) are set from a [`Snapshot`] at scrape time; nothing on the hot path keeps them.

use std::sync::Mutex;

use prometheus::{
    Counter, Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::position::Gap;
use crate::protocol::{code, EventOp};

/// Which transport a connection came over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    WebSocket,
    Sse,
}

impl Transport {
    pub const ALL: [Transport; 2] = [Transport::WebSocket, Transport::Sse];

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why a connection ended, as `livegate_disconnects_total{reason}` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disconnect {
    /// The client closed, or went away (its socket failed).
    Client,
    /// Its send queue overflowed: it read too slowly.
    SlowConsumer,
    /// It did not answer a ping within the interval.
    PingTimeout,
    /// It sent (or announced) a frame or message above `websocket.max_frame_bytes`.
    FrameTooLarge,
    /// Its next frame would have taken the receive buffer of all connections past its bound.
    ReceiveBufferFull,
    /// It broke the WebSocket protocol.
    ProtocolError,
    /// Its token lapsed (SSE streams end then; WebSocket subscriptions are stopped instead).
    TokenExpired,
    /// The gateway is shutting down.
    Shutdown,
}

impl Disconnect {
    pub const ALL: [Disconnect; 8] = [
        Disconnect::Client,
        Disconnect::SlowConsumer,
        Disconnect::PingTimeout,
        Disconnect::FrameTooLarge,
        Disconnect::ReceiveBufferFull,
        Disconnect::ProtocolError,
        Disconnect::TokenExpired,
        Disconnect::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Disconnect::Client => "client",
            Disconnect::SlowConsumer => "slow_consumer",
            Disconnect::PingTimeout => "ping_timeout",
            Disconnect::FrameTooLarge => "frame_too_large",
            Disconnect::ReceiveBufferFull => "receive_buffer_full",
            Disconnect::ProtocolError => "protocol_error",
            Disconnect::TokenExpired => "token_expired",
            Disconnect::Shutdown => "shutdown",
        }
    }
}

/// Which kind of token a check was about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Jwt,
    Session,
}

/// How a token check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenOutcome {
    Accepted,
    Invalid,
    Expired,
    Unavailable,
}

const EVENT_OPS: [EventOp; 5] = [EventOp::Create, EventOp::Enter, EventOp::Update, EventOp::Leave, EventOp::Delete];
const GAPS: [Gap; 2] = [Gap::Expired, Gap::Reset];
const TOKEN_KINDS: [(TokenKind, &str); 2] = [(TokenKind::Jwt, "jwt"), (TokenKind::Session, "session")];
const TOKEN_OUTCOMES: [(TokenOutcome, &str); 4] = [
    (TokenOutcome::Accepted, "accepted"),
    (TokenOutcome::Invalid, "invalid"),
    (TokenOutcome::Expired, "expired"),
    (TokenOutcome::Unavailable, "unavailable"),
];

fn op_index(op: EventOp) -> usize {
    EVENT_OPS.iter().position(|o| *o == op).unwrap_or(0)
}

fn gap_index(gap: Gap) -> usize {
    GAPS.iter().position(|g| *g == gap).unwrap_or(0)
}

/// What only the caller knows at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Open connections, by [`Transport::index`].
    pub connections: [usize; 2],
    /// Live subscriptions, by [`Transport::index`].
    pub subscriptions: [usize; 2],
    pub indexed_queries: usize,
    pub scanned_queries: usize,
    /// The last position published to the hub, and the last the stream sequenced.
    pub feed_position: i64,
    pub feed_head: i64,
    /// Capture time of the oldest unpublished change to now; 0 when caught up.
    pub feed_lag_seconds: f64,
    /// Retained changes, and the floor below which history is gone.
    pub history_changes: i64,
    pub history_floor: i64,
    /// `pg_notification_queue_usage()`, as last sampled (0 to 1).
    pub notify_queue_usage: f64,
}

/// Events and bytes one connection sent and has not yet added to the shared counters.
#[derive(Debug, Default)]
pub struct Tally {
    events: [u64; 5],
    bytes: u64,
}

impl Tally {
    pub fn event(&mut self, op: EventOp) {
        self.events[op_index(op)] += 1;
    }

    pub fn bytes(&mut self, bytes: usize) {
        self.bytes += bytes as u64;
    }

    /// Adds what was counted to `metrics` and starts again.
    pub fn flush(&mut self, metrics: &Metrics, transport: Transport) {
        let t = transport.index();
        for (i, count) in self.events.iter_mut().enumerate().filter(|(_, c)| **c > 0) {
            metrics.events_sent[t][i].inc_by(std::mem::take(count));
        }
        if self.bytes > 0 {
            metrics.bytes_sent[t].inc_by(std::mem::take(&mut self.bytes));
        }
    }
}

/// The scrape-time gauges.
struct Gauges {
    connections: IntGaugeVec,
    subscriptions: IntGaugeVec,
    distinct_queries: IntGaugeVec,
    feed_position: IntGauge,
    feed_head: IntGauge,
    feed_lag_seconds: Gauge,
    history_changes: IntGauge,
    history_floor: IntGauge,
    notify_queue_usage: Gauge,
    resident_memory: IntGauge,
    open_fds: IntGauge,
    max_fds: IntGauge,
    cpu_seconds: Counter,
}

/// Every metric of one gateway.
pub struct Metrics {
    registry: Registry,
    events_sent: [[IntCounter; 5]; 2],
    bytes_sent: [IntCounter; 2],
    disconnects: [IntCounter; 8],
    subscribe_refusals: IntCounterVec,
    replays: [IntCounter; 2],
    replayed_changes: [IntCounter; 2],
    gaps: [[IntCounter; 2]; 2],
    token_checks: [[IntCounter; 4]; 2],
    database_reconnects: IntCounter,
    publish_seconds: Histogram,
    gauges: Gauges,
    /// Scrapes are serialised: they set the shared gauges, then render them.
    scrape: Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Registers one collector. The definitions are static and their names distinct, so this can
/// only fail on a programming error, caught by every test that builds a gateway.
fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, collector: C) -> C {
    if let Err(e) = registry.register(Box::new(collector.clone())) {
        panic!("invalid metric definition: {e}");
    }
    collector
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    match IntCounterVec::new(Opts::new(name, help), labels) {
        Ok(vec) => register(registry, vec),
        Err(e) => panic!("invalid metric {name}: {e}"),
    }
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntGaugeVec {
    match IntGaugeVec::new(Opts::new(name, help), &[label]) {
        Ok(vec) => register(registry, vec),
        Err(e) => panic!("invalid metric {name}: {e}"),
    }
}

fn int_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    match IntGauge::new(name, help) {
        Ok(gauge) => register(registry, gauge),
        Err(e) => panic!("invalid metric {name}: {e}"),
    }
}

fn gauge(registry: &Registry, name: &str, help: &str) -> Gauge {
    match Gauge::new(name, help) {
        Ok(gauge) => register(registry, gauge),
        Err(e) => panic!("invalid metric {name}: {e}"),
    }
}

fn int_counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    match IntCounter::new(name, help) {
        Ok(counter) => register(registry, counter),
        Err(e) => panic!("invalid metric {name}: {e}"),
    }
}

/// `livegate_subscribe_refusals_total`, with the codes a subscription can be refused with shown
/// from the start, at 0.
fn refusals(registry: &Registry) -> IntCounterVec {
    let help = "Subscriptions refused, by Parse error code.";
    let refusals = counter_vec(registry, "livegate_subscribe_refusals_total", help, &["code"]);
    let codes = [code::SCHEMA, code::NEEDS_AUTHENTICATION, code::INVALID_QUERY, code::FORBIDDEN];
    for code in codes.into_iter().chain([code::LIMIT_EXCEEDED, code::INVALID_SESSION_TOKEN]) {
        refusals.with_label_values(&[&code.to_string()]);
    }
    refusals
}

/// `livegate_publish_seconds`: from half a millisecond to ten seconds.
fn publish_histogram(registry: &Registry) -> Histogram {
    let buckets = vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
    let publish = HistogramOpts::new(
        "livegate_publish_seconds",
        "From a change's capture in PostgreSQL to its events queued for every recipient.",
    )
    .buckets(buckets);
    match Histogram::with_opts(publish) {
        Ok(histogram) => register(registry, histogram),
        Err(e) => panic!("invalid metric livegate_publish_seconds: {e}"),
    }
}

/// One counter per transport of `vec`, labelled `transport` (and nothing else).
fn per_transport(vec: &IntCounterVec) -> [IntCounter; 2] {
    Transport::ALL.map(|t| vec.with_label_values(&[t.as_str()]))
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let r = &registry;
        let events = counter_vec(r, "livegate_events_sent_total", "Data events sent to clients.", &["transport", "op"]);
        let events_sent =
            Transport::ALL.map(|t| EVENT_OPS.map(|op| events.with_label_values(&[t.as_str(), op.as_str()])));
        let bytes = counter_vec(r, "livegate_bytes_sent_total", "Bytes of frames sent to clients.", &["transport"]);
        let disconnects = counter_vec(r, "livegate_disconnects_total", "Connections ended, by why.", &["reason"]);
        let disconnects = Disconnect::ALL.map(|d| disconnects.with_label_values(&[d.as_str()]));
        let subscribe_refusals = refusals(r);
        let replays =
            counter_vec(r, "livegate_replays_total", "Subscriptions resumed from a position.", &["transport"]);
        let replayed = counter_vec(
            r,
            "livegate_replayed_changes_total",
            "Events replayed from history to resuming subscribers.",
            &["transport"],
        );
        let gaps = counter_vec(
            r,
            "livegate_gaps_total",
            "Gaps announced: history could not be replayed.",
            &["transport", "reason"],
        );
        let gaps = Transport::ALL.map(|t| GAPS.map(|g| gaps.with_label_values(&[t.as_str(), g.as_str()])));
        let tokens =
            counter_vec(r, "livegate_token_checks_total", "Tokens checked, by kind and result.", &["kind", "result"]);
        let token_checks =
            TOKEN_KINDS.map(|(_, kind)| TOKEN_OUTCOMES.map(|(_, result)| tokens.with_label_values(&[kind, result])));
        let publish_seconds = publish_histogram(r);
        let gauges = Gauges::new(r);
        Metrics {
            events_sent,
            bytes_sent: per_transport(&bytes),
            disconnects,
            subscribe_refusals,
            replays: per_transport(&replays),
            replayed_changes: per_transport(&replayed),
            gaps,
            token_checks,
            database_reconnects: int_counter(
                r,
                "livegate_database_reconnects_total",
                "Times the feed's listener re-established its lost database connection.",
            ),
            publish_seconds,
            gauges,
            scrape: Mutex::new(()),
            registry,
        }
    }

    pub fn disconnected(&self, reason: Disconnect) {
        self.disconnects[Disconnect::ALL.iter().position(|d| *d == reason).unwrap_or(0)].inc();
    }

    pub fn refused(&self, code: i64) {
        self.subscribe_refusals.with_label_values(&[&code.to_string()]).inc();
    }

    pub fn replay_started(&self, transport: Transport) {
        self.replays[transport.index()].inc();
    }

    pub fn replayed(&self, transport: Transport, changes: u64) {
        self.replayed_changes[transport.index()].inc_by(changes);
    }

    pub fn gap(&self, transport: Transport, gap: Gap) {
        self.gaps[transport.index()][gap_index(gap)].inc();
    }

    pub fn token_checked(&self, kind: TokenKind, outcome: TokenOutcome) {
        let kind = TOKEN_KINDS.iter().position(|(k, _)| *k == kind).unwrap_or(0);
        let outcome = TOKEN_OUTCOMES.iter().position(|(o, _)| *o == outcome).unwrap_or(0);
        self.token_checks[kind][outcome].inc();
    }

    pub fn database_reconnected(&self) {
        self.database_reconnects.inc();
    }

    /// One change fanned out `seconds` after it was captured.
    pub fn published(&self, seconds: f64) {
        self.publish_seconds.observe(seconds.max(0.0));
    }

    /// The exposition in the Prometheus text format, with the scrape-time values of `snapshot`
    /// and of this process.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let _scrape = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        self.gauges.set(snapshot);
        self.gauges.set_process();
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Gauges {
    fn new(r: &Registry) -> Gauges {
        Gauges {
            connections: gauge_vec(r, "livegate_connections", "Open client connections.", "transport"),
            subscriptions: gauge_vec(r, "livegate_subscriptions", "Live subscriptions.", "transport"),
            distinct_queries: gauge_vec(
                r,
                "livegate_distinct_queries",
                "Distinct queries in the hub, by whether an index finds their candidates.",
                "index",
            ),
            feed_position: int_gauge(r, "livegate_feed_position", "The last stream position published to the hub."),
            feed_head: int_gauge(r, "livegate_feed_head", "The last stream position sequenced in the database."),
            feed_lag_seconds: gauge(
                r,
                "livegate_feed_lag_seconds",
                "From the capture of the oldest unpublished change to now; 0 when caught up.",
            ),
            history_changes: int_gauge(r, "livegate_history_changes", "Changes retained for resuming clients."),
            history_floor: int_gauge(r, "livegate_history_floor", "Positions at or below this were pruned."),
            notify_queue_usage: gauge(
                r,
                "livegate_notify_queue_usage",
                "pg_notification_queue_usage() as last sampled (0 to 1).",
            ),
            resident_memory: int_gauge(r, "process_resident_memory_bytes", "Resident memory of the gateway process."),
            open_fds: int_gauge(r, "process_open_fds", "Open file descriptors."),
            max_fds: int_gauge(r, "process_max_fds", "The process's limit of open file descriptors."),
            cpu_seconds: match Counter::new("process_cpu_seconds_total", "User and system CPU time of the process.") {
                Ok(counter) => register(r, counter),
                Err(e) => panic!("invalid metric process_cpu_seconds_total: {e}"),
            },
        }
    }

    fn set(&self, s: &Snapshot) {
        for t in Transport::ALL {
            self.connections.with_label_values(&[t.as_str()]).set(s.connections[t.index()] as i64);
            self.subscriptions.with_label_values(&[t.as_str()]).set(s.subscriptions[t.index()] as i64);
        }
        self.distinct_queries.with_label_values(&["indexed"]).set(s.indexed_queries as i64);
        self.distinct_queries.with_label_values(&["scanned"]).set(s.scanned_queries as i64);
        self.feed_position.set(s.feed_position);
        self.feed_head.set(s.feed_head);
        self.feed_lag_seconds.set(s.feed_lag_seconds);
        self.history_changes.set(s.history_changes);
        self.history_floor.set(s.history_floor);
        self.notify_queue_usage.set(s.notify_queue_usage);
    }

    fn set_process(&self) {
        let process = process::read();
        self.resident_memory.set(process.resident_bytes as i64);
        self.open_fds.set(process.open_fds as i64);
        self.max_fds.set(process.max_fds as i64);
        // A counter only moves forwards: it is brought up to the kernel's figure.
        let behind = process.cpu_seconds - self.cpu_seconds.get();
        if behind > 0.0 {
            self.cpu_seconds.inc_by(behind);
        }
    }
}

/// This process as the kernel reports it (`/proc/self`); zeros where it cannot be read.
mod process {
    #[derive(Debug, Default)]
    pub struct Process {
        pub resident_bytes: u64,
        pub cpu_seconds: f64,
        pub open_fds: u64,
        pub max_fds: u64,
    }

    pub fn read() -> Process {
        Process { resident_bytes: resident(), cpu_seconds: cpu_seconds(), open_fds: open_fds(), max_fds: max_fds() }
    }

    fn page_size() -> u64 {
        // SAFETY: sysconf has no preconditions.
        u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
    }

    fn resident() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        statm.split_whitespace().nth(1).and_then(|pages| pages.parse::<u64>().ok()).unwrap_or(0) * page_size()
    }

    /// utime + stime from `/proc/self/stat` (fields 14 and 15, counted after the command name,
    /// which may itself hold spaces and parentheses).
    fn cpu_seconds() -> f64 {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let Some((_, after_name)) = stat.rsplit_once(')') else { return 0.0 };
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        // SAFETY: sysconf has no preconditions.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        (ticks(11) + ticks(12)) as f64 / per_second
    }

    fn open_fds() -> u64 {
        std::fs::read_dir("/proc/self/fd").map(|dir| dir.count() as u64).unwrap_or(0)
    }

    fn max_fds() -> u64 {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes into the struct it is given.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            limit.rlim_cur
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_reach_the_counters_when_flushed() {
        let metrics = Metrics::new();
        let mut tally = Tally::default();
        tally.event(EventOp::Create);
        tally.event(EventOp::Create);
        tally.event(EventOp::Leave);
        tally.bytes(100);
        assert_eq!(metrics.events_sent[0][0].get(), 0, "nothing is shared before the flush");
        tally.flush(&metrics, Transport::WebSocket);
        tally.flush(&metrics, Transport::WebSocket);
        assert_eq!(metrics.events_sent[0][op_index(EventOp::Create)].get(), 2);
        assert_eq!(metrics.events_sent[0][op_index(EventOp::Leave)].get(), 1);
        assert_eq!(metrics.bytes_sent[0].get(), 100);
        assert_eq!(metrics.bytes_sent[1].get(), 0);
    }

    #[test]
    fn the_exposition_names_every_metric_with_its_labels() {
        let metrics = Metrics::new();
        metrics.disconnected(Disconnect::SlowConsumer);
        metrics.refused(155);
        metrics.gap(Transport::Sse, Gap::Expired);
        metrics.token_checked(TokenKind::Session, TokenOutcome::Expired);
        metrics.published(0.002);
        let snapshot = Snapshot { connections: [3, 1], feed_lag_seconds: 0.5, ..Snapshot::default() };
        let text = metrics.render(&snapshot);
        for line in [
            "livegate_connections{transport=\"websocket\"} 3",
            "livegate_connections{transport=\"sse\"} 1",
            "livegate_disconnects_total{reason=\"slow_consumer\"} 1",
            "livegate_disconnects_total{reason=\"shutdown\"} 0",
            "livegate_subscribe_refusals_total{code=\"155\"} 1",
            "livegate_gaps_total{reason=\"expired\",transport=\"sse\"} 1",
            "livegate_token_checks_total{kind=\"session\",result=\"expired\"} 1",
            "livegate_feed_lag_seconds 0.5",
            "livegate_publish_seconds_count 1",
            "# TYPE livegate_events_sent_total counter",
            "# TYPE process_cpu_seconds_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        let rss = text.lines().find_map(|l| l.strip_prefix("process_resident_memory_bytes ")).unwrap();
        assert!(rss.parse::<u64>().unwrap() > 1_000_000, "the process's own RSS is read: {rss}");
    }
}
