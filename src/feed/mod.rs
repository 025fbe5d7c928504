//! The change feed: the only module that knows LISTEN/NOTIFY and the change table's SQL.
//!
//! Two tasks. The *listener* holds one dedicated connection that LISTENs on `livegate`; each
//! notification, and every (re)connection, rings an in-process doorbell. The *reader* wakes on
//! the doorbell or every `poll_interval`, assigns stream positions to newly committed changes
//! (`livegate.sequence`), reads everything after its cursor in position order and hands it to
//! the hub. Delivery only ever comes from that ordered read, so after any gap (lost listener,
//! database restart) the catch-up read precedes anything newer, and a lost notification only
//! delays a change until the next poll.

mod rows;

pub use rows::{to_parse_object, TableInfo};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::Row;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::config::FeedConfig;
use crate::database::DatabaseError;
use crate::hub::{Change, ChangeKind, Hub};

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
        .map_err(|e| DatabaseError(format!("cannot watch table {table}: {}", database_message(&e))))
}

fn database_message(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => db.message().to_string(),
        other => other.to_string(),
    }
}

/// A running feed. Dropping it stops both tasks.
pub struct Feed {
    position: Arc<AtomicI64>,
    tasks: Vec<JoinHandle<()>>,
}

impl Feed {
    /// Starts delivering every change committed from now on.
    pub async fn start(
        pool: PgPool,
        listener_options: PgConnectOptions,
        hub: Arc<Hub>,
        config: &FeedConfig,
    ) -> Result<Feed, DatabaseError> {
        let head: i64 = sqlx::query_scalar("select livegate.sequence(0)")
            .fetch_one(&pool)
            .await
            .map_err(|e| DatabaseError(format!("cannot read the change stream: {e}")))?;
        let position = Arc::new(AtomicI64::new(head));
        let doorbell = Arc::new(Notify::new());
        let backoff = Backoff::new(config);
        let listener = tokio::spawn(listen(
            listener_options.application_name(LISTENER_APPLICATION_NAME),
            doorbell.clone(),
            backoff.clone(),
        ));
        let reader = Reader {
            pool,
            hub,
            catalog: Catalog::new(config.aliases.clone()),
            cursor: head,
            position: position.clone(),
            batch_size: config.batch_size,
        };
        let reader = tokio::spawn(reader.run(doorbell, Duration::from_millis(config.poll_interval_ms), backoff));
        Ok(Feed { position, tasks: vec![listener, reader] })
    }

    /// The last stream position handed to the hub, shared for reporting.
    pub fn position_handle(&self) -> Arc<AtomicI64> {
        self.position.clone()
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
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

async fn listen(options: PgConnectOptions, doorbell: Arc<Notify>, mut backoff: Backoff) {
    let pool = PgPoolOptions::new().max_connections(1).min_connections(0).connect_lazy_with(options);
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
        tracing::info!("feed listener connected");
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
        doorbell.notify_one();
        drop(listener);
        backoff.wait().await;
    }
}

struct Reader {
    pool: PgPool,
    hub: Arc<Hub>,
    catalog: Catalog,
    cursor: i64,
    position: Arc<AtomicI64>,
    batch_size: u32,
}

impl Reader {
    async fn run(mut self, doorbell: Arc<Notify>, poll_interval: Duration, mut backoff: Backoff) {
        loop {
            tokio::select! {
                _ = doorbell.notified() => {}
                _ = tokio::time::sleep(poll_interval) => {}
            }
            loop {
                match self.read_batch().await {
                    Ok(read) if read >= self.batch_size as usize => continue,
                    Ok(_) => {
                        backoff.reset();
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, cursor = self.cursor, "reading the change table failed; retrying");
                        backoff.wait().await;
                    }
                }
            }
        }
    }

    /// Sequences newly committed changes and publishes one batch after the cursor.
    async fn read_batch(&mut self) -> Result<usize, sqlx::Error> {
        let head: i64 = sqlx::query_scalar("select livegate.sequence($1)")
            .bind(self.batch_size as i32)
            .fetch_one(&self.pool)
            .await?;
        if head <= self.cursor {
            return Ok(0);
        }
        let rows = sqlx::query(
            "select pos, table_schema, table_name, op, old_row, new_row from livegate.changes \
             where pos > $1 and pos <= $2 order by pos limit $3",
        )
        .bind(self.cursor)
        .bind(head)
        .bind(i64::from(self.batch_size))
        .fetch_all(&self.pool)
        .await?;
        let count = rows.len();
        for row in rows {
            let pos: i64 = row.try_get("pos")?;
            let schema: String = row.try_get("table_schema")?;
            let table: String = row.try_get("table_name")?;
            let op: String = row.try_get("op")?;
            let old: Option<Value> = row.try_get("old_row")?;
            let new: Option<Value> = row.try_get("new_row")?;
            let kind = match op.as_str() {
                "INSERT" => ChangeKind::Insert,
                "UPDATE" => ChangeKind::Update,
                _ => ChangeKind::Delete,
            };
            let (old, new) = (into_map(old), into_map(new));
            let info = self.catalog.info(&self.pool, &schema, &table, old.as_ref().or(new.as_ref())).await?;
            let change = Change {
                pos,
                class: info.class.clone(),
                kind,
                old: old.map(|row| to_parse_object(&info, row)),
                new: new.map(|row| to_parse_object(&info, row)),
            };
            self.hub.publish(&change);
            self.cursor = pos;
            self.position.store(pos, Ordering::Release);
        }
        Ok(count)
    }
}

fn into_map(value: Option<Value>) -> Option<Map<String, Value>> {
    match value {
        Some(Value::Object(map)) => Some(map),
        _ => None,
    }
}

/// Table metadata, loaded from the catalog on first sight and again when a row shows a column
/// the cached entry does not know (the table was altered).
struct Catalog {
    aliases: BTreeMap<String, String>,
    tables: HashMap<(String, String), Arc<TableInfo>>,
}

impl Catalog {
    fn new(aliases: BTreeMap<String, String>) -> Catalog {
        Catalog { aliases, tables: HashMap::new() }
    }

    async fn info(
        &mut self,
        pool: &PgPool,
        schema: &str,
        table: &str,
        sample: Option<&Map<String, Value>>,
    ) -> Result<Arc<TableInfo>, sqlx::Error> {
        let key = (schema.to_string(), table.to_string());
        if let Some(info) = self.tables.get(&key) {
            let known = sample.is_none_or(|row| row.keys().all(|c| info.columns.contains(c)));
            if known {
                return Ok(info.clone());
            }
        }
        let mut info = self.load(pool, schema, table).await?;
        // Columns the catalog no longer has (dropped since the change was captured) must not
        // trigger a reload for every later row.
        info.columns.extend(sample.into_iter().flat_map(|row| row.keys().cloned()));
        let info = Arc::new(info);
        self.tables.insert(key, info.clone());
        Ok(info)
    }

    async fn load(&self, pool: &PgPool, schema: &str, table: &str) -> Result<TableInfo, sqlx::Error> {
        let rows = sqlx::query(
            "select a.attname::text as name, t.typname::text as type, \
                    array_position(i.indkey::int2[], a.attnum) as pk_order \
             from pg_attribute a \
             join pg_type t on t.oid = a.atttypid \
             left join pg_index i on i.indrelid = a.attrelid and i.indisprimary \
             where a.attrelid = to_regclass(quote_ident($1) || '.' || quote_ident($2)) \
               and a.attnum > 0 and not a.attisdropped \
             order by a.attnum",
        )
        .bind(schema)
        .bind(table)
        .fetch_all(pool)
        .await?;
        let mut primary_key: Vec<(i32, String)> = Vec::new();
        let mut date_columns = HashSet::new();
        let mut columns = HashSet::new();
        for row in rows {
            let name: String = row.try_get("name")?;
            let ty: String = row.try_get("type")?;
            if let Some(order) = row.try_get::<Option<i32>, _>("pk_order")? {
                primary_key.push((order, name.clone()));
            }
            if matches!(ty.as_str(), "timestamp" | "timestamptz" | "date") {
                date_columns.insert(name.clone());
            }
            columns.insert(name);
        }
        primary_key.sort();
        let class = self
            .aliases
            .get(&format!("{schema}.{table}"))
            .or_else(|| if schema == "public" { self.aliases.get(table) } else { None })
            .cloned()
            .unwrap_or_else(|| table.to_string());
        Ok(TableInfo {
            class: class.into(),
            primary_key: primary_key.into_iter().map(|(_, n)| n).collect(),
            date_columns,
            columns,
        })
    }
}
