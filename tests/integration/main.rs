//! The one integration test binary: every test gets a fresh database and the real server on
//! port 0, and talks to it over real sockets.

mod acl_oracle;
mod architecture;
mod authorization;
mod browser;
mod browser_rules;
mod feed;
mod frames;
mod gateways;
mod identity;
mod limits;
mod operations;
mod parse_sdk;
mod queries;
mod resume;
#[path = "../../src/testing/rng.rs"]
mod rng;
mod snapshots;
mod soak;
mod support;
mod websocket;
