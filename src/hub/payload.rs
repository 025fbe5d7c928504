//! Event bodies, encoded once per change and shared by every subscriber with the same event
//! shape and projection (`keys`, hidden fields). Pure.
//!
//! Projections are compared by pointer: the hub interns `keys` lists and class rules share
//! their hidden-field lists, so equal projections are one `Arc`, and finding a cached payload is
//! one hash lookup whatever the number or length of the lists. (A caller that does not intern
//! only loses sharing, never correctness.)

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::event::Shape;
use super::Change;
use crate::position::Position;

/// An encoded event body shared by every recipient with the same projection.
#[derive(Debug)]
pub struct Payload {
    pub position: Position,
    pub object: String,
    pub original: Option<String>,
    /// The change's capture time, ISO-8601 (SSE's `timestamp`).
    pub timestamp: Option<Arc<str>>,
}

/// Fields every projection keeps (Parse's `_toJSONWithFields`).
const ALWAYS_SENT: [&str; 5] = ["className", "objectId", "createdAt", "updatedAt", "ACL"];

fn encode(object: &Map<String, Value>, keys: Option<&Arc<[String]>>, hidden: Option<&Arc<[String]>>) -> String {
    let result = match (keys, hidden) {
        (None, None) => serde_json::to_string(object),
        _ => {
            // `keys` is sorted (see `Subscription::new`).
            let shown = |k: &str| {
                let selected = keys.is_none_or(|keys| {
                    ALWAYS_SENT.contains(&k) || keys.binary_search_by(|key| key.as_str().cmp(k)).is_ok()
                });
                selected && !hidden.is_some_and(|hidden| hidden.iter().any(|h| h == k))
            };
            let projected: Map<String, Value> =
                object.iter().filter(|(k, _)| shown(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
            serde_json::to_string(&projected)
        }
    };
    // A map of JSON values always serialises; an empty object is the harmless fallback.
    result.unwrap_or_else(|_| "{}".into())
}

/// Most payloads one change keeps for sharing; past it (a change reaching more distinct
/// projections than this) each further projection is encoded for its subscriber alone.
const CACHED_PAYLOADS: usize = 1_024;

/// An event shape and a projection, by the addresses of its lists (0: none).
type CacheKey = (Shape, usize, usize);

fn address(list: Option<&Arc<[String]>>) -> usize {
    list.map_or(0, |list| Arc::as_ptr(list) as *const String as usize)
}

/// Entries kept in a plain list before a hash map takes over: most changes meet one or two
/// projections, and comparing a few keys beats hashing them.
const LISTED: usize = 8;

/// Payloads of one change, encoded on first use and shared by every subscriber with the same
/// event shape and projection.
pub(super) struct PayloadCache<'a> {
    change: &'a Change,
    position: Position,
    timestamp: Option<Arc<str>>,
    listed: Vec<(CacheKey, Arc<Payload>)>,
    hashed: HashMap<CacheKey, Arc<Payload>>,
}

impl<'a> PayloadCache<'a> {
    pub(super) fn new(change: &'a Change, position: Position) -> Self {
        let timestamp = (change.captured_us > 0)
            .then(|| crate::value::format_instant(change.captured_us / 1000))
            .flatten()
            .map(Arc::from);
        PayloadCache { change, position, timestamp, listed: Vec::new(), hashed: HashMap::new() }
    }

    fn cached(&self, key: &CacheKey) -> Option<&Arc<Payload>> {
        match self.listed.iter().find(|(k, _)| k == key) {
            Some((_, payload)) => Some(payload),
            None => self.hashed.get(key),
        }
    }

    fn keep(&mut self, key: CacheKey, payload: Arc<Payload>) {
        if self.listed.len() < LISTED {
            self.listed.push((key, payload));
        } else if self.hashed.len() < CACHED_PAYLOADS {
            self.hashed.insert(key, payload);
        }
    }

    pub(super) fn get(
        &mut self,
        shape: Shape,
        keys: Option<&Arc<[String]>>,
        hidden: Option<&Arc<[String]>>,
    ) -> Arc<Payload> {
        let key = (shape, address(keys), address(hidden));
        if let Some(payload) = self.cached(&key) {
            return payload.clone();
        }
        let (object, original) = shape.images(self.change);
        let payload = Arc::new(Payload {
            position: self.position,
            object: object.map(|o| encode(&o.object, keys, hidden)).unwrap_or_else(|| "{}".into()),
            original: original.map(|o| encode(&o.object, keys, hidden)),
            timestamp: self.timestamp.clone(),
        });
        // The key's addresses stay valid: the lists outlive this change's fan-out.
        self.keep(key, payload.clone());
        payload
    }
}
