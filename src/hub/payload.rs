//! Event bodies, encoded once per change and shared by every subscriber with the same event
//! shape and projection (`keys`, hidden fields). Pure.

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
}

/// Fields every projection keeps (Parse's `_toJSONWithFields`).
const ALWAYS_SENT: [&str; 5] = ["className", "objectId", "createdAt", "updatedAt", "ACL"];

fn encode(object: &Map<String, Value>, keys: Option<&Arc<[String]>>, hidden: Option<&Arc<[String]>>) -> String {
    let result = match (keys, hidden) {
        (None, None) => serde_json::to_string(object),
        _ => {
            let shown = |k: &str| {
                let selected = keys.is_none_or(|keys| ALWAYS_SENT.contains(&k) || keys.iter().any(|key| key == k));
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

/// A subscription's `keys` (`None` sends whole objects) and its hidden fields.
type Projection = (Option<Arc<[String]>>, Option<Arc<[String]>>);

/// Payloads of one change, encoded on first use and shared by every subscriber with the same
/// event shape and projection.
pub(super) struct PayloadCache<'a> {
    change: &'a Change,
    position: Position,
    entries: Vec<(Shape, Projection, Arc<Payload>)>,
}

impl<'a> PayloadCache<'a> {
    pub(super) fn new(change: &'a Change, position: Position) -> Self {
        PayloadCache { change, position, entries: Vec::new() }
    }

    pub(super) fn get(
        &mut self,
        shape: Shape,
        keys: Option<&Arc<[String]>>,
        hidden: Option<&Arc<[String]>>,
    ) -> Arc<Payload> {
        let same = |a: &Option<Arc<[String]>>, b: Option<&Arc<[String]>>| match (a, b) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
            _ => false,
        };
        let same_projection = |(k, h): &Projection| same(k, keys) && same(h, hidden);
        if let Some((_, _, payload)) = self.entries.iter().find(|(s, p, _)| *s == shape && same_projection(p)) {
            return payload.clone();
        }
        let (object, original) = shape.images(self.change);
        let payload = Arc::new(Payload {
            position: self.position,
            object: object.map(|o| encode(&o.object, keys, hidden)).unwrap_or_else(|| "{}".into()),
            original: original.map(|o| encode(&o.object, keys, hidden)),
        });
        self.entries.push((shape, (keys.cloned(), hidden.cloned()), payload.clone()));
        payload
    }
}
