//! Connecting to PostgreSQL at start-up: create the database when allowed, apply the embedded
//! migrations (once, under an advisory lock, so several gateways may start together).

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, PgConnection};

use serde::{Deserialize, Serialize};

/// Migrations, in order. Each runs once, in its own transaction. Versions need not be
/// contiguous: each is applied when its own number is not yet recorded.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "capture", include_str!("../migrations/0001_capture.sql")),
    (2, "history", include_str!("../migrations/0002_history.sql")),
    (3, "identity", include_str!("../migrations/0003_identity.sql")),
    (4, "watch_lock", include_str!("../migrations/0004_watch_lock.sql")),
    (5, "idle_sequence", include_str!("../migrations/0005_idle_sequence.sql")),
    (6, "readers", include_str!("../migrations/0006_readers.sql")),
];

/// Arbitrary constant shared by every livegate process: key of the migration advisory lock.
const MIGRATION_LOCK: i64 = 0x6c69_7665_6761_7465;

/// The `[database]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    pub url: String,
    /// Create the database when it does not exist (needs CREATEDB on the server).
    pub create_if_missing: bool,
    /// Size of the pool used for reads of the change table and start-up work.
    pub max_connections: u32,
    /// How long start-up waits for the database before giving up, in milliseconds.
    pub connect_timeout_ms: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "postgres://postgres@127.0.0.1:5432/livegate".into(),
            create_if_missing: true,
            max_connections: 4,
            connect_timeout_ms: 5_000,
        }
    }
}

/// A database step at start-up that failed, said with what was being done. Callers only report
/// it, so it carries its one-line message rather than a kind to branch on.
#[derive(Debug)]
pub struct DatabaseError(String);

impl DatabaseError {
    pub fn new(message: impl Into<String>) -> DatabaseError {
        DatabaseError(message.into())
    }
}

impl std::fmt::Display for DatabaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DatabaseError {}

pub fn connect_options(config: &DatabaseConfig, application_name: &str) -> Result<PgConnectOptions, DatabaseError> {
    PgConnectOptions::from_str(&config.url)
        .map(|o| o.application_name(application_name).log_statements(tracing::log::LevelFilter::Trace))
        .map_err(|e| DatabaseError::new(format!("invalid database.url: {e}")))
}

/// Opens the pool, creating the database first when it is missing and the config allows it.
pub async fn open_pool(config: &DatabaseConfig) -> Result<PgPool, DatabaseError> {
    let options = connect_options(config, "livegate")?;
    let timeout = Duration::from_millis(config.connect_timeout_ms);
    match tokio::time::timeout(timeout, PgConnection::connect_with(&options)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
        }
        Ok(Err(e)) if is_missing_database(&e) && config.create_if_missing => create_database(&options, timeout).await?,
        Ok(Err(e)) => return Err(DatabaseError::new(describe_connect_error(&options, &e))),
        Err(_) => {
            return Err(DatabaseError::new(format!(
                "database at {} did not answer within {} ms",
                server_of(&options),
                config.connect_timeout_ms
            )))
        }
    }
    PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(timeout)
        .connect_with(options.clone())
        .await
        .map_err(|e| DatabaseError::new(describe_connect_error(&options, &e)))
}

fn is_missing_database(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("3D000"))
}

fn server_of(options: &PgConnectOptions) -> String {
    format!("{}:{}", options.get_host(), options.get_port())
}

fn describe_connect_error(options: &PgConnectOptions, e: &sqlx::Error) -> String {
    let database = options.get_database().unwrap_or("(default)");
    format!("cannot connect to database {database} at {}: {e}", server_of(options))
}

async fn create_database(options: &PgConnectOptions, timeout: Duration) -> Result<(), DatabaseError> {
    let name = options.get_database().unwrap_or("livegate").to_string();
    let admin = options.clone().database("postgres");
    let mut conn = tokio::time::timeout(timeout, PgConnection::connect_with(&admin))
        .await
        .map_err(|_| DatabaseError::new(format!("database server at {} did not answer", server_of(options))))?
        .map_err(|e| DatabaseError::new(format!("database {name} is missing and cannot be created: {e}")))?;
    let statement = format!("create database \"{}\"", name.replace('"', "\"\""));
    match conn.execute(statement.as_str()).await {
        Ok(_) => tracing::info!(database = %name, "created database"),
        // Another gateway created it at the same moment.
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P04") => {}
        Err(e) => return Err(DatabaseError::new(format!("database {name} is missing and cannot be created: {e}"))),
    }
    let _ = conn.close().await;
    Ok(())
}

/// Applies every migration not yet recorded in `livegate.migrations`.
pub async fn migrate(pool: &PgPool) -> Result<(), DatabaseError> {
    let fail = |e: sqlx::Error| DatabaseError::new(format!("migration failed: {e}"));
    let mut conn = pool.acquire().await.map_err(fail)?;
    sqlx::query("select pg_advisory_lock($1)").bind(MIGRATION_LOCK).execute(&mut *conn).await.map_err(fail)?;
    let result = apply_pending(&mut conn).await;
    let unlock = sqlx::query("select pg_advisory_unlock($1)").bind(MIGRATION_LOCK).execute(&mut *conn).await;
    result?;
    unlock.map_err(fail)?;
    Ok(())
}

async fn apply_pending(conn: &mut PgConnection) -> Result<(), DatabaseError> {
    let fail = |e: sqlx::Error| DatabaseError::new(format!("migration failed: {e}"));
    conn.execute(
        "create schema if not exists livegate; \
         create table if not exists livegate.migrations \
         (version integer primary key, name text not null, applied_at timestamptz not null default now())",
    )
    .await
    .map_err(fail)?;
    let applied: Vec<i32> =
        sqlx::query_scalar("select version from livegate.migrations").fetch_all(&mut *conn).await.map_err(fail)?;
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        let mut tx = conn.begin().await.map_err(fail)?;
        tx.execute(*sql).await.map_err(|e| DatabaseError::new(format!("migration {version} ({name}) failed: {e}")))?;
        sqlx::query("insert into livegate.migrations (version, name) values ($1, $2)")
            .bind(version)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        tracing::info!(version, name, "applied migration");
    }
    Ok(())
}
