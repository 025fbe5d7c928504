//! The change feed: the only module that knows LISTEN/NOTIFY and the change table's SQL.
//!
//! Three tasks. The *listener* holds one dedicated connection that LISTENs on `livegate`; each
//! notification, and every (re)connection, rings an in-process doorbell. The *reader* wakes on
//! the doorbell or every `poll_interval`, assigns stream positions to newly committed changes
//! (`livegate.advance`), reads everything after its cursor in position order and hands it to
//! the hub. Delivery only ever comes from that ordered read, so after any gap (lost listener,
//! database restart) the catch-up read precedes anything newer, and a lost notification only
//! delays a change until the next poll. The *pruner* records this gateway's position in
//! `livegate.readers` and deletes history outside retention, never past the lowest position a
//! live gateway recorded, so a lagging gateway keeps what it has not read.
//!
//! [`History`] reads the retained changes for clients that resume from an older position. The
//! stream's epoch is checked on every read: when history was lost (a truncate, a restored
//! database) the hub starts a new epoch and every position from the old one is refused.

mod catalog;
mod rows;
mod snapshot;

pub use catalog::Catalog;
pub use rows::{to_parse_object, TableInfo};
pub use snapshot::{narrowing, Narrowing, Snapshots};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::Row;
use tokio::sync::{Mutex, Notify};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::catchup::{HistoryBatch, HistoryError, HistorySource};
use crate::database::DatabaseError;
use crate::hub::Hub;
use crate::position::Position;
use crate::telemetry::Metrics;
use catalog::CHANGE_COLUMNS;

/// The NOTIFY channel the capture trigger rings.
const CHANNEL: &str = "livegate";
/// `application_name` of the listener's connection, so operators (and tests) can find it.
pub const LISTENER_APPLICATION_NAME: &str = "livegate-listener";

/// Starts watching `table` (idempotent). Fails when the table does not exist or has no primary key.
pub async fn watch(pool: &PgPool, table: &str) -> Result<(), DatabaseError> {
    sqlx::query("select livegate.watch($1::regclass)")
        .bind(table)
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(|e| DatabaseError::new(format!("cannot watch table {table}: {}", database_message(&e))))
}

/// Stops watching `table` (its capture trigger is removed; history it left stays).
pub async fn unwatch(pool: &PgPool, table: &str) -> Result<(), DatabaseError> {
    sqlx::query("select livegate.unwatch($1::regclass)")
        .bind(table)
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(|e| DatabaseError::new(format!("cannot unwatch table {table}: {}", database_message(&e))))
}

fn database_message(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => db.message().to_string(),
        other => other.to_string(),
    }
}

/// The `[feed]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeedConfig {
    /// Tables watched at start-up (`schema.table` or `table` for `public`).
    pub tables: Vec<String>,
    /// Class name per table, when it should differ from the table name.
    pub aliases: BTreeMap<String, String>,
    /// The change table is read at least this often even when no NOTIFY arrives.
    pub poll_interval_ms: u64,
    /// Rows read from the change table per query.
    pub batch_size: u32,
    /// First and largest delay between attempts to re-establish a lost listener.
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
}

impl Default for FeedConfig {
    fn default() -> Self {
        FeedConfig {
            tables: Vec::new(),
            aliases: BTreeMap::new(),
            poll_interval_ms: 500,
            batch_size: 1_000,
            reconnect_min_ms: 100,
            reconnect_max_ms: 5_000,
        }
    }
}

/// Retention of the change table: what clients can resume from.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Changes older than this are pruned, in seconds; 0 keeps changes regardless of age.
    pub max_age_secs: u64,
    /// At most this many of the newest changes are kept; 0 keeps any number.
    pub max_changes: u64,
    /// How often the pruner runs, in milliseconds.
    pub prune_interval_ms: u64,
    /// Rows deleted per pruning transaction (short transactions keep the table available).
    pub prune_batch: u32,
    /// Database connections reserved for replaying history to resuming clients: resumes queue
    /// for them, and never take the connections the feed and token lookups use.
    pub replay_connections: u32,
    /// With several gateways, no pruner deletes changes a gateway that recorded its position
    /// within this many seconds has not read yet (each records it every `prune_interval_ms`).
    pub reader_timeout_secs: u64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            max_age_secs: 24 * 3600,
            max_changes: 1_000_000,
            prune_interval_ms: 60_000,
            prune_batch: 5_000,
            replay_connections: 2,
            reader_timeout_secs: 600,
        }
    }
}

/// Where the feed stands, for `/ready`, `/health` and `/metrics`: whether its listener holds a
/// LISTEN connection and its last read of the change table succeeded, the positions it
/// published and saw sequenced, the floor of history, how far behind it is, and how full
/// PostgreSQL's notification queue was when last sampled.
#[derive(Debug, Default)]
pub struct FeedStatus {
    listening: AtomicBool,
    reading: AtomicBool,
    position: AtomicI64,
    head: AtomicI64,
    floor: AtomicI64,
    /// Capture time, in µs since the Unix epoch, of the oldest change not yet published; 0 when
    /// caught up.
    oldest_unpublished_us: AtomicI64,
    /// `pg_notification_queue_usage()`, as `f64` bits.
    notify_queue_usage: AtomicU64,
}

impl FeedStatus {
    pub fn listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    pub fn reading(&self) -> bool {
        self.reading.load(Ordering::Acquire)
    }

    /// The last position handed to the hub.
    pub fn position(&self) -> i64 {
        self.position.load(Ordering::Acquire)
    }

    /// The last position the stream sequenced, as last read.
    pub fn head(&self) -> i64 {
        self.head.load(Ordering::Acquire)
    }

    /// Positions at or below this are pruned.
    pub fn floor(&self) -> i64 {
        self.floor.load(Ordering::Acquire)
    }

    /// From the capture of the oldest unpublished change to now (zero when caught up). Capture
    /// times come from the database's clock, so a skew between it and this host's shows here.
    pub fn lag(&self) -> Duration {
        let oldest = self.oldest_unpublished_us.load(Ordering::Acquire);
        if oldest == 0 {
            return Duration::ZERO;
        }
        Duration::from_micros(u64::try_from(now_us() - oldest).unwrap_or(0))
    }

    pub fn notify_queue_usage(&self) -> f64 {
        f64::from_bits(self.notify_queue_usage.load(Ordering::Acquire))
    }

    fn stream(&self, stream: StreamState) {
        self.head.store(stream.head, Ordering::Release);
        self.floor.store(stream.floor, Ordering::Release);
    }
}

/// Microseconds since the Unix epoch, on this host's clock.
fn now_us() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
}

/// How often `pg_notification_queue_usage()` is sampled.
const NOTIFY_QUEUE_SAMPLE: Duration = Duration::from_secs(5);

/// A running feed. Dropping it stops its tasks.
pub struct Feed {
    status: Arc<FeedStatus>,
    history: Arc<History>,
    tasks: Vec<JoinHandle<()>>,
}

impl Feed {
    /// Starts delivering every change committed from now on; earlier ones stay in [`History`].
    pub async fn start(
        pool: PgPool,
        history_pool: PgPool,
        listener_options: PgConnectOptions,
        hub: Arc<Hub>,
        config: &FeedConfig,
        retention: &HistoryConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Feed, DatabaseError> {
        let stream = StreamState::check_origin(&pool)
            .await
            .map_err(|e| DatabaseError::new(format!("cannot read the change stream: {e}")))?;
        hub.start_epoch(Position::new(stream.epoch, stream.head));
        let status = Arc::new(FeedStatus { reading: AtomicBool::new(true), ..FeedStatus::default() });
        status.position.store(stream.head, Ordering::Release);
        status.stream(stream);
        let doorbell = Arc::new(Notify::new());
        let backoff = Backoff::new(config);
        let listener = tokio::spawn(listen(
            listener_options.application_name(LISTENER_APPLICATION_NAME),
            doorbell.clone(),
            backoff.clone(),
            status.clone(),
            metrics.clone(),
        ));
        let reader = Reader {
            pool: pool.clone(),
            hub,
            catalog: Catalog::new(config.aliases.clone()),
            epoch: stream.epoch,
            cursor: stream.head,
            batch_size: config.batch_size,
            check_origin: false,
            status: status.clone(),
            metrics,
        };
        let reader = tokio::spawn(reader.run(doorbell, Duration::from_millis(config.poll_interval_ms), backoff));
        let pruner = tokio::spawn(prune(pool.clone(), retention.clone(), status.clone()));
        let sampler = tokio::spawn(sample_notify_queue(pool.clone(), status.clone()));
        let history = Arc::new(History {
            pool: history_pool,
            catalog: Mutex::new(Catalog::new(config.aliases.clone())),
            aliases: config.aliases.clone(),
            batch_size: config.batch_size,
        });
        Ok(Feed { status, history, tasks: vec![listener, reader, pruner, sampler] })
    }

    /// Where the feed stands, shared for reporting.
    pub fn status(&self) -> Arc<FeedStatus> {
        self.status.clone()
    }

    /// Retained history, for clients that resume.
    pub fn history(&self) -> Arc<History> {
        self.history.clone()
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The stream row: epoch, last assigned position, and the floor below which history is gone.
#[derive(Debug, Clone, Copy)]
struct StreamState {
    epoch: Uuid,
    head: i64,
    floor: i64,
}

impl StreamState {
    /// Reads the stream row, starting a new epoch first if the database is not the one the
    /// history was written in (restored from a backup).
    async fn check_origin(pool: &PgPool) -> Result<StreamState, sqlx::Error> {
        let row = sqlx::query("select epoch::text as epoch, head, floor from livegate.check_origin()")
            .fetch_one(pool)
            .await?;
        StreamState::from_row(&row)
    }

    fn from_row(row: &PgRow) -> Result<StreamState, sqlx::Error> {
        let epoch: String = row.try_get("epoch")?;
        let epoch = Uuid::parse_str(&epoch).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        Ok(StreamState { epoch, head: row.try_get("head")?, floor: row.try_get("floor")? })
    }
}

/// Exponential backoff with jitter between attempts to reach the database.
#[derive(Debug, Clone)]
struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    fn new(config: &FeedConfig) -> Backoff {
        let min = Duration::from_millis(config.reconnect_min_ms);
        Backoff { min, max: Duration::from_millis(config.reconnect_max_ms), current: min }
    }

    fn reset(&mut self) {
        self.current = self.min;
    }

    async fn wait(&mut self) {
        // Up to +50% jitter so that many gateways do not reconnect in lockstep.
        let jitter = (uuid::Uuid::new_v4().as_u128() % 500) as u32;
        tokio::time::sleep(self.current + self.current * jitter / 1000).await;
        self.current = (self.current * 2).min(self.max);
    }
}

async fn listen(
    options: PgConnectOptions,
    doorbell: Arc<Notify>,
    mut backoff: Backoff,
    status: Arc<FeedStatus>,
    metrics: Arc<Metrics>,
) {
    let pool = PgPoolOptions::new().max_connections(1).min_connections(0).connect_lazy_with(options);
    let mut connected_before = false;
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, "feed listener cannot connect; retrying");
                backoff.wait().await;
                continue;
            }
        };
        if let Err(e) = listener.listen(CHANNEL).await {
            tracing::warn!(error = %e, "feed listener cannot LISTEN; retrying");
            drop(listener);
            backoff.wait().await;
            continue;
        }
        if connected_before {
            metrics.database_reconnected();
            tracing::info!("feed listener reconnected");
        } else {
            tracing::info!("feed listener connected");
        }
        connected_before = true;
        status.listening.store(true, Ordering::Release);
        // Anything committed while nobody listened is found by this catch-up read.
        doorbell.notify_one();
        backoff.reset();
        loop {
            match listener.try_recv().await {
                Ok(Some(_)) => doorbell.notify_one(),
                Ok(None) => {
                    tracing::warn!("feed listener lost its connection; catching up and reconnecting");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "feed listener failed; catching up and reconnecting");
                    break;
                }
            }
        }
        status.listening.store(false, Ordering::Release);
        doorbell.notify_one();
        drop(listener);
        backoff.wait().await;
    }
}

struct Reader {
    pool: PgPool,
    hub: Arc<Hub>,
    catalog: Catalog,
    epoch: Uuid,
    cursor: i64,
    batch_size: u32,
    /// Set after losing the database: it may have come back restored from a backup.
    check_origin: bool,
    status: Arc<FeedStatus>,
    metrics: Arc<Metrics>,
}

impl Reader {
    async fn run(mut self, doorbell: Arc<Notify>, poll_interval: Duration, mut backoff: Backoff) {
        loop {
            tokio::select! {
                _ = doorbell.notified() => {}
                _ = tokio::time::sleep(poll_interval) => {}
            }
            loop {
                let read = self.read_batch().await;
                self.status.reading.store(read.is_ok(), Ordering::Release);
                match read {
                    Ok(read) if read >= self.batch_size as usize => continue,
                    Ok(_) => {
                        // Everything sequenced when the batch was read is published.
                        self.status.oldest_unpublished_us.store(0, Ordering::Release);
                        backoff.reset();
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, cursor = self.cursor, "reading the change table failed; retrying");
                        self.check_origin = true;
                        backoff.wait().await;
                    }
                }
            }
        }
    }

    /// Sequences newly committed changes and publishes one batch after the cursor.
    async fn read_batch(&mut self) -> Result<usize, sqlx::Error> {
        if self.check_origin {
            StreamState::check_origin(&self.pool).await?;
            self.check_origin = false;
        }
        let row = sqlx::query("select epoch::text as epoch, head, floor from livegate.advance($1)")
            .bind(self.batch_size as i32)
            .fetch_one(&self.pool)
            .await?;
        let stream = StreamState::from_row(&row)?;
        self.status.stream(stream);
        match next_step(self.epoch, self.cursor, stream) {
            Step::Read => {}
            Step::Idle => return Ok(0),
            Step::FollowEpoch => {
                tracing::warn!(epoch = %stream.epoch, head = stream.head, "the change stream started a new epoch");
                self.epoch = stream.epoch;
                self.advance_to(stream.head);
                self.hub.start_epoch(Position::new(stream.epoch, stream.head));
                return Ok(0);
            }
            Step::StartEpoch(why) => {
                tracing::warn!(
                    floor = stream.floor,
                    head = stream.head,
                    cursor = self.cursor,
                    "{why}; starting a new epoch"
                );
                sqlx::query("select livegate.new_epoch()").execute(&self.pool).await?;
                return Ok(0);
            }
        }
        let rows = sqlx::query(&format!(
            "select {CHANGE_COLUMNS} from livegate.changes where pos > $1 and pos <= $2 order by pos limit $3"
        ))
        .bind(self.cursor)
        .bind(stream.head)
        .bind(i64::from(self.batch_size))
        .fetch_all(&self.pool)
        .await?;
        let count = rows.len();
        for row in rows {
            let change = self.catalog.change(&self.pool, &row).await?;
            self.status.oldest_unpublished_us.store(change.captured_us, Ordering::Release);
            self.hub.publish(&change);
            self.metrics.published((now_us() - change.captured_us) as f64 / 1e6);
            self.advance_to(change.pos);
        }
        Ok(count)
    }

    fn advance_to(&mut self, pos: i64) {
        self.cursor = pos;
        self.status.position.store(pos, Ordering::Release);
    }
}

/// What the reader does once `livegate.advance` has told it where the stream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Changes after the cursor are there: read and publish them.
    Read,
    /// Caught up.
    Idle,
    /// The stream started a new epoch (history truncated or restored): nothing before its head
    /// can be trusted; continue from there, and tell the subscribers.
    FollowEpoch,
    /// The stream cannot be continued in this epoch; start a new one (the next read follows it).
    StartEpoch(&'static str),
}

/// The reader's decision, from its epoch and cursor and the stream's state. Pure.
fn next_step(epoch: Uuid, cursor: i64, stream: StreamState) -> Step {
    if stream.epoch != epoch {
        Step::FollowEpoch
    } else if stream.floor > cursor {
        // Another gateway pruned changes this one has not read yet: they are lost to its
        // clients, who must be told rather than silently skip them.
        Step::StartEpoch("unread changes were pruned")
    } else if stream.head < cursor {
        // Positions went backwards in the same epoch: the database was rolled back under us.
        // A new epoch makes sure no position is ever reused with other content.
        Step::StartEpoch("the change stream went backwards")
    } else if stream.head == cursor {
        Step::Idle
    } else {
        Step::Read
    }
}

/// Retained changes, read for clients that resume from an older position.
pub struct History {
    /// A pool of its own, so that replays never starve the feed or token lookups.
    pool: PgPool,
    catalog: Mutex<Catalog>,
    aliases: BTreeMap<String, String>,
    batch_size: u32,
}

impl History {
    /// The tables whose changes are `class`'s, as the filter of a history read: those aliased
    /// to it (`schema.table`), and those named so that are not aliased to anything else.
    fn tables_of(&self, class: &str) -> (Vec<String>, Vec<String>) {
        let qualified = |key: &String| if key.contains('.') { key.clone() } else { format!("public.{key}") };
        let aliased_to_class = self.aliases.iter().filter(|(_, alias)| *alias == class).map(|(k, _)| qualified(k));
        (aliased_to_class.collect(), self.aliases.keys().map(qualified).collect())
    }

    async fn read_batch(&self, after: i64, upto: i64, class: &str) -> Result<HistoryBatch, sqlx::Error> {
        let (aliased_to_class, aliased) = self.tables_of(class);
        // Only the class's own changes leave the database: a resume on a quiet table next to
        // a busy one reads (and decodes) nothing of the busy one.
        let rows = sqlx::query(&format!(
            "select s.epoch::text as epoch, s.head, s.floor, c.* from livegate.stream s \
             left join lateral (select {CHANGE_COLUMNS} from livegate.changes \
                                where pos > $1 and pos <= $2 \
                                  and ((table_schema || '.' || table_name) = any($4) \
                                       or (table_name = $5 and (table_schema || '.' || table_name) <> all($6))) \
                                order by pos limit $3) c on true"
        ))
        .bind(after)
        .bind(upto)
        .bind(i64::from(self.batch_size))
        .bind(aliased_to_class)
        .bind(class)
        .bind(aliased)
        .fetch_all(&self.pool)
        .await?;
        let Some(first) = rows.first() else {
            return Err(sqlx::Error::RowNotFound);
        };
        let stream = StreamState::from_row(first)?;
        let mut catalog = self.catalog.lock().await;
        let mut changes = Vec::with_capacity(rows.len());
        for row in &rows {
            if row.try_get::<Option<i64>, _>("pos")?.is_some() {
                changes.push(Arc::new(catalog.change(&self.pool, row).await?));
            }
        }
        let full = changes.len() >= self.batch_size as usize;
        let reached = match changes.last() {
            Some(last) if full => last.pos,
            _ => upto,
        };
        Ok(HistoryBatch { epoch: stream.epoch, floor: stream.floor, changes, reached })
    }
}

/// Changes with `after < pos <= upto`, at most one batch; the epoch and floor come from the same
/// statement, so if `floor <= after` the batch is complete however the pruner races.
impl HistorySource for History {
    fn read<'a>(&'a self, after: i64, upto: i64, class: &'a str) -> BoxFuture<'a, Result<HistoryBatch, HistoryError>> {
        Box::pin(async move { self.read_batch(after, upto, class).await.map_err(Into::into) })
    }
}

/// Every `prune_interval_ms`: records where this gateway has read up to (`livegate.readers`),
/// then deletes history outside retention, one short transaction per batch, never past the
/// lowest position any live gateway recorded.
async fn prune(pool: PgPool, retention: HistoryConfig, status: Arc<FeedStatus>) {
    let reader = Uuid::new_v4();
    let pruning = retention.max_age_secs > 0 || retention.max_changes > 0;
    let max_age = (retention.max_age_secs > 0).then(|| format!("{} seconds", retention.max_age_secs));
    let keep = (retention.max_changes > 0).then(|| i64::try_from(retention.max_changes).unwrap_or(i64::MAX));
    let timeout = format!("{} seconds", retention.reader_timeout_secs);
    let mut interval = tokio::time::interval(Duration::from_millis(retention.prune_interval_ms));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        // Even a gateway that does not prune records its position: the others' pruners need it.
        let upto = match low_water(&pool, reader, status.position(), &timeout).await {
            Ok(upto) => upto,
            Err(e) => {
                tracing::warn!(error = %e, "cannot record this gateway's position; retrying later");
                continue;
            }
        };
        if !pruning {
            continue;
        }
        loop {
            let deleted = sqlx::query_scalar::<_, i64>("select livegate.prune($1::interval, $2, $3, $4)")
                .bind(max_age.as_deref())
                .bind(keep)
                .bind(retention.prune_batch as i32)
                .bind(upto)
                .fetch_one(&pool)
                .await;
            match deleted {
                Ok(n) if n >= i64::from(retention.prune_batch) => tokio::task::yield_now().await,
                Ok(n) => {
                    if n > 0 {
                        tracing::debug!(deleted = n, "pruned history");
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pruning history failed; retrying later");
                    break;
                }
            }
        }
    }
}

/// Records `position` as this gateway's, forgets gateways gone for ten timeouts, and returns the
/// lowest position of the gateways seen within the timeout (this one's included): what pruning
/// may reach.
async fn low_water(pool: &PgPool, reader: Uuid, position: i64, timeout: &str) -> Result<i64, sqlx::Error> {
    sqlx::query(
        "insert into livegate.readers (id, position, seen_at) values ($1::uuid, $2, now()) \
         on conflict (id) do update set position = excluded.position, seen_at = now()",
    )
    .bind(reader.to_string())
    .bind(position)
    .execute(pool)
    .await?;
    sqlx::query("delete from livegate.readers where seen_at < now() - 10 * $1::interval")
        .bind(timeout)
        .execute(pool)
        .await?;
    let lowest: Option<i64> =
        sqlx::query_scalar("select min(position) from livegate.readers where seen_at >= now() - $1::interval")
            .bind(timeout)
            .fetch_one(pool)
            .await?;
    Ok(lowest.unwrap_or(position).min(position))
}

/// Samples `pg_notification_queue_usage()`: a queue that fills up (a listener somewhere not
/// reading) makes every NOTIFY, and so every write to a watched table, fail once it is full.
async fn sample_notify_queue(pool: PgPool, status: Arc<FeedStatus>) {
    let mut interval = tokio::time::interval(NOTIFY_QUEUE_SAMPLE);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        match sqlx::query_scalar::<_, f64>("select pg_notification_queue_usage()").fetch_one(&pool).await {
            Ok(usage) => status.notify_queue_usage.store(usage.to_bits(), Ordering::Release),
            Err(e) => tracing::debug!(error = %e, "cannot sample the notification queue"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reader_follows_the_stream_state() {
        let epoch = Uuid::new_v4();
        let at = |head, floor| StreamState { epoch, head, floor };
        assert_eq!(next_step(epoch, 10, at(12, 0)), Step::Read);
        assert_eq!(next_step(epoch, 10, at(10, 10)), Step::Idle);
        assert_eq!(next_step(epoch, 10, at(9, 0)), Step::StartEpoch("the change stream went backwards"));
        assert_eq!(next_step(epoch, 10, at(20, 11)), Step::StartEpoch("unread changes were pruned"));
        let other = StreamState { epoch: Uuid::new_v4(), head: 3, floor: 0 };
        assert_eq!(next_step(epoch, 10, other), Step::FollowEpoch, "a new epoch wins over every other check");
    }
}
