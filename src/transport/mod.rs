//! Transports: the only code that knows socket framing. Each moves frames between a client and
//! the shared hub; everything protocol-specific happens in pure code (`protocol`, `session`).

pub mod sse;
pub mod ws;
