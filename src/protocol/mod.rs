//! The Parse LiveQuery wire protocol: client requests (validated the way Parse's tv4 schemas
//! validate them, with the same first-error messages), server frames with Parse's exact key
//! order, and error codes. Pure: no I/O, no hub.
//!
//! A requestId is a JavaScript number, as in Parse Server: [`RequestId`] compares by value and
//! prints as JavaScript does (`number.rs`). A frame serde_json refuses only over a number beyond
//! f64 is still answered (`literal.rs` finds such literals, see [`decode`]).

mod literal;
mod number;
mod request;
mod response;
mod unique;

pub use request::{decode, Connect, Decoded, KeyPairs, Request, Subscribe};
pub use response::{encode_error, encode_event, encode_reply, encode_result, EventOp, Reply};

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Parse error codes used on the wire.
pub mod code {
    /// JSON-schema failure of a request.
    pub const SCHEMA: i64 = 1;
    /// Unknown client or subscription.
    pub const NOT_FOUND: i64 = 2;
    /// Key pair mismatch at connect.
    pub const INVALID_KEYS: i64 = 4;
    /// A `where` that cannot be evaluated (Parse's INVALID_QUERY).
    pub const INVALID_QUERY: i64 = 102;
    /// Authentication required for a class (Parse's OBJECT_NOT_FOUND, as Parse uses it).
    pub const NEEDS_AUTHENTICATION: i64 = 101;
    /// A class rule refuses the subscriber (Parse's OPERATION_FORBIDDEN).
    pub const FORBIDDEN: i64 = 119;
    /// Too many subscriptions on one connection (Parse's REQUEST_LIMIT_EXCEEDED).
    pub const LIMIT_EXCEEDED: i64 = 155;
    /// A session token that is invalid, expired or revoked (Parse's INVALID_SESSION_TOKEN).
    pub const INVALID_SESSION_TOKEN: i64 = 209;
    /// The server could not do it right now (Parse's INTERNAL_SERVER_ERROR shares code 1).
    pub const INTERNAL: i64 = 1;
    /// A request took too long (Parse's TIMEOUT).
    pub const TIMEOUT: i64 = 124;
}

/// Why a request was turned down, as the client is told: a Parse error code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: i64,
    pub message: String,
    /// It concerns the connection rather than one subscription: Parse then tells the client to
    /// reconnect and sends no requestId.
    pub reconnect: bool,
}

impl Refusal {
    /// A refusal of one subscription.
    pub fn new(code: i64, message: impl Into<String>) -> Refusal {
        Refusal { code, message: message.into(), reconnect: false }
    }
}

/// A client-chosen subscription id: a JSON number, which Parse Server (on Node) reads as a
/// JavaScript number, an f64. Two ids are one when their values are (`1`, `1.0`, `1e0` and
/// `10e-1`; `-0` and `0`), and an id is echoed as JavaScript prints it (`1e15` as
/// `1000000000000000`, `-0` as `0`, ECMAScript's `Number::toString`).
#[derive(Clone)]
pub struct RequestId {
    /// Never `-0`, and one NaN (which a JSON number cannot be anyway), so that equal values have
    /// equal bits.
    value: f64,
    text: Arc<str>,
}

impl RequestId {
    /// The id JavaScript reads for the number `value`.
    pub fn new(value: f64) -> RequestId {
        let value = if value == 0.0 {
            0.0
        } else if value.is_nan() {
            f64::NAN
        } else {
            value
        };
        RequestId { value, text: number::js_number(value).into() }
    }

    /// Its value (`0` for `-0`).
    pub fn as_f64(&self) -> f64 {
        self.value
    }

    /// The JSON text Parse Server writes for it.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl From<i64> for RequestId {
    fn from(n: i64) -> Self {
        RequestId::new(n as f64)
    }
}

impl PartialEq for RequestId {
    fn eq(&self, other: &Self) -> bool {
        self.value.to_bits() == other.value.to_bits()
    }
}

impl Eq for RequestId {}

impl Hash for RequestId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.value.to_bits().hash(state)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({})", self.text)
    }
}
