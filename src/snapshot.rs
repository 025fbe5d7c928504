//! Snapshots: the current rows of a subscription's query, taken at a stream position, so that a
//! client gets both the state and then exactly the changes after it.
//!
//! The consistency contract. A [`SnapshotRead`] is the set of rows visible in one database
//! snapshot S, with the stream `head` H as S sees it. Every change visible in S is either
//! sequenced at or below H, or was committed but not yet sequenced when S was taken: those are
//! waited for until they have positions, which are returned as `skip`. Every change not visible
//! in S gets a position above H. So the rows reflect exactly: the changes up to H, plus those at
//! the `skip` positions; the subscription then resumes from H through catch-up, skipping those
//! positions ([`crate::catchup::Resume::skip`]): no change is missing, none is applied twice.
//!
//! Rows come through [`SnapshotSource`] (the feed in production): the source narrows the read in
//! SQL where it can (a superset), and every candidate row is decided by `encode`, which applies
//! the same matcher, read access and projection as a live event.

use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::future::BoxFuture;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::hub::{self, Change, Subscription};
use crate::protocol::{code, Refusal, RequestId};

/// A snapshot's rows, encoded as the objects a client receives, and where it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRead {
    pub epoch: Uuid,
    /// The stream head as the snapshot saw it.
    pub head: i64,
    /// Positions above `head` of changes the snapshot already reflects (committed but not yet
    /// sequenced when it was taken), ascending.
    pub skip: Vec<i64>,
    /// One JSON object per matching row, as `encode` made it.
    pub objects: Vec<String>,
}

/// Why no snapshot could be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotError {
    /// More rows match than `limits.snapshot_rows`.
    TooManyRows { limit: usize },
    /// The rows would take more than half of the connection's send queue
    /// (`limits.send_queue_bytes`): sent whole, they would cut the client off as too slow.
    TooLarge { limit_bytes: usize },
    /// The read took longer than `limits.snapshot_timeout_ms`.
    Timeout { limit_ms: u64 },
    /// The database could not be read.
    Unavailable(String),
}

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotError::TooManyRows { limit } => write!(
                f,
                "The snapshot has more than limits.snapshot_rows ({limit}) rows; narrow the query or subscribe without a snapshot"
            ),
            SnapshotError::TooLarge { limit_bytes } => write!(
                f,
                "The snapshot is larger than half of limits.send_queue_bytes ({limit_bytes} bytes); narrow the query or its keys"
            ),
            SnapshotError::Timeout { limit_ms } => {
                write!(f, "The snapshot took longer than limits.snapshot_timeout_ms ({limit_ms} ms)")
            }
            SnapshotError::Unavailable(why) => write!(f, "A snapshot cannot be taken now: {why}"),
        }
    }
}

impl SnapshotError {
    /// What the client is told: 155 past the row limit, 124 past the timeout, 1 otherwise.
    pub fn refusal(&self) -> Refusal {
        let code = match self {
            SnapshotError::TooManyRows { .. } | SnapshotError::TooLarge { .. } => code::LIMIT_EXCEEDED,
            SnapshotError::Timeout { .. } => code::TIMEOUT,
            SnapshotError::Unavailable(_) => code::INTERNAL,
        };
        Refusal::new(code, self.to_string())
    }
}

/// The current rows of an (authorized) subscription's query, as its events would carry them:
/// matched, read access checked, projected, protected fields stripped; at most `rows` of them,
/// and at most `bytes` of encoded objects (the result is queued to the client whole).
pub async fn take(
    source: &dyn SnapshotSource,
    subscription: &Subscription,
    where_: &Map<String, Value>,
    request_id: &RequestId,
    rows: usize,
    bytes: usize,
) -> Result<SnapshotRead, SnapshotError> {
    let taken = AtomicUsize::new(0);
    let encode = |change: &Change| {
        let object = hub::replay(subscription, request_id, change, Uuid::nil())?.payload.object.clone();
        // Past the budget nothing more is kept (the read fails below), so memory stays bounded.
        let before = taken.fetch_add(object.len() + 1, Ordering::Relaxed);
        (before + object.len() < bytes).then_some(object)
    };
    let read = source.read(&subscription.class, where_, &encode, rows).await?;
    if taken.load(Ordering::Relaxed) >= bytes {
        return Err(SnapshotError::TooLarge { limit_bytes: bytes });
    }
    Ok(read)
}

/// Turns one candidate row (an insert of it, at the snapshot's position) into the object the
/// subscriber receives, or `None` when it does not match or may not be read.
pub type Encode<'a> = &'a (dyn Fn(&Change) -> Option<String> + Sync);

/// Reads snapshots: the feed's tables in production, a list in unit tests.
pub trait SnapshotSource: Send + Sync {
    /// The rows of `class` that `encode` accepts, at most `limit` of them, narrowed in the
    /// database by what of `where_` it can evaluate (the decision stays `encode`'s).
    fn read<'a>(
        &'a self,
        class: &'a str,
        where_: &'a Map<String, Value>,
        encode: Encode<'a>,
        limit: usize,
    ) -> BoxFuture<'a, Result<SnapshotRead, SnapshotError>>;
}
