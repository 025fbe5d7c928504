//! Which event one change makes for one subscriber: Parse's decision table (§3.2 of the protocol
//! study), with read access as part of matching and `watch` filtering creates and updates. Pure.

use serde_json::Value;

use super::{Change, ChangeKind, RowImage};
use crate::auth::access::{can_read, Identity};
use crate::protocol::EventOp;
use crate::query::Query;

/// Whether a query matches the old and the new image of a change.
#[derive(Debug, Clone, Copy)]
pub(super) struct Matches {
    old: bool,
    new: bool,
}

impl Matches {
    pub(super) fn of(query: &Query, change: &Change) -> Matches {
        Matches {
            old: change.old.as_ref().is_some_and(|o| query.matches(&o.object)),
            new: change.new.as_ref().is_some_and(|n| query.matches(&n.object)),
        }
    }

    pub(super) fn any(self) -> bool {
        self.old || self.new
    }
}

/// The event a subscriber gets, finer than the wire op: Parse 2026 sends a different body when
/// read access (not the query) decided an enter or a leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Shape {
    Create,
    Update,
    Delete,
    Enter,
    Leave,
    /// Entered from a state the subscriber could not read: no `original`.
    EnterGranted,
    /// Left into a state the subscriber cannot read: `object` is the last state it could.
    LeaveRevoked,
}

impl Shape {
    pub(super) fn op(self) -> EventOp {
        match self {
            Shape::Create => EventOp::Create,
            Shape::Update => EventOp::Update,
            Shape::Delete => EventOp::Delete,
            Shape::Enter | Shape::EnterGranted => EventOp::Enter,
            Shape::Leave | Shape::LeaveRevoked => EventOp::Leave,
        }
    }

    /// The images an event of this shape carries: `(object, original)`.
    pub(super) fn images(self, change: &Change) -> (Option<&RowImage>, Option<&RowImage>) {
        let (old, new) = (change.old.as_ref(), change.new.as_ref());
        match self {
            Shape::Create | Shape::EnterGranted => (new, None),
            Shape::Delete => (old, None),
            Shape::LeaveRevoked => (old, old),
            Shape::Enter | Shape::Update | Shape::Leave => (new, old),
        }
    }
}

/// Parse's decision table for one subscriber: an image is visible when it matches the query and
/// the subscriber may read it; `watch` filters creates and updates.
pub(super) fn shape(change: &Change, matches: Matches, identity: &Identity, watch: Option<&[String]>) -> Option<Shape> {
    let readable = |image: &Option<RowImage>| image.as_ref().is_some_and(|i| can_read(i.acl.as_ref(), identity));
    let (old_readable, new_readable) = (readable(&change.old), readable(&change.new));
    let old_visible = matches.old && old_readable;
    let new_visible = matches.new && new_readable;
    let shape = match change.kind {
        ChangeKind::Delete => old_visible.then_some(Shape::Delete)?,
        ChangeKind::Insert => new_visible.then_some(Shape::Create)?,
        ChangeKind::Update => match (old_visible, new_visible) {
            (true, true) => Shape::Update,
            // A state the subscriber may not read is never sent, whether the query or the ACL
            // decided the leave or enter: a leave then shows the last readable state, an enter
            // comes without original.
            (true, false) if !new_readable => Shape::LeaveRevoked,
            (true, false) => Shape::Leave,
            (false, true) if !old_readable => Shape::EnterGranted,
            (false, true) => Shape::Enter,
            (false, false) => return None,
        },
    };
    if matches!(shape, Shape::Create | Shape::Update) && !watched_field_changed(watch, change) {
        return None;
    }
    Some(shape)
}

/// `watch`: a create or update is sent only when a watched field differs from the original
/// (a create compares with nothing, so it needs a watched field to be set). A NULL column is
/// an unset field, as in Parse.
fn watched_field_changed(watch: Option<&[String]>, change: &Change) -> bool {
    let Some(watch) = watch else { return true };
    let Some(new) = &change.new else { return true };
    watch.iter().any(|name| set_field(Some(new), name) != set_field(change.old.as_ref(), name))
}

fn set_field<'a>(image: Option<&'a RowImage>, name: &str) -> Option<&'a Value> {
    image.and_then(|i| i.object.get(name)).filter(|v| !v.is_null())
}
