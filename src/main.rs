//! The `livegate` command line: `serve` (the default), `check-config`, `migrate`, `watch` and
//! `unwatch`. Each loads the configuration the same way; only `serve` starts the gateway.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use livegate::app::{self, Application};
use livegate::config::Config;
use livegate::telemetry;

#[derive(Debug, Parser)]
#[command(
    name = "livegate",
    version,
    about = "Realtime gateway for PostgreSQL: Parse LiveQuery over WebSocket, and SSE"
)]
struct Cli {
    /// Configuration file. Without it (or LIVEGATE_CONFIG), ./config.toml is read when present,
    /// and the defaults apply otherwise.
    #[arg(long, global = true, env = "LIVEGATE_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway until SIGTERM or Ctrl-C, then drain (the default command).
    Serve,
    /// Validate the configuration and print it as in effect, secrets masked; exit 0 when
    /// valid, 2 when not.
    CheckConfig,
    /// Create the database if allowed (database.create_if_missing) and apply livegate's
    /// migrations, then exit.
    Migrate,
    /// Install the capture trigger on each table (idempotent), so its changes are delivered.
    Watch {
        /// `schema.table`, or `table` for `public`.
        #[arg(required = true, value_name = "TABLE")]
        tables: Vec<String>,
    },
    /// Remove the capture trigger from each table. A table in `feed.tables` is watched again
    /// at the next start.
    Unwatch {
        #[arg(required = true, value_name = "TABLE")]
        tables: Vec<String>,
    },
}

/// A failure, and the exit code it earns: 2 for a configuration that cannot be used, 1 for
/// anything else.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn config(message: impl ToString) -> Failure {
        Failure { code: 2, message: message.to_string() }
    }

    fn runtime(message: impl ToString) -> Failure {
        Failure { code: 1, message: message.to_string() }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, message }) => {
            eprintln!("livegate: error: {message}");
            ExitCode::from(code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let required = cli.config.is_some();
    let path = cli.config.unwrap_or_else(|| "config.toml".into());
    let config = Config::load(&path, required).map_err(Failure::config)?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::CheckConfig => check_config(config),
        Command::Migrate => {
            let pool = app::connect(config).await.map_err(Failure::runtime)?;
            app::migrate(&pool).await.map_err(Failure::runtime)?;
            println!("migrated");
            Ok(())
        }
        Command::Watch { tables } => {
            let pool = app::connect(config).await.map_err(Failure::runtime)?;
            for table in &tables {
                app::watch(&pool, table).await.map_err(Failure::runtime)?;
                println!("watching {table}");
            }
            Ok(())
        }
        Command::Unwatch { tables } => {
            let pool = app::connect(config).await.map_err(Failure::runtime)?;
            for table in &tables {
                app::unwatch(&pool, table).await.map_err(Failure::runtime)?;
                println!("no longer watching {table}");
            }
            Ok(())
        }
    }
}

fn check_config(config: Config) -> Result<(), Failure> {
    let printed = config.masked().map_err(Failure::config)?;
    config.validate().map_err(Failure::config)?;
    print!("{printed}");
    Ok(())
}

async fn serve(config: Config) -> Result<(), Failure> {
    telemetry::log::init(&config.log);
    let address = config.server.listen.ip();
    let application = Application::build(config).await.map_err(|e| Failure { code: 2, message: e.to_string() })?;
    tracing::info!(%address, port = application.port(), metrics_port = application.metrics_port(), "livegate listening");
    livegate::heap::spawn_trimmer();
    let shutdown = application.shutdown();
    tokio::spawn(async move {
        signal().await;
        tracing::info!("shutdown requested; a second signal exits at once");
        let timeout = shutdown.timeout();
        tokio::spawn(async move {
            signal().await;
            eprintln!("livegate: second signal: exiting now");
            std::process::exit(130);
        });
        tokio::spawn(async move {
            tokio::time::sleep(timeout + std::time::Duration::from_millis(500)).await;
            eprintln!("livegate: shutdown_timeout_ms passed: exiting now");
            std::process::exit(1);
        });
        shutdown.run().await;
    });
    application.run_until_stopped().await.map_err(|e| Failure::runtime(format!("server failed: {e}")))?;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves at the next SIGTERM or SIGINT.
async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
