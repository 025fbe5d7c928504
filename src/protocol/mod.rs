//! The Parse LiveQuery wire protocol: client requests (validated the way Parse's tv4 schemas
//! validate them, with the same first-error messages), server frames with Parse's exact key
//! order, and error codes. Pure: no I/O, no hub.

mod request;
mod response;

pub use request::{decode, Connect, Decoded, KeyPairs, Request, Subscribe};
pub use response::{encode_error, encode_event, encode_reply, EventOp, Reply};

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

/// A client-chosen subscription id: any JSON number, echoed back exactly as received.
/// Two ids are the same when JavaScript would print them the same.
#[derive(Clone)]
pub struct RequestId {
    number: serde_json::Number,
    text: Arc<str>,
}

impl RequestId {
    pub fn new(number: serde_json::Number) -> RequestId {
        let text: Arc<str> = match number.as_f64() {
            // 1.0 and 1 are one id in JavaScript, and it prints it "1".
            Some(f) if f.fract() == 0.0 && f.abs() < 1e15 && !number.is_i64() && !number.is_u64() => {
                format!("{}", f as i64).into()
            }
            _ => number.to_string().into(),
        };
        RequestId { number, text }
    }

    pub fn as_number(&self) -> &serde_json::Number {
        &self.number
    }
}

impl From<i64> for RequestId {
    fn from(n: i64) -> Self {
        RequestId::new(n.into())
    }
}

impl PartialEq for RequestId {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for RequestId {}

impl Hash for RequestId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.text.hash(state)
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
