//! livegate: a realtime gateway for PostgreSQL.
//!
//! Module map, in the direction data flows (see ARCHITECTURE.md):
//!
//! - [`feed`]: LISTEN/NOTIFY doorbell + ordered reads of the change table → [`hub::Change`]s.
//! - [`hub`]: subscriptions by class and identical query, decision table, fan-out into bounded
//!   per-connection outboxes. Never waits on a client.
//! - [`catchup`]: replays missed changes for a resuming subscription, then hands it to the hub.
//! - [`snapshot`]: the current rows of a query at a stream position (the contract; the feed
//!   reads them).
//! - [`admission`]: the subscribe pipeline both transports share (query, position, token, class
//!   rules, start now or through catch-up).
//! - [`quota`]: connections per client address and in total, connection attempts per second.
//! - [`position`]: stream positions (`<offset>-<epoch>`) and gap reasons (pure).
//! - [`session`]: one Parse LiveQuery connection's state machine (no socket I/O).
//! - [`protocol`]: Parse wire messages, validation and error codes (pure).
//! - [`query`]: `where` JSON → compiled query; the matcher (pure).
//! - [`auth`]: key pairs, tokens → identities (JWT, session tokens, roles), class rules, row
//!   read access.
//! - [`transport`]: socket framing (WebSocket, Server-Sent Events).
//! - [`http`]: route table, CORS and Origin rules, health, the demo page.
//! - [`app`], [`config`], [`database`], [`heap`]: start-up plumbing, and giving a burst's
//!   memory back; [`telemetry`]: metrics and logs.

pub mod admission;
pub mod app;
pub mod auth;
pub mod catchup;
pub mod config;
pub mod database;
pub mod feed;
pub mod heap;
pub mod http;
pub mod hub;
pub mod position;
pub mod protocol;
pub mod query;
pub mod quota;
pub mod session;
pub mod snapshot;
pub mod telemetry;
#[cfg(test)]
mod testing;
pub mod transport;
pub mod value;
