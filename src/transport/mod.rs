//! Transports: the only code that knows socket framing. Each moves frames between a client and
//! the shared hub; everything protocol-specific happens in pure code (`protocol`, `session`).

pub mod sse;
pub mod ws;

use tokio::time::Instant;

/// Sleeps until `at`, forever when there is nothing to wait for (no token to re-check).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
