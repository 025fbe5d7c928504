//! What the gateway tells its operators: [`metrics`] (the Prometheus registry every module
//! counts into, rendered by `GET /metrics`) and [`log`] (structured lines to stderr, as text or
//! JSON). Nothing here knows a socket, the hub or the database: the values only known at scrape
//! time are handed in by the caller ([`metrics::Snapshot`]).

pub mod log;
pub mod metrics;

pub use metrics::{Disconnect, Metrics, Transport};
