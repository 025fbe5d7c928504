//! Typed configuration: `config.toml`, overridden by environment variables, validated at start-up.
//!
//! One mechanism covers every key: the file is read as a TOML table, then each environment
//! variable `LIVEGATE_<SECTION>__<KEY>` (double underscore between levels) replaces the value at
//! that path, parsed as a TOML value when it parses and as a string otherwise. `DATABASE_URL` is
//! an alias of `LIVEGATE_DATABASE__URL`. Unknown keys are errors, so a typo never goes unnoticed.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::auth::jwt::{JwtConfig, JwtVerifier};
use crate::auth::rules::{ClassRule, ClassRules};
use crate::auth::sessions::SessionConfig;
use crate::database::DatabaseConfig;
use crate::feed::{FeedConfig, HistoryConfig};
use crate::http::cors::{BrowserConfig, OriginPolicy};
use crate::http::MetricsConfig;
use crate::hub::{HubLimits, QueueBudget, TotalBudget};
use crate::protocol::KeyPairs;
use crate::query::QueryLimits;
use crate::quota::ConnectionLimits;
use crate::telemetry::log::LogConfig;
use crate::transport::sse::SseConfig;
use crate::transport::ws::WebSocketConfig;

/// Keys whose values are secrets, wherever they appear: masked by [`Config::masked`].
const SECRET_KEYS: &[&str] =
    &["javascript_key", "client_key", "rest_api_key", "windows_key", "master_key", "secret", "secret_base64", "token"];

/// Masks every secret in a configuration value, and the password of any `url`.
fn mask(value: &mut toml::Value) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table.iter_mut() {
                match value {
                    toml::Value::String(text) if SECRET_KEYS.contains(&key.as_str()) => *text = "****".into(),
                    toml::Value::String(text) if key == "url" => *text = mask_password(text),
                    other => mask(other),
                }
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(mask),
        _ => {}
    }
}

/// `scheme://user:password@host/…` → `scheme://user:****@host/…`; `password=` parameters too.
fn mask_password(url: &str) -> String {
    let mut masked = url.to_string();
    if let Some(scheme_end) = masked.find("://") {
        let authority_start = scheme_end + 3;
        let authority_end = masked[authority_start..].find(['/', '?']).map_or(masked.len(), |i| authority_start + i);
        if let Some(at) = masked[authority_start..authority_end].rfind('@') {
            let userinfo = &masked[authority_start..authority_start + at];
            if let Some(colon) = userinfo.find(':') {
                masked.replace_range(authority_start + colon + 1..authority_start + at, "****");
            }
        }
    }
    if let Some(start) = masked.find("password=") {
        let value_start = start + "password=".len();
        let value_end = masked[value_start..].find('&').map_or(masked.len(), |i| value_start + i);
        masked.replace_range(value_start..value_end, "****");
    }
    masked
}

/// The whole configuration. Every field has a default, so an empty file is a valid config.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub feed: FeedConfig,
    pub history: HistoryConfig,
    pub websocket: WebSocketConfig,
    pub sse: SseConfig,
    pub limits: LimitsConfig,
    pub keys: KeyPairs,
    pub browser: BrowserConfig,
    pub jwt: JwtConfig,
    pub sessions: SessionConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    /// Per-class rules by class name; `"*"` applies to classes not listed.
    pub classes: BTreeMap<String, ClassRule>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the HTTP/WebSocket server binds to. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// actix worker threads; 0 means one per CPU core.
    pub workers: usize,
    /// Proxies (IP addresses) whose `X-Forwarded-For` names the client, for the per-address
    /// quotas; from any other peer the header is ignored.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// `/ready` answers 503 while the feed is further behind than this.
    pub ready_max_lag_ms: u64,
    /// On SIGTERM/SIGINT, how long `/ready` says 503 (and new connections are refused) before
    /// the open ones are closed, so load balancers stop sending clients here first.
    pub drain_delay_ms: u64,
    /// The most a shutdown takes, drain delay included; then the process exits regardless.
    pub shutdown_timeout_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            workers: 0,
            trusted_proxies: Vec::new(),
            ready_max_lag_ms: 10_000,
            drain_delay_ms: 1_000,
            shutdown_timeout_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Frames a connection may have waiting; a client whose queue fills is disconnected.
    pub send_queue: usize,
    /// Bytes a connection may have waiting; a client whose queue holds more is disconnected.
    pub send_queue_bytes: usize,
    /// Bytes all connections together may have waiting; past it, clients holding more than an
    /// equal share are disconnected.
    pub send_queue_bytes_total: usize,
    /// Live subscriptions per connection.
    pub subscriptions_per_connection: usize,
    /// Unindexed subscriptions per connection (no top-level equality: evaluated for every
    /// change of their class).
    pub scanned_queries_per_connection: usize,
    /// Distinct unindexed queries in the whole gateway.
    pub scanned_queries_total: usize,
    /// Most names in a `keys` or `watch` list.
    pub field_list: usize,
    /// Most changes one resume replays; a client further behind gets an `expired` gap.
    pub replay_changes: u64,
    /// Most rows one snapshot sends; a larger one is refused (155).
    pub snapshot_rows: usize,
    /// Statement timeout of a snapshot's read, in milliseconds (124 past it).
    pub snapshot_timeout_ms: u64,
    /// Database connections reserved for snapshots: they queue for them, and never take the
    /// connections the feed, replays and token lookups use.
    pub snapshot_connections: u32,
    /// Open connections (WebSocket and SSE) from one client address.
    pub connections_per_ip: usize,
    /// Open connections in all.
    pub connections_total: usize,
    /// Open SSE streams from one client address.
    pub sse_streams_per_ip: usize,
    /// Connection attempts per second from one client address (a burst of as many).
    pub connection_rate_per_ip: u32,
    /// `connect`/`subscribe`/`update` requests per second per connection, in bursts of up to
    /// `subscriptions_per_connection` (what a reconnecting SDK sends at once).
    pub request_rate: u32,
    /// Deepest nesting of `$or`/`$and`/`$nor` and operator objects in a `where`.
    pub query_depth: usize,
    /// Most elements in an `$in`/`$nin`/`$all`/`$containedBy` list or `$polygon`.
    pub in_list: usize,
    /// Longest `$regex` pattern, in bytes as written.
    pub regex_bytes: usize,
    /// Most `$regex` patterns in one `where`.
    pub regexes_per_query: usize,
    /// Compiled `$regex` memory one query may need, in bytes.
    pub regex_memory_per_query: usize,
    /// Compiled `$regex` memory the subscriptions of one connection may hold, in bytes.
    pub regex_memory_per_connection: usize,
    /// Compiled `$regex` memory of the whole gateway (identical patterns count once), in bytes.
    pub regex_memory_total: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            send_queue: 8_192,
            send_queue_bytes: 16 * 1024 * 1024,
            send_queue_bytes_total: 1024 * 1024 * 1024,
            subscriptions_per_connection: 100,
            scanned_queries_per_connection: 50,
            scanned_queries_total: 2_000,
            field_list: 256,
            replay_changes: 100_000,
            snapshot_rows: 10_000,
            snapshot_timeout_ms: 5_000,
            snapshot_connections: 2,
            connections_per_ip: 8_000,
            connections_total: 16_000,
            sse_streams_per_ip: 1_000,
            connection_rate_per_ip: 2_000,
            request_rate: 20,
            query_depth: 10,
            in_list: 1_000,
            regex_bytes: 1_024,
            regexes_per_query: 32,
            regex_memory_per_query: 40 * 1024 * 1024,
            regex_memory_per_connection: 64 * 1024 * 1024,
            regex_memory_total: 256 * 1024 * 1024,
        }
    }
}

/// A configuration that could not be loaded; its `Display` is the one line shown to the operator.
#[derive(Debug)]
pub struct ConfigError(String);

impl ConfigError {
    fn invalid(what: impl fmt::Display) -> ConfigError {
        ConfigError(format!("invalid configuration: {what}"))
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated configuration, in the form each module takes it: checked values and the objects
/// built from them (JWT keys, class rules, the origin policy). Only [`Config::validate`] makes one.
pub struct Settings {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub feed: FeedConfig,
    pub history: HistoryConfig,
    pub websocket: WebSocketConfig,
    pub sse: SseConfig,
    /// What a connection's queue may hold (`limits.send_queue`, `limits.send_queue_bytes`).
    pub send_queue: QueueBudget,
    pub hub: HubLimits,
    pub query_limits: QueryLimits,
    /// Most names in a `keys` or `watch` list.
    pub field_list: usize,
    /// Most changes one resume replays.
    pub replay_changes: u64,
    pub snapshot_rows: usize,
    pub snapshot_timeout: Duration,
    pub snapshot_connections: u32,
    pub connections: ConnectionLimits,
    /// Per-connection request rate and burst.
    pub request_rate: (u32, u32),
    pub keys: KeyPairs,
    pub origins: OriginPolicy,
    pub jwt: Option<JwtVerifier>,
    pub sessions: SessionConfig,
    pub rules: ClassRules,
    /// How often tokens in use are checked again: the session cache's lifetime, at least 100 ms.
    pub revalidate_every: Duration,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Loads `path` (a missing file is an empty config only when `required` is false) and
    /// applies the environment overrides. Unknown keys and ill-typed values are refused here;
    /// everything else is checked by [`Config::validate`].
    pub fn load(path: &Path, required: bool) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => String::new(),
            Err(e) => return Err(ConfigError(format!("cannot read {}: {e}", path.display()))),
        };
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError(format!("{}: {}", path.display(), one_line(&e.to_string()))))?;
        Config::from_table(table, std::env::vars())
    }

    /// Builds a config from a parsed file and a set of environment variables.
    pub fn from_table(
        mut table: toml::Table,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        for (name, value) in env {
            let path: Vec<String> = if name == "DATABASE_URL" {
                vec!["database".into(), "url".into()]
            } else if let Some(rest) = name.strip_prefix("LIVEGATE_") {
                if rest == "CONFIG" {
                    continue;
                }
                rest.split("__").map(|p| p.to_ascii_lowercase()).collect()
            } else {
                continue;
            };
            set_path(&mut table, &path, parse_env_value(&value))
                .map_err(|e| ConfigError(format!("environment variable {name}: {e}")))?;
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::invalid(one_line(&e.to_string())))?;
        Ok(config)
    }

    /// Checks every value and builds what the modules take. The only place validation
    /// happens: [`crate::app::Application::build`] calls it before touching the database.
    pub fn validate(self) -> Result<Settings, ConfigError> {
        self.check_values()?;
        let jwt = JwtVerifier::from_config(&self.jwt).map_err(|e| ConfigError::invalid(format!("jwt: {e}")))?;
        let rules = ClassRules::new(&self.classes).map_err(ConfigError::invalid)?;
        let origins = OriginPolicy::new(&self.browser).map_err(|e| ConfigError::invalid(format!("browser.{e}")))?;
        let limits = &self.limits;
        Ok(Settings {
            query_limits: QueryLimits {
                max_depth: limits.query_depth,
                max_in_list: limits.in_list,
                max_regex_bytes: limits.regex_bytes,
                max_regexes: limits.regexes_per_query,
                max_regex_memory_per_query: limits.regex_memory_per_query,
                max_regex_memory_total: limits.regex_memory_total,
            },
            send_queue: QueueBudget {
                frames: limits.send_queue,
                bytes: limits.send_queue_bytes,
                total: Arc::new(TotalBudget::new(limits.send_queue_bytes_total)),
            },
            hub: HubLimits {
                subscriptions_per_connection: limits.subscriptions_per_connection,
                scanned_per_connection: limits.scanned_queries_per_connection,
                scanned_total: limits.scanned_queries_total,
                regex_memory_per_connection: limits.regex_memory_per_connection,
            },
            field_list: limits.field_list,
            replay_changes: limits.replay_changes,
            snapshot_rows: limits.snapshot_rows,
            snapshot_timeout: Duration::from_millis(limits.snapshot_timeout_ms),
            snapshot_connections: limits.snapshot_connections,
            request_rate: (
                limits.request_rate,
                u32::try_from(limits.subscriptions_per_connection).unwrap_or(u32::MAX).max(limits.request_rate),
            ),
            connections: ConnectionLimits {
                trusted_proxies: self.server.trusted_proxies.clone(),
                per_ip: limits.connections_per_ip,
                total: limits.connections_total,
                sse_per_ip: limits.sse_streams_per_ip,
                attempts_per_second_per_ip: limits.connection_rate_per_ip,
            },
            revalidate_every: Duration::from_millis(self.sessions.cache_ttl_ms.max(100)),
            server: self.server,
            database: self.database,
            feed: self.feed,
            history: self.history,
            websocket: self.websocket,
            sse: self.sse,
            keys: self.keys,
            origins,
            jwt,
            sessions: self.sessions,
            rules,
            metrics: self.metrics,
            log: self.log,
        })
    }

    /// The configuration in effect (defaults filled in), as TOML, with every secret masked:
    /// Parse keys, JWT secrets, the metrics token and the database password.
    pub fn masked(&self) -> Result<String, ConfigError> {
        let mut value =
            toml::Value::try_from(self).map_err(|e| ConfigError(format!("cannot print the configuration: {e}")))?;
        mask(&mut value);
        toml::to_string(&value).map_err(|e| ConfigError(format!("cannot print the configuration: {e}")))
    }

    /// The `[server]` shutdown and readiness keys, `[metrics]` and `[log]`.
    fn check_operations(&self) -> Result<(), ConfigError> {
        let positive = [
            ("server.ready_max_lag_ms", self.server.ready_max_lag_ms),
            ("server.shutdown_timeout_ms", self.server.shutdown_timeout_ms),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(ConfigError::invalid(format!("{key} must be greater than 0")));
        }
        if self.log.directive().is_none() {
            return Err(ConfigError::invalid(format!(
                "log.level {:?} is not a level (error, warn, info, debug, trace, off, or Parse's VERBOSE, SILLY, NONE)",
                self.log.level
            )));
        }
        if self.server.drain_delay_ms >= self.server.shutdown_timeout_ms {
            return Err(ConfigError::invalid("server.drain_delay_ms must be below server.shutdown_timeout_ms"));
        }
        if self.metrics.listen.is_some_and(|address| address == self.server.listen && address.port() != 0) {
            return Err(ConfigError::invalid(
                "metrics.listen must differ from server.listen (leave it out to serve /metrics there)",
            ));
        }
        if self.metrics.token.as_deref() == Some("") {
            return Err(ConfigError::invalid("metrics.token is empty; leave it out to serve /metrics without one"));
        }
        Ok(())
    }

    fn check_values(&self) -> Result<(), ConfigError> {
        let positive = [
            ("feed.poll_interval_ms", self.feed.poll_interval_ms),
            ("feed.batch_size", u64::from(self.feed.batch_size)),
            ("feed.reconnect_min_ms", self.feed.reconnect_min_ms),
            ("history.prune_interval_ms", self.history.prune_interval_ms),
            ("history.prune_batch", u64::from(self.history.prune_batch)),
            ("history.replay_connections", u64::from(self.history.replay_connections)),
            ("sse.keepalive_ms", self.sse.keepalive_ms),
            ("sse.retry_ms", self.sse.retry_ms),
            ("websocket.timeout_ms", self.websocket.timeout_ms),
            ("websocket.max_frame_bytes", self.websocket.max_frame_bytes as u64),
            ("websocket.receive_buffer_bytes", self.websocket.receive_buffer_bytes as u64),
            ("limits.send_queue", self.limits.send_queue as u64),
            ("limits.send_queue_bytes", self.limits.send_queue_bytes as u64),
            ("limits.send_queue_bytes_total", self.limits.send_queue_bytes_total as u64),
            ("limits.subscriptions_per_connection", self.limits.subscriptions_per_connection as u64),
            ("limits.scanned_queries_per_connection", self.limits.scanned_queries_per_connection as u64),
            ("limits.scanned_queries_total", self.limits.scanned_queries_total as u64),
            ("limits.field_list", self.limits.field_list as u64),
            ("limits.replay_changes", self.limits.replay_changes),
            ("limits.snapshot_rows", self.limits.snapshot_rows as u64),
            ("limits.snapshot_timeout_ms", self.limits.snapshot_timeout_ms),
            ("limits.snapshot_connections", u64::from(self.limits.snapshot_connections)),
            ("limits.connections_per_ip", self.limits.connections_per_ip as u64),
            ("limits.connections_total", self.limits.connections_total as u64),
            ("limits.sse_streams_per_ip", self.limits.sse_streams_per_ip as u64),
            ("limits.connection_rate_per_ip", u64::from(self.limits.connection_rate_per_ip)),
            ("limits.request_rate", u64::from(self.limits.request_rate)),
            ("limits.query_depth", self.limits.query_depth as u64),
            ("limits.in_list", self.limits.in_list as u64),
            ("limits.regex_bytes", self.limits.regex_bytes as u64),
            ("limits.regexes_per_query", self.limits.regexes_per_query as u64),
            ("limits.regex_memory_per_query", self.limits.regex_memory_per_query as u64),
            ("limits.regex_memory_per_connection", self.limits.regex_memory_per_connection as u64),
            ("limits.regex_memory_total", self.limits.regex_memory_total as u64),
            ("database.max_connections", u64::from(self.database.max_connections)),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(ConfigError::invalid(format!("{key} must be greater than 0")));
        }
        self.check_operations()?;
        if self.websocket.receive_buffer_bytes < self.websocket.max_frame_bytes {
            return Err(ConfigError::invalid(
                "websocket.receive_buffer_bytes is below websocket.max_frame_bytes: the largest frames could never be received",
            ));
        }
        if self.feed.reconnect_max_ms < self.feed.reconnect_min_ms {
            return Err(ConfigError::invalid("feed.reconnect_max_ms is below feed.reconnect_min_ms"));
        }
        if !self.database.url.starts_with("postgres://") && !self.database.url.starts_with("postgresql://") {
            return Err(ConfigError::invalid("database.url must start with postgres://"));
        }
        if self.feed.tables.iter().any(|table| table.trim().is_empty()) {
            return Err(ConfigError::invalid("feed.tables holds an empty name"));
        }
        Ok(())
    }
}

fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn parse_env_value(raw: &str) -> toml::Value {
    // `key = <raw>` parses for numbers, booleans, arrays and quoted strings; anything else is a
    // bare string (URLs, addresses).
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    match path {
        [] => Err("empty key".into()),
        [last] => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            let entry = table.entry(first.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(inner) => set_path(inner, rest, value),
                _ => Err(format!("{first} is not a section")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// The one-line error of a config that parses but does not validate.
    fn invalid(table: toml::Table, vars: &[(&str, &str)]) -> String {
        match Config::from_table(table, env(vars)).and_then(Config::validate) {
            Ok(_) => panic!("the config validated"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_shipped_config_toml_states_the_defaults() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml")).unwrap();
        let shipped = Config::from_table(text.parse().unwrap(), env(&[])).unwrap();
        assert_eq!(format!("{shipped:?}"), format!("{:?}", Config::default()));
        assert!(shipped.validate().is_ok());
    }

    #[test]
    fn the_printed_config_masks_every_secret() {
        let table: toml::Table = r#"
            [database]
            url = "postgres://me:hunter2@db:5432/app?password=again&sslmode=require"
            [keys]
            master_key = "mk"
            client_key = "ck"
            [metrics]
            token = "tk"
            [[jwt.keys]]
            secret = "0123456789abcdef0123456789abcdef"
        "#
        .parse()
        .unwrap();
        let printed = Config::from_table(table, env(&[])).unwrap().masked().unwrap();
        for secret in ["hunter2", "again", "\"mk\"", "\"ck\"", "\"tk\"", "0123456789"] {
            assert!(!printed.contains(secret), "{secret} is shown:\n{printed}");
        }
        assert!(printed.contains("postgres://me:****@db:5432/app?password=****&sslmode=require"), "{printed}");
        let reparsed = Config::from_table(printed.parse().unwrap(), env(&[])).unwrap();
        assert_eq!(reparsed.keys.master_key.as_deref(), Some("****"), "the output is a config file");
        assert_eq!(mask_password("postgres://postgres@h/db"), "postgres://postgres@h/db");
    }

    #[test]
    fn shutdown_and_logging_keys_are_checked() {
        let table = |text: &str| -> toml::Table { text.parse().unwrap() };
        assert!(invalid(table("[server]\ndrain_delay_ms = 10000\nshutdown_timeout_ms = 5000"), &[])
            .contains("server.drain_delay_ms must be below server.shutdown_timeout_ms"));
        assert!(invalid(table("[log]\nlevel = \"chatty\""), &[]).contains("log.level \"chatty\" is not a level"));
        assert!(invalid(table("[metrics]\ntoken = \"\""), &[]).contains("metrics.token is empty"));
        let same = "[server]\nlisten = \"127.0.0.1:9000\"\n[metrics]\nlisten = \"127.0.0.1:9000\"";
        assert!(invalid(table(same), &[]).contains("metrics.listen must differ from server.listen"));
        let json = Config::from_table(table("[log]\nformat = \"json\"\nlevel = \"VERBOSE\""), env(&[])).unwrap();
        assert!(json.validate().is_ok());
    }

    #[test]
    fn empty_file_gives_defaults() {
        let config = Config::from_table(toml::Table::new(), env(&[])).unwrap();
        assert_eq!(config.websocket.timeout_ms, 10_000);
        assert_eq!(config.server.listen.port(), 8080);
    }

    #[test]
    fn environment_overrides_file() {
        let table: toml::Table = "[server]\nlisten = \"127.0.0.1:1\"\n[feed]\npoll_interval_ms = 7".parse().unwrap();
        let config = Config::from_table(
            table,
            env(&[
                ("LIVEGATE_SERVER__LISTEN", "0.0.0.0:9000"),
                ("DATABASE_URL", "postgres://x@h/db"),
                ("LIVEGATE_FEED__TABLES", "[\"a\", \"b\"]"),
                ("LIVEGATE_KEYS__MASTER_KEY", "secret"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(config.server.listen.port(), 9000);
        assert_eq!(config.database.url, "postgres://x@h/db");
        assert_eq!(config.feed.tables, vec!["a", "b"]);
        assert_eq!(config.feed.poll_interval_ms, 7);
        assert_eq!(config.keys.master_key.as_deref(), Some("secret"));
        // a string that looks like a number is quoted to stay a string
        let config = Config::from_table(toml::Table::new(), env(&[("LIVEGATE_KEYS__MASTER_KEY", "\"123\"")])).unwrap();
        assert_eq!(config.keys.master_key.as_deref(), Some("123"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_one_line_errors() {
        let table: toml::Table = "[server]\nlisen = \"x\"".parse().unwrap();
        let err = Config::from_table(table, env(&[])).unwrap_err().to_string();
        assert!(err.contains("lisen"), "{err}");
        assert!(!err.contains('\n'));
        let err = invalid(toml::Table::new(), &[("LIVEGATE_WEBSOCKET__TIMEOUT_MS", "0")]);
        assert!(err.contains("websocket.timeout_ms"), "{err}");
        let err = invalid(toml::Table::new(), &[("DATABASE_URL", "mysql://x")]);
        assert!(err.contains("postgres://"), "{err}");
        let err = invalid(toml::Table::new(), &[("LIVEGATE_WEBSOCKET__RECEIVE_BUFFER_BYTES", "1000")]);
        assert!(err.contains("receive_buffer_bytes is below"), "{err}");
    }

    #[test]
    fn browser_section_defaults_and_overrides() {
        let config = Config::from_table(toml::Table::new(), env(&[])).unwrap();
        assert!(config.browser.allowed_origins.is_empty());
        assert!(config.browser.allow_missing_origin);
        assert!(config.browser.allow_credentials);
        assert_eq!(config.browser.max_age_secs, 600);
        let config = Config::from_table(
            toml::Table::new(),
            env(&[
                ("LIVEGATE_BROWSER__ALLOWED_ORIGINS", "[\"https://a.example\"]"),
                ("LIVEGATE_BROWSER__ALLOW_MISSING_ORIGIN", "false"),
            ]),
        )
        .unwrap();
        assert_eq!(config.browser.allowed_origins, vec!["https://a.example"]);
        assert!(!config.browser.allow_missing_origin);
        let err = invalid(toml::Table::new(), &[("LIVEGATE_BROWSER__ALLOWED_ORIGINS", "[\"a.example/x\"]")]);
        assert!(err.contains("browser.allowed_origins") && err.contains("a.example/x"), "{err}");
    }
}
