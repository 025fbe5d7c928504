//! `livegate [--config PATH]`: load the config, start the gateway, run until Ctrl-C/SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use livegate::app::{self, Application};
use livegate::config::Config;

#[tokio::main]
async fn main() -> ExitCode {
    livegate::telemetry::init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("livegate: error: {message}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> Result<(), String> {
    let (path, required) = config_path()?;
    let config = Config::load(&path, required).map_err(|e| e.to_string())?;
    let application = Application::build(config.clone()).await.map_err(|e| e.to_string())?;
    tracing::info!(address = %config.server.listen.ip(), port = application.port(), "livegate listening");
    livegate::heap::spawn_trimmer();
    let handle = application.handle();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        app::stop(handle, Duration::from_secs(10)).await;
    });
    application.run_until_stopped().await.map_err(|e| format!("server failed: {e}"))
}

/// `--config PATH` or `LIVEGATE_CONFIG` (must exist), else `./config.toml` when present.
fn config_path() -> Result<(PathBuf, bool), String> {
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next()) {
        (Some("--config"), Some(path)) => Ok((path.into(), true)),
        (None, _) => match std::env::var("LIVEGATE_CONFIG") {
            Ok(path) => Ok((path.into(), true)),
            Err(_) => Ok(("config.toml".into(), false)),
        },
        (Some("--help" | "-h"), _) => Err("usage: livegate [--config PATH]".into()),
        (Some(other), _) => Err(format!("unknown argument {other}; usage: livegate [--config PATH]")),
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
