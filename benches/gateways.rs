//! What each extra gateway costs the database.
//!
//! Several gateways may serve one database. Each runs its own feed: a LISTEN connection, the
//! sequencer `livegate.advance()` (which serialises on the `livegate.stream` row, FOR UPDATE)
//! called on every doorbell, a read of `livegate.changes` after its cursor, and a pruner. This
//! bench starts N real `livegate` processes (the binary Cargo built with the bench, each with its
//! own config file and port) on a fresh database, keeps one idle SSE subscriber per gateway on the
//! whole table (so every gateway really fans out), and commits a fixed rate of one-row
//! transactions from one paced writer connection. After a warm-up it measures, over a window:
//!   - PostgreSQL CPU: utime+stime from /proc of every `postgres` process, plus what the
//!     postmaster collected from children that exited meanwhile (cutime+cstime), split into the
//!     gateways' backends, the writer's backend and the rest (postmaster, WAL writer,
//!     checkpointer, autovacuum…); the bench's own two probe connections are left out;
//!   - transactions/s and rows read per change (`tup_returned + tup_fetched`) of the bench
//!     database (`pg_stat_database`), and `livegate.advance()` calls/s (`pg_stat_user_functions`;
//!     the bench sets `track_functions = 'pl'` on its database);
//!   - contention on the stream row: `pg_stat_activity` sampled every 10 ms, the share of samples
//!     in which a backend of the bench database waits on a lock (`wait_event_type = 'Lock'`), and
//!     the mean number of waiters;
//!   - delivery latency, from the writer's commit acknowledgement to the event's arrival at each
//!     subscriber (p50/p99 over all subscribers), and the writer's own INSERT round trip and the
//!     rate it achieved (its commits share the WAL flushes with the gateways' sequencing);
//!   - the gateways' own CPU, and what else the machine ran meanwhile (a disturbed run shows there).
//!
//! Every subscriber should receive every change exactly once: changes missing or repeated at any
//! of them are counted and shown, as are gaps, epoch changes and the gateways' warnings.
//! Each N gets a database of its own (same name, dropped and created again), so the rows start
//! alike. Statistics counters are flushed by backends about once a second, so the counts carry
//! an error of about a second's worth at each end of the window (both ends are in steady state).
//!
//! Run: `cargo bench --bench gateways`. Environment: `LIVEGATE_BENCH_GATEWAYS` (default
//! "1,2,4,8"), `LIVEGATE_BENCH_RATE` (rows/s, default 500), `LIVEGATE_BENCH_SECS` (the measured
//! window, default 20), `LIVEGATE_BENCH_WARMUP_SECS` (default 5), `LIVEGATE_BENCH_ATTEMPTS`
//! (default 3: an N whose window saw more than 20% of a core used by other processes, builds or
//! tests, is run again, up to this many times, and the least disturbed run is shown),
//! `LIVEGATE_TEST_DATABASE_URL` (the server, default postgres://postgres@127.0.0.1:5432; it must
//! run on this machine, since its CPU is read from /proc, and the role must be a superuser).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::{Connection, Executor, PgConnection, Row};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

const BINARY: &str = env!("CARGO_BIN_EXE_livegate");

/// Rows written after the window closes, so that its end is in steady state too.
const TAIL: Duration = Duration::from_secs(1);

#[tokio::main]
async fn main() {
    let settings = Settings::from_env();
    let machine = Machine::new();
    println!(
        "{} gateway count(s) {:?}, {} rows/s, {} s window after {} s warm-up, {} cores, server {}",
        BINARY, settings.counts, settings.rate, settings.secs, settings.warmup, machine.cores, settings.server
    );
    let mut results = Vec::new();
    for &n in &settings.counts {
        results.push(least_disturbed(n, &settings, &machine).await);
    }
    print_tables(&results);
}

/// Runs N gateways until a run is undisturbed (others' CPU below [`DISTURBED`]) or the attempts
/// are used up; the least disturbed run counts.
async fn least_disturbed(n: usize, settings: &Settings, machine: &Machine) -> RunResult {
    let (mut best, mut attempts): (Option<RunResult>, usize) = (None, 0);
    for attempt in 1..=settings.attempts {
        attempts = attempt;
        let result = run_with(n, settings, machine).await;
        let elsewhere = result.pct(result.cpu.elsewhere);
        let disturbed = elsewhere > DISTURBED;
        println!(
            "  N={n} attempt {attempt}: PG {:.1}% of a core, others {elsewhere:.0}%{}",
            result.pg_pct(),
            if disturbed { " (disturbed)" } else { "" }
        );
        if best.as_ref().is_none_or(|b| b.cpu.elsewhere > result.cpu.elsewhere) {
            best = Some(result);
        }
        if !disturbed {
            break;
        }
    }
    let mut best = best.expect("at least one attempt");
    best.attempts = attempts;
    best
}

/// CPU of other processes (builds, tests) above which a run counts as disturbed, in % of a core.
const DISTURBED: f64 = 20.0;

struct Settings {
    counts: Vec<usize>,
    attempts: usize,
    rate: f64,
    secs: f64,
    warmup: f64,
    server: String,
}

impl Settings {
    fn from_env() -> Settings {
        let counts = std::env::var("LIVEGATE_BENCH_GATEWAYS").unwrap_or_else(|_| "1,2,4,8".into());
        let counts = counts
            .split(',')
            .map(|n| n.trim().parse().expect("LIVEGATE_BENCH_GATEWAYS: comma-separated gateway counts"))
            .filter(|&n| n > 0)
            .collect::<Vec<usize>>();
        assert!(!counts.is_empty(), "LIVEGATE_BENCH_GATEWAYS names no gateway count");
        Settings {
            counts,
            attempts: env_or("LIVEGATE_BENCH_ATTEMPTS", 3usize).max(1),
            rate: env_or("LIVEGATE_BENCH_RATE", 500.0),
            secs: env_or("LIVEGATE_BENCH_SECS", 20.0),
            warmup: env_or("LIVEGATE_BENCH_WARMUP_SECS", 5.0),
            server: std::env::var("LIVEGATE_TEST_DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into()),
        }
    }
}

fn env_or<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value.trim().parse().unwrap_or_else(|_| panic!("{name}={value} is not a number")),
        Err(_) => default,
    }
}

/// One N: fresh database, N gateways with a subscriber each, the paced writer, the window.
async fn run_with(n: usize, settings: &Settings, machine: &Machine) -> RunResult {
    // Dropped last (declared first): the database outlives the gateways, also when a step panics.
    let db = BenchDb::create(&settings.server).await;
    let dir = TempDir::new();
    let mut gateways = Vec::with_capacity(n);
    // One after another: gateways starting at the same moment race in livegate.watch() (drop and
    // create the capture trigger), and the loser exits with "trigger ... already exists" or
    // "deadlock detected".
    for i in 0..n {
        let mut gateway = Gateway::spawn(i, &db, &dir.path);
        gateway.wait_ready().await;
        gateways.push(gateway);
    }
    let subscribers = futures_util::future::join_all(gateways.iter().map(|g| Subscriber::open(g.port))).await;
    let mut probe = db.connect().await;
    let epoch_before = stream_epoch(&mut probe).await;
    // A checkpoint now, so that a timed one does not land in some windows and not in others.
    probe.execute("checkpoint").await.expect("checkpoint");
    let probe_pid = backend_pid(&mut probe).await;
    let sampler = PgConnection::connect(&format!("{}/postgres", settings.server)).await.expect("connect the sampler");

    let writer = db.connect().await;
    let total = Duration::from_secs_f64(settings.warmup + settings.secs) + TAIL;
    let writing = tokio::spawn(write(writer, settings.rate, total));
    tokio::time::sleep(Duration::from_secs_f64(settings.warmup)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let sampling = tokio::spawn(sample_locks(sampler, db.name.clone(), probe_pid, stop.clone()));
    let gateway_pids: Vec<i32> = gateways.iter().map(|g| g.pid).collect();
    let start = Snapshot::take(&mut probe, &db.name, &gateway_pids).await;
    tokio::time::sleep(Duration::from_secs_f64(settings.secs)).await;
    let end = Snapshot::take(&mut probe, &db.name, &gateway_pids).await;
    stop.store(true, Ordering::Release);
    let (sampler, locks) = sampling.await.expect("the lock sampler panicked");
    let (writer_pid, commits) = writing.await.expect("the writer panicked");

    let delivery = Delivery::collect(&subscribers, &commits, start.at, end.at).await;
    let epoch_after = stream_epoch(&mut probe).await;
    let own = [probe_pid, locks.pid];
    let cpu = CpuSplit::between(&start, &end, &db.name, writer_pid, &own, machine);
    drop(subscribers);
    let mut logs = Vec::new();
    for gateway in gateways {
        logs.push(gateway.stop().await);
    }
    drop((probe, sampler));
    db.drop_now().await;
    RunResult::new(n, &start, &end, cpu, locks, delivery, epoch_before != epoch_after, &logs)
}

// ---------------------------------------------------------------------------------------------
// The database and the gateway processes.

/// The bench database: created fresh, dropped at the end (or when dropped, on a panic).
struct BenchDb {
    server: String,
    name: String,
    url: String,
    dropped: bool,
}

impl BenchDb {
    async fn create(server: &str) -> BenchDb {
        let name = format!("livegate_bench_gateways_{}", std::process::id());
        let mut admin = PgConnection::connect(&format!("{server}/postgres")).await.expect("connect to the server");
        admin.execute(format!("drop database if exists {name} with (force)").as_str()).await.expect("drop database");
        admin.execute(format!("create database {name}").as_str()).await.expect("create the bench database");
        // Counts calls of livegate.advance() and livegate.prune() in pg_stat_user_functions.
        admin
            .execute(format!("alter database {name} set track_functions = 'pl'").as_str())
            .await
            .expect("set track_functions (needs a superuser)");
        let db = BenchDb { server: server.into(), url: format!("{server}/{name}"), name, dropped: false };
        let mut conn = db.connect().await;
        conn.execute("create table items (id bigserial primary key, n int, body text)").await.expect("create items");
        db
    }

    async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.expect("connect to the bench database")
    }

    async fn drop_now(mut self) {
        drop_database(&self.server, &self.name).await;
        self.dropped = true;
    }
}

async fn drop_database(server: &str, name: &str) {
    match PgConnection::connect(&format!("{server}/postgres")).await {
        Ok(mut admin) => {
            if let Err(e) = admin.execute(format!("drop database if exists {name} with (force)").as_str()).await {
                eprintln!("cannot drop the bench database {name}: {e}");
            }
        }
        Err(e) => eprintln!("cannot connect to drop the bench database {name}: {e}"),
    }
}

impl Drop for BenchDb {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let (server, name) = (self.server.clone(), self.name.clone());
        // Drop cannot await, and the runtime may be unwinding: a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(drop_database(&server, &name));
        })
        .join();
    }
}

/// Config files and logs of one run; removed afterwards.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new() -> TempDir {
        let path = std::env::temp_dir().join(format!("livegate-bench-gateways-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create the temporary directory");
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// One `livegate` process. Killed when dropped (a panicking bench leaves none behind).
struct Gateway {
    child: Child,
    pid: i32,
    port: u16,
    log: PathBuf,
}

impl Gateway {
    fn spawn(index: usize, db: &BenchDb, dir: &Path) -> Gateway {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("find a free port")
            .port();
        let config = dir.join(format!("gateway-{index}.toml"));
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n\n[database]\nurl = \"{}\"\n\n[feed]\ntables = [\"items\"]\n",
            db.url
        );
        std::fs::write(&config, text).expect("write a gateway config");
        let log = dir.join(format!("gateway-{index}.log"));
        let stderr = std::fs::File::create(&log).expect("create a gateway log");
        let mut command = Command::new(BINARY);
        command.arg("--config").arg(&config);
        // Nothing from the bench's environment may override the config file.
        for (key, _) in std::env::vars() {
            if key.starts_with("LIVEGATE_") || key == "DATABASE_URL" {
                command.env_remove(key);
            }
        }
        command.env("RUST_LOG", "info,sqlx=warn").env("NO_COLOR", "1");
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr).kill_on_drop(true);
        let child = command.spawn().expect("start the livegate binary");
        let pid = child.id().and_then(|id| i32::try_from(id).ok()).expect("the gateway's pid");
        Gateway { child, pid, port, log }
    }

    /// Until `/health` and `/ready` answer 200 (the feed listens and reads).
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for path in ["/health", "/ready"] {
            loop {
                if let Ok(Some(status)) = self.child.try_wait() {
                    panic!("gateway on port {} exited ({status}):\n{}", self.port, log_tail(&self.log));
                }
                if matches!(http_get(self.port, path).await, Some((200, _))) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "gateway on port {} not up in 30 s:\n{}",
                    self.port,
                    log_tail(&self.log)
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// SIGTERM, then SIGKILL after 5 s; returns the log.
    async fn stop(mut self) -> String {
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// `GET path` over HTTP/1.0: (status, body).
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).await.ok()?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_string(&mut response)).await.ok()?.ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, response.split("\r\n\r\n").nth(1).unwrap_or_default().to_string()))
}

async fn backend_pid(conn: &mut PgConnection) -> i32 {
    sqlx::query_scalar("select pg_backend_pid()").fetch_one(conn).await.expect("pg_backend_pid")
}

async fn stream_epoch(conn: &mut PgConnection) -> String {
    sqlx::query_scalar("select epoch::text from livegate.stream").fetch_one(conn).await.expect("read the stream row")
}

// ---------------------------------------------------------------------------------------------
// Load and clients.

/// One row the writer committed.
#[derive(Debug, Clone, Copy)]
struct Commit {
    id: i64,
    /// When the commit was acknowledged.
    acked: Instant,
    /// From sending the INSERT to its acknowledgement.
    took: Duration,
}

/// Commits one row per transaction at `rate` rows/s for `duration`, on a schedule (a late row is
/// written at once, so the mean rate holds while each INSERT takes less than 1/rate). Returns the
/// backend's pid and the commits.
async fn write(mut conn: PgConnection, rate: f64, duration: Duration) -> (i32, Vec<Commit>) {
    let pid = backend_pid(&mut conn).await;
    let body = "x".repeat(80);
    let start = tokio::time::Instant::now();
    let mut commits = Vec::with_capacity((rate * duration.as_secs_f64()) as usize + 16);
    for i in 0u64.. {
        let due = Duration::from_secs_f64(i as f64 / rate);
        if due >= duration {
            break;
        }
        tokio::time::sleep_until(start + due).await;
        let sent = Instant::now();
        let id: i64 = sqlx::query_scalar("insert into items (n, body) values ($1, $2) returning id")
            .bind(i as i32)
            .bind(&body)
            .fetch_one(&mut conn)
            .await
            .expect("insert a row");
        let acked = Instant::now();
        commits.push(Commit { id, acked, took: acked - sent });
    }
    (pid, commits)
}

/// One SSE stream on `GET /events/items`, read by a task of its own that notes when each
/// `create` arrives.
struct Subscriber {
    arrivals: Arc<Mutex<Vec<(i64, Instant)>>>,
    gaps: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    async fn open(port: u16) -> Subscriber {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.expect("connect a subscriber");
        let request = "GET /events/items HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n";
        stream.write_all(request.as_bytes()).await.expect("send the SSE request");
        let (arrivals, gaps) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicUsize::new(0)));
        let mut reader = SseReader { stream, buffer: Vec::new(), arrivals: arrivals.clone(), gaps: gaps.clone() };
        let first = tokio::time::timeout(Duration::from_secs(10), reader.next_block())
            .await
            .expect("no `subscribed` within 10 s")
            .expect("the SSE stream ended before `subscribed`");
        assert!(first.contains("event: subscribed"), "expected `subscribed`, got {first:?}");
        let task = tokio::spawn(reader.run());
        Subscriber { arrivals, gaps, task }
    }

    fn received(&self) -> usize {
        self.arrivals.lock().expect("arrivals lock").len()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A minimal SSE reader over HTTP/1.0 (no chunking).
struct SseReader {
    stream: TcpStream,
    buffer: Vec<u8>,
    arrivals: Arc<Mutex<Vec<(i64, Instant)>>>,
    gaps: Arc<AtomicUsize>,
}

impl SseReader {
    /// The next block that names an event (the response head, `retry:` and comments are skipped).
    async fn next_block(&mut self) -> Option<String> {
        loop {
            if let Some(block) = self.take_block() {
                if block.lines().any(|line| line.starts_with("event:")) {
                    return Some(block);
                }
                continue;
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    fn take_block(&mut self) -> Option<String> {
        let end = self.buffer.windows(2).position(|w| w == b"\n\n")?;
        let block = String::from_utf8_lossy(&self.buffer[..end]).into_owned();
        self.buffer.drain(..end + 2);
        Some(block)
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 64 * 1024];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buffer.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    async fn run(mut self) {
        loop {
            if !self.fill().await {
                return;
            }
            // Every event of one read arrived at the same time.
            let now = Instant::now();
            let mut ids = Vec::new();
            while let Some(block) = self.take_block() {
                let field = |name: &str| block.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
                match field("event:") {
                    Some("create") => ids.push(object_id(field("data:").unwrap_or_default())),
                    Some("gap") => _ = self.gaps.fetch_add(1, Ordering::Relaxed),
                    _ => {}
                }
            }
            self.arrivals.lock().expect("arrivals lock").extend(ids.into_iter().map(|id| (id, now)));
        }
    }
}

fn object_id(data: &str) -> i64 {
    let value: Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("event data is not JSON ({e}): {data}"));
    match &value["object"]["objectId"] {
        Value::String(s) => s.parse().unwrap_or_else(|_| panic!("objectId {s:?} is not the row's id")),
        Value::Number(n) => n.as_i64().expect("objectId"),
        other => panic!("event without an objectId: {other}"),
    }
}

/// What reached the subscribers: every change once at each, and the latency of those committed
/// in the window.
struct Delivery {
    /// Changes not received (summed over subscribers) and received more than once.
    missing: usize,
    duplicates: usize,
    gaps: usize,
    latencies: Vec<Duration>,
    /// Changes whose commit was acknowledged in the window.
    in_window: usize,
    /// How long their INSERTs took, as the writer saw it.
    inserts: Vec<Duration>,
}

impl Delivery {
    async fn collect(subscribers: &[Subscriber], commits: &[Commit], from: Instant, to: Instant) -> Delivery {
        let deadline = Instant::now() + Duration::from_secs(20);
        while subscribers.iter().any(|s| s.received() < commits.len()) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let committed: HashMap<i64, Instant> = commits.iter().map(|c| (c.id, c.acked)).collect();
        let mut inserts: Vec<Duration> =
            commits.iter().filter(|c| c.acked >= from && c.acked < to).map(|c| c.took).collect();
        inserts.sort();
        let in_window = inserts.len();
        let mut delivery = Delivery { missing: 0, duplicates: 0, gaps: 0, latencies: Vec::new(), in_window, inserts };
        for subscriber in subscribers {
            delivery.gaps += subscriber.gaps.load(Ordering::Relaxed);
            let arrivals = subscriber.arrivals.lock().expect("arrivals lock");
            let mut seen = HashSet::with_capacity(arrivals.len());
            for &(id, arrived) in arrivals.iter() {
                if !seen.insert(id) {
                    delivery.duplicates += 1;
                } else if let Some(&at) = committed.get(&id).filter(|&&at| at >= from && at < to) {
                    delivery.latencies.push(arrived.saturating_duration_since(at));
                }
            }
            delivery.missing += committed.keys().filter(|id| !seen.contains(id)).count();
        }
        delivery.latencies.sort();
        delivery
    }

    fn percentile(&self, q: f64) -> Option<Duration> {
        percentile(&self.latencies, q)
    }
}

/// The q-quantile of sorted samples.
fn percentile(sorted: &[Duration], q: f64) -> Option<Duration> {
    let n = sorted.len();
    (n > 0).then(|| sorted[((n - 1) as f64 * q).round() as usize])
}

impl Delivery {
    fn insert_percentile(&self, q: f64) -> Option<Duration> {
        percentile(&self.inserts, q)
    }
}

// ---------------------------------------------------------------------------------------------
// Measurements.

/// Samples `pg_stat_activity` every 10 ms until `stop`: backends of the bench database waiting on
/// a lock (the stream row's FOR UPDATE shows as `Lock`/`transactionid` or `Lock`/`tuple`).
async fn sample_locks(mut conn: PgConnection, db: String, probe: i32, stop: Arc<AtomicBool>) -> (PgConnection, Locks) {
    let mut locks = Locks { pid: backend_pid(&mut conn).await, ..Locks::default() };
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !stop.load(Ordering::Acquire) {
        tick.tick().await;
        let row = sqlx::query(
            "select count(*) filter (where wait_event_type = 'Lock') as waiting, \
                    count(*) filter (where wait_event_type = 'Lock' and query like '%livegate.advance%') as advance, \
                    count(*) filter (where wait_event_type = 'Lock' and query like '%livegate.prune%') as prune, \
                    count(*) filter (where state = 'active') as active, \
                    count(*) filter (where wait_event in ('WALWrite', 'WALSync')) as wal \
             from pg_stat_activity where datname = $1 and pid <> $2",
        )
        .bind(&db)
        .bind(probe)
        .fetch_one(&mut conn)
        .await
        .expect("sample pg_stat_activity");
        let get = |name: &str| row.try_get::<i64, _>(name).expect("a count");
        locks.samples += 1;
        locks.with_waiter += u64::from(get("waiting") > 0);
        locks.waiters += get("waiting") as u64;
        locks.advance_waiters += get("advance") as u64;
        locks.prune_waiters += get("prune") as u64;
        locks.active += get("active") as u64;
        locks.wal += get("wal") as u64;
    }
    (conn, locks)
}

#[derive(Debug, Default, Clone, Copy)]
struct Locks {
    /// The sampler's own backend.
    pid: i32,
    samples: u64,
    with_waiter: u64,
    waiters: u64,
    advance_waiters: u64,
    prune_waiters: u64,
    active: u64,
    /// Backends waiting for the WAL to be written or flushed (LWLock WALWrite, IO WALSync/WALWrite).
    wal: u64,
}

/// Clock ticks per second and cores, for /proc.
struct Machine {
    ticks: f64,
    cores: usize,
}

impl Machine {
    fn new() -> Machine {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
        Machine { ticks: if ticks > 0 { ticks as f64 } else { 100.0 }, cores }
    }
}

/// One process's /proc/<pid>/stat: what a CPU account needs.
#[derive(Debug, Clone)]
struct ProcStat {
    comm: String,
    ppid: i32,
    start: u64,
    /// utime + stime, in ticks.
    cpu: u64,
    /// cutime + cstime: reaped children, in ticks.
    children: u64,
}

fn proc_stat(pid: &str) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (open, close) = (text.find('(')?, text.rfind(')')?);
    let comm = text[open + 1..close].to_string();
    // Fields from the third (state) on: ppid is the 4th, utime..cstime the 14th..17th, starttime the 22nd.
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let field = |n: usize| rest.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(ProcStat {
        comm,
        ppid: rest.get(1)?.parse().ok()?,
        start: field(22)?,
        cpu: field(14)? + field(15)?,
        children: field(16)? + field(17)?,
    })
}

/// Everything read at one end of the window.
struct Snapshot {
    at: Instant,
    /// Every `postgres` process, by pid.
    postgres: HashMap<i32, ProcStat>,
    /// cutime + cstime of the postmaster(s): CPU of children that exited.
    reaped: u64,
    gateways: u64,
    bench: u64,
    /// /proc/stat: busy (user+nice+system+irq+softirq) and steal, in ticks, all cores.
    machine_busy: u64,
    machine_steal: u64,
    /// pid → (database, backend_type) from pg_stat_activity.
    backends: HashMap<i32, (Option<String>, String)>,
    xact: i64,
    rows_read: i64,
    advance_calls: i64,
    prune_calls: i64,
}

impl Snapshot {
    async fn take(probe: &mut PgConnection, db: &str, gateway_pids: &[i32]) -> Snapshot {
        let at = Instant::now();
        let mut postgres = HashMap::new();
        for entry in std::fs::read_dir("/proc").expect("read /proc").filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let (Ok(pid), Some(stat)) = (name.parse::<i32>(), proc_stat(&name)) {
                if stat.comm == "postgres" {
                    postgres.insert(pid, stat);
                }
            }
        }
        let reaped = postgres.values().filter(|p| !postgres.contains_key(&p.ppid)).map(|p| p.children).sum();
        let cpu_of = |pid: i32| proc_stat(&pid.to_string()).map_or(0, |p| p.cpu);
        let gateways = gateway_pids.iter().map(|&pid| cpu_of(pid)).sum();
        let bench = proc_stat("self").map_or(0, |p| p.cpu);
        let (machine_busy, machine_steal) = machine_times();
        let rows = sqlx::query("select pid, datname::text, coalesce(backend_type, '') from pg_stat_activity")
            .fetch_all(&mut *probe)
            .await
            .expect("read pg_stat_activity");
        let backends = rows.iter().map(|r| (r.get::<i32, _>(0), (r.get(1), r.get(2)))).collect();
        let stats = sqlx::query(
            "select xact_commit + xact_rollback, tup_returned + tup_fetched, \
                    (select coalesce(sum(calls), 0)::int8 from pg_stat_user_functions where funcname = 'advance'), \
                    (select coalesce(sum(calls), 0)::int8 from pg_stat_user_functions where funcname = 'prune') \
             from pg_stat_database where datname = $1",
        )
        .bind(db)
        .fetch_one(&mut *probe)
        .await
        .expect("read pg_stat_database");
        Snapshot {
            at,
            postgres,
            reaped,
            gateways,
            bench,
            machine_busy,
            machine_steal,
            backends,
            xact: stats.get(0),
            rows_read: stats.get(1),
            advance_calls: stats.get(2),
            prune_calls: stats.get(3),
        }
    }
}

fn machine_times() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").expect("read /proc/stat");
    let cpu: Vec<u64> = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .expect("the cpu line of /proc/stat")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let at = |i: usize| cpu.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    (at(0) + at(1) + at(2) + at(5) + at(6), at(7))
}

/// CPU over the window, in seconds.
#[derive(Debug, Default, Clone, Copy)]
struct CpuSplit {
    /// All of PostgreSQL, less the bench's own probe connections.
    postgres: f64,
    /// Client backends of the bench database other than the writer: the gateways' connections.
    gateway_backends: f64,
    writer: f64,
    /// Client backends of other databases (someone else's tests: a disturbance).
    other_databases: f64,
    /// The gateway processes themselves.
    gateways: f64,
    /// This bench: the writer's client, the subscribers, the probes.
    bench: f64,
    /// Everything the machine ran that is none of PostgreSQL, the gateways and this bench.
    elsewhere: f64,
    steal: f64,
}

impl CpuSplit {
    fn between(start: &Snapshot, end: &Snapshot, db: &str, writer: i32, own: &[i32], machine: &Machine) -> CpuSplit {
        let secs = |ticks: i64| ticks as f64 / machine.ticks;
        let delta = |pid: &i32, now: &ProcStat| {
            let before = start.postgres.get(pid).filter(|p| p.start == now.start).map_or(0, |p| p.cpu);
            now.cpu.saturating_sub(before) as i64
        };
        // Live at the end, plus what exited (reaped by the postmaster), less the start.
        let total = end.postgres.values().map(|p| p.cpu as i64).sum::<i64>() + end.reaped as i64
            - start.postgres.values().map(|p| p.cpu as i64).sum::<i64>()
            - start.reaped as i64;
        let mut split = CpuSplit::default();
        let mut excluded = 0;
        for (pid, now) in &end.postgres {
            let ticks = delta(pid, now);
            let backend = end.backends.get(pid).or_else(|| start.backends.get(pid));
            match backend {
                _ if own.contains(pid) => excluded += ticks,
                _ if *pid == writer => split.writer += secs(ticks),
                Some((Some(name), kind)) if kind == "client backend" && name == db => {
                    split.gateway_backends += secs(ticks);
                }
                Some((Some(_), kind)) if kind == "client backend" => split.other_databases += secs(ticks),
                _ => {}
            }
        }
        split.postgres = secs(total - excluded);
        split.gateways = secs(end.gateways as i64 - start.gateways as i64);
        split.bench = secs(end.bench as i64 - start.bench as i64);
        let busy = secs(end.machine_busy as i64 - start.machine_busy as i64);
        split.elsewhere = (busy - secs(total) - split.gateways - split.bench).max(0.0);
        split.steal = secs(end.machine_steal as i64 - start.machine_steal as i64);
        split
    }
}

// ---------------------------------------------------------------------------------------------
// Results.

struct RunResult {
    n: usize,
    secs: f64,
    /// Changes committed in the window (as the writer saw the acknowledgements).
    changes: f64,
    cpu: CpuSplit,
    xact: f64,
    rows_read: f64,
    advance_calls: f64,
    prune_calls: i64,
    locks: Locks,
    delivery: Delivery,
    new_epoch: bool,
    /// Warnings and errors in the gateways' logs, and lines about epochs.
    warnings: Vec<String>,
    /// Runs made for this N (see [`least_disturbed`]).
    attempts: usize,
}

impl RunResult {
    #[allow(clippy::too_many_arguments)] // the parts of one run, gathered in one place
    fn new(
        n: usize,
        start: &Snapshot,
        end: &Snapshot,
        cpu: CpuSplit,
        locks: Locks,
        delivery: Delivery,
        new_epoch: bool,
        logs: &[String],
    ) -> RunResult {
        let secs = (end.at - start.at).as_secs_f64();
        let warnings = logs
            .iter()
            .flat_map(|log| log.lines())
            .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("epoch"))
            .map(str::to_string)
            .collect();
        RunResult {
            n,
            secs,
            changes: delivery.in_window as f64,
            cpu,
            xact: (end.xact - start.xact) as f64,
            rows_read: (end.rows_read - start.rows_read) as f64,
            advance_calls: (end.advance_calls - start.advance_calls) as f64,
            prune_calls: end.prune_calls - start.prune_calls,
            locks,
            delivery,
            new_epoch,
            warnings,
            attempts: 1,
        }
    }

    fn pct(&self, cpu_secs: f64) -> f64 {
        100.0 * cpu_secs / self.secs
    }

    /// PostgreSQL CPU, less other databases' backends: % of one core.
    fn pg_pct(&self) -> f64 {
        self.pct(self.cpu.postgres - self.cpu.other_databases)
    }

    fn ms_per_1000(&self) -> f64 {
        1000.0 * (self.cpu.postgres - self.cpu.other_databases) / (self.changes / 1000.0)
    }
}

fn print_tables(results: &[RunResult]) {
    let ms = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.1}", d.as_secs_f64() * 1000.0));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{:>4} {:>8} {:>9} {:>9} {:>10} {:>12} {:>8} {:>9} {:>10} {:>9} {:>8} {:>7} {:>7} {:>8} {:>8}",
        "N",
        "rows/s",
        "PG %core",
        "ms/1k",
        "+%core/gw",
        "+ms/1k/gw",
        "xact/s",
        "advance/s",
        "read/chg",
        "lockwait",
        "waiters",
        "p50 ms",
        "p99 ms",
        "ins p50",
        "ins p99"
    );
    let mut previous: Option<&RunResult> = None;
    for r in results {
        let step = previous.filter(|p| p.n != r.n).map(|p| {
            let gateways = r.n as f64 - p.n as f64;
            ((r.pg_pct() - p.pg_pct()) / gateways, (r.ms_per_1000() - p.ms_per_1000()) / gateways)
        });
        let samples = r.locks.samples.max(1) as f64;
        let _ = writeln!(
            out,
            "{:>4} {:>8.0} {:>9.1} {:>9.0} {:>10} {:>12} {:>8.0} {:>9.0} {:>10.1} {:>8.1}% {:>8.3} {:>7} {:>7} {:>8} {:>8}",
            r.n,
            r.changes / r.secs,
            r.pg_pct(),
            r.ms_per_1000(),
            step.map_or("-".into(), |s| format!("{:.1}", s.0)),
            step.map_or("-".into(), |s| format!("{:.0}", s.1)),
            r.xact / r.secs,
            r.advance_calls / r.secs,
            r.rows_read / r.changes,
            100.0 * r.locks.with_waiter as f64 / samples,
            r.locks.waiters as f64 / samples,
            ms(r.delivery.percentile(0.5)),
            ms(r.delivery.percentile(0.99)),
            ms(r.delivery.insert_percentile(0.5)),
            ms(r.delivery.insert_percentile(0.99)),
        );
        previous = Some(r);
    }
    if let Some((a, b)) = fit(results.iter().map(|r| (r.n as f64, r.pg_pct()))) {
        let (_, per_1000) = fit(results.iter().map(|r| (r.n as f64, r.ms_per_1000()))).unwrap_or_default();
        let _ = writeln!(
            out,
            "least squares: PG CPU = {a:.1} + {b:.1} x N % of one core ({per_1000:.0} ms per 1000 changes per gateway)"
        );
    }
    print_details(&mut out, results);
    print!("{out}");
}

/// y = a + b·x by least squares, over at least two distinct x.
fn fit(points: impl Iterator<Item = (f64, f64)>) -> Option<(f64, f64)> {
    let points: Vec<(f64, f64)> = points.collect();
    let n = points.len() as f64;
    let (sx, sy) = points.iter().fold((0.0, 0.0), |(sx, sy), (x, y)| (sx + x, sy + y));
    let (mx, my) = (sx / n, sy / n);
    let sxx: f64 = points.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
    let sxy: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    (sxx > 0.0).then(|| (my - sxy / sxx * mx, sxy / sxx))
}

fn print_details(out: &mut String, results: &[RunResult]) {
    let _ = writeln!(
        out,
        "\n{:>4} {:>10} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>7} {:>11} {:>8} {:>7} {:>7} {:>7} {:>5} {:>5} {:>5}",
        "N",
        "gw-backends",
        "writer",
        "pg-rest",
        "gw-procs",
        "bench",
        "other-dbs",
        "elsewhere",
        "steal",
        "advance-wait",
        "wal-wait",
        "prunes",
        "active",
        "missing",
        "dups",
        "gaps",
        "runs"
    );
    for r in results {
        let samples = r.locks.samples.max(1) as f64;
        let c = &r.cpu;
        let rest = c.postgres - c.other_databases - c.gateway_backends - c.writer;
        let _ = writeln!(
            out,
            "{:>4} {:>10.1}% {:>8.1}% {:>8.1}% {:>8.1}% {:>8.1}% {:>9.1}% {:>8.1}% {:>6.1}% {:>11.3} {:>8.3} {:>7} {:>7.2} {:>7} {:>5} {:>5} {:>5}{}",
            r.n,
            r.pct(c.gateway_backends),
            r.pct(c.writer),
            r.pct(rest),
            r.pct(c.gateways),
            r.pct(c.bench),
            r.pct(c.other_databases),
            r.pct(c.elsewhere),
            r.pct(c.steal),
            r.locks.advance_waiters as f64 / samples,
            r.locks.wal as f64 / samples,
            r.prune_calls,
            r.locks.active as f64 / samples,
            r.delivery.missing,
            r.delivery.duplicates,
            r.delivery.gaps,
            r.attempts,
            if r.new_epoch { "  NEW EPOCH" } else { "" },
        );
    }
    let _ = writeln!(
        out,
        "\nrows/s: committed in the window (below LIVEGATE_BENCH_RATE: the writer could not keep up). \
         CPU in % of one core over the window. PG %core: all postgres processes less the bench's probes \
         and other databases' backends;\nms/1k: PG CPU ms per 1000 changes; +…/gw: increment per added \
         gateway from the previous row; lockwait: share of 10 ms samples\nwith a bench-db backend waiting \
         on a lock; waiters/advance-wait: mean waiting backends (all / in livegate.advance); wal-wait:\n\
         mean backends waiting to write or flush WAL; p50/p99: commit acknowledged -> SSE event, over \
         every subscriber; ins: the writer's INSERT round trip. pg-rest: postmaster, WAL writer, \
         checkpointer, autovacuum, exited backends.\n\
         elsewhere: machine CPU outside PostgreSQL, the \
         gateways and this bench (other builds/tests); above 20% a run is disturbed and repeated \
         (runs: how many were made,\nthe least disturbed is shown; LIVEGATE_BENCH_ATTEMPTS, default 3)."
    );
    for r in results.iter().filter(|r| !r.warnings.is_empty()) {
        let _ = writeln!(out, "N={}: gateway log lines with WARN/ERROR/epoch:", r.n);
        for line in r.warnings.iter().take(10) {
            let _ = writeln!(out, "  {line}");
        }
    }
}
