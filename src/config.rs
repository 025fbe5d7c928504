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
use std::time::Duration;

use serde::Deserialize;

use crate::auth::jwt::{JwtConfig, JwtVerifier};
use crate::auth::rules::{ClassRule, ClassRules};
use crate::auth::sessions::SessionConfig;

use crate::http::cors::{BrowserConfig, OriginPolicy};

/// The whole configuration. Every field has a default, so an empty file is a valid config.
#[derive(Debug, Clone, Deserialize, Default)]
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
    /// Per-class rules by class name; `"*"` applies to classes not listed.
    pub classes: BTreeMap<String, ClassRule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the HTTP/WebSocket server binds to. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// actix worker threads; 0 means one per CPU core.
    pub workers: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig { listen: SocketAddr::from(([127, 0, 0, 1], 8080)), workers: 0 }
    }
}

#[derive(Debug, Clone, Deserialize)]
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

#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig { max_age_secs: 24 * 3600, max_changes: 1_000_000, prune_interval_ms: 60_000, prune_batch: 5_000 }
    }
}

/// Server-Sent Events for browsers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SseConfig {
    /// A comment line is sent this often on an idle stream, so proxies and browsers keep it.
    pub keepalive_ms: u64,
    /// The `retry:` hint: how long a browser waits before reconnecting.
    pub retry_ms: u64,
    /// Name of the cookie a session token may travel in.
    pub token_cookie: String,
}

impl Default for SseConfig {
    fn default() -> Self {
        SseConfig { keepalive_ms: 15_000, retry_ms: 2_000, token_cookie: "livegate_token".into() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// Ping interval; a peer that has not answered the previous ping is dropped.
    pub timeout_ms: u64,
    /// Largest frame (and message) a client may send, in bytes.
    pub max_frame_bytes: usize,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig { timeout_ms: 10_000, max_frame_bytes: 64 * 1024 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Frames a connection may have waiting; a client whose queue fills is disconnected.
    pub send_queue: usize,
    /// Live subscriptions per connection.
    pub subscriptions_per_connection: usize,
    /// Deepest nesting of `$or`/`$and`/`$nor` and operator objects in a `where`.
    pub query_depth: usize,
    /// Most elements in an `$in`/`$nin`/`$all`/`$containedBy` list or `$polygon`.
    pub in_list: usize,
    /// Longest `$regex` pattern, in bytes as written.
    pub regex_bytes: usize,
    /// Most `$regex` patterns in one `where`.
    pub regexes_per_query: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            send_queue: 8_192,
            subscriptions_per_connection: 100,
            query_depth: 10,
            in_list: 1_000,
            regex_bytes: 1_024,
            regexes_per_query: 32,
        }
    }
}

/// Parse key pairs. When at least one is set, `connect` must present a matching one (code 4).
#[derive(Clone, Deserialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct KeyPairs {
    pub javascript_key: Option<String>,
    pub client_key: Option<String>,
    pub rest_api_key: Option<String>,
    pub windows_key: Option<String>,
    pub master_key: Option<String>,
}

impl fmt::Debug for KeyPairs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |k: &Option<String>| if k.is_some() { "<set>" } else { "<unset>" };
        f.debug_struct("KeyPairs")
            .field("javascriptKey", &set(&self.javascript_key))
            .field("clientKey", &set(&self.client_key))
            .field("restAPIKey", &set(&self.rest_api_key))
            .field("windowsKey", &set(&self.windows_key))
            .field("masterKey", &set(&self.master_key))
            .finish()
    }
}

/// A configuration that could not be loaded; its `Display` is the one line shown to the operator.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Loads `path` (a missing file is an empty config only when `required` is false), applies
    /// the environment overrides and validates the result.
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
        let config: Config = toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| {
            ConfigError(format!("invalid configuration: {}", one_line(&e.to_string())))
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("feed.poll_interval_ms", self.feed.poll_interval_ms),
            ("feed.batch_size", u64::from(self.feed.batch_size)),
            ("feed.reconnect_min_ms", self.feed.reconnect_min_ms),
            ("history.prune_interval_ms", self.history.prune_interval_ms),
            ("history.prune_batch", u64::from(self.history.prune_batch)),
            ("sse.keepalive_ms", self.sse.keepalive_ms),
            ("sse.retry_ms", self.sse.retry_ms),
            ("websocket.timeout_ms", self.websocket.timeout_ms),
            ("websocket.max_frame_bytes", self.websocket.max_frame_bytes as u64),
            ("limits.send_queue", self.limits.send_queue as u64),
            ("limits.subscriptions_per_connection", self.limits.subscriptions_per_connection as u64),
            ("limits.query_depth", self.limits.query_depth as u64),
            ("limits.in_list", self.limits.in_list as u64),
            ("limits.regex_bytes", self.limits.regex_bytes as u64),
            ("limits.regexes_per_query", self.limits.regexes_per_query as u64),
            ("database.max_connections", u64::from(self.database.max_connections)),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError(format!("invalid configuration: {key} must be greater than 0")));
            }
        }
        if self.feed.reconnect_max_ms < self.feed.reconnect_min_ms {
            return Err(ConfigError(
                "invalid configuration: feed.reconnect_max_ms is below feed.reconnect_min_ms".into(),
            ));
        }
        if !self.database.url.starts_with("postgres://") && !self.database.url.starts_with("postgresql://") {
            return Err(ConfigError("invalid configuration: database.url must start with postgres://".into()));
        }
        for table in &self.feed.tables {
            if table.trim().is_empty() {
                return Err(ConfigError("invalid configuration: feed.tables holds an empty name".into()));
            }
        }
        JwtVerifier::from_config(&self.jwt).map_err(|e| ConfigError(format!("invalid configuration: jwt: {e}")))?;
        ClassRules::new(&self.classes).map_err(|e| ConfigError(format!("invalid configuration: {e}")))?;
        OriginPolicy::new(&self.browser)
            .map_err(|e| ConfigError(format!("invalid configuration: browser.allowed_origins: {e}")))?;
        Ok(())
    }

    pub fn query_limits(&self) -> crate::query::QueryLimits {
        crate::query::QueryLimits {
            max_depth: self.limits.query_depth,
            max_in_list: self.limits.in_list,
            max_regex_bytes: self.limits.regex_bytes,
            max_regexes: self.limits.regexes_per_query,
        }
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.feed.poll_interval_ms)
    }

    pub fn websocket_timeout(&self) -> Duration {
        Duration::from_millis(self.websocket.timeout_ms)
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

    #[test]
    fn the_shipped_config_toml_states_the_defaults() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml")).unwrap();
        let shipped = Config::from_table(text.parse().unwrap(), env(&[])).unwrap();
        assert_eq!(format!("{shipped:?}"), format!("{:?}", Config::default()));
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
        let err = Config::from_table(toml::Table::new(), env(&[("LIVEGATE_WEBSOCKET__TIMEOUT_MS", "0")])).unwrap_err();
        assert!(err.to_string().contains("websocket.timeout_ms"));
        let err = Config::from_table(toml::Table::new(), env(&[("DATABASE_URL", "mysql://x")])).unwrap_err();
        assert!(err.to_string().contains("postgres://"));
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
        let err =
            Config::from_table(toml::Table::new(), env(&[("LIVEGATE_BROWSER__ALLOWED_ORIGINS", "[\"a.example/x\"]")]))
                .unwrap_err()
                .to_string();
        assert!(err.contains("browser.allowed_origins") && err.contains("a.example/x"), "{err}");
    }
}
