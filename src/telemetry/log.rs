//! Logging: `tracing` to stderr, one line per event, as text or JSON (`[log] format`), at
//! `[log] level` (tracing's names, or Parse's `logLevel` names); `RUST_LOG`, when set, wins.
//!
//! What is logged at info and above never carries a token, a key or row data: connections are
//! logged with their transport, peer, duration and why they ended; refusals with their code.

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// The `[log]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// `error`, `warn`, `info`, `debug`, `trace` or `off`, or Parse's `logLevel` names
    /// (`ERROR`, `WARN`, `INFO`, `VERBOSE`, `DEBUG`, `SILLY`, `NONE`), in any case.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Text, level: "info".into() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields` (with `message`).
    Json,
}

impl LogConfig {
    /// The tracing directive for `level`; `None` when it is not a level.
    pub fn directive(&self) -> Option<&'static str> {
        Some(match self.level.to_ascii_lowercase().as_str() {
            "none" | "off" => "off",
            "error" => "error",
            "warn" | "warning" => "warn",
            "info" => "info",
            "verbose" | "debug" => "debug",
            "silly" | "trace" => "trace",
            _ => return None,
        })
    }
}

/// Installs the subscriber (once per process; later calls do nothing). sqlx's per-statement
/// lines stay at warn unless `RUST_LOG` asks for them.
pub fn init(config: &LogConfig) {
    let level = config.directive().unwrap_or("info");
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format!("{level},sqlx=warn")));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_level_names_map_to_tracing_levels() {
        let directive = |level: &str| LogConfig { level: level.into(), ..LogConfig::default() }.directive();
        assert_eq!(directive("VERBOSE"), Some("debug"));
        assert_eq!(directive("NONE"), Some("off"));
        assert_eq!(directive("ERROR"), Some("error"));
        assert_eq!(directive("info"), Some("info"));
        assert_eq!(directive("silly"), Some("trace"));
        assert_eq!(directive("loud"), None);
    }
}
