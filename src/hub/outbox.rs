//! One bounded send queue per connection. The hub pushes without waiting; when the queue is
//! full the connection is marked closed (its transport then drops the client) and every later
//! push is refused, so a slow client costs the hub one failed `try_send` and nothing else.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use super::Payload;
use crate::position::{Gap, Position};
use crate::protocol::{EventOp, Refusal, RequestId};

/// What a connection's transport receives; each transport frames it its own way.
#[derive(Debug)]
pub enum Outgoing {
    /// A protocol reply, already encoded by the connection's session.
    Text(String),
    /// A subscription is live from `position`: every later change of its query follows.
    /// `positioned`: the subscriber tracks positions, so the confirmation carries it.
    Subscribed { request_id: RequestId, position: Position, positioned: bool },
    /// A subscription could not be started (or could not go live after catching up).
    Refused { request_id: RequestId, refusal: Refusal },
    /// A data event for one subscription; the transport frames it.
    Event(Delivery),
    /// A subscription's history has a hole: the client must refetch, then continues live from
    /// `position`.
    Gap { request_id: RequestId, gap: Gap, position: Position },
}

#[derive(Debug, Clone)]
pub struct Delivery {
    pub op: EventOp,
    pub request_id: RequestId,
    pub payload: Arc<Payload>,
    /// The subscriber tracks positions: frame the event with its position.
    pub positioned: bool,
}

#[derive(Debug)]
struct Closer {
    closed: AtomicBool,
    notify: Notify,
}

/// The sending half of a connection's queue, shared by the hub and the connection's session.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Outgoing>,
    closer: Arc<Closer>,
}

impl Outbox {
    pub fn new(capacity: usize) -> (Outbox, mpsc::Receiver<Outgoing>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let closer = Arc::new(Closer { closed: AtomicBool::new(false), notify: Notify::new() });
        (Outbox { tx, closer }, rx)
    }

    /// Queues `item` without waiting. Returns false when it was not queued.
    pub fn push(&self, item: Outgoing) -> bool {
        if self.is_closed() {
            return false;
        }
        match self.tx.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.close();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Queues `item` for catch-up, waiting while the queue is more than half full: a replay may
    /// outpace the client but must neither drop it nor take the room live events need (a live
    /// push into a full queue disconnects the client). Returns false when the connection is gone.
    pub async fn send(&self, item: Outgoing) -> bool {
        let headroom = self.tx.max_capacity() / 2;
        while self.tx.capacity() < headroom {
            if self.is_closed() || self.tx.is_closed() {
                return false;
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_millis(2)) => {}
                _ = self.closed() => return false,
            }
        }
        self.push(item)
    }

    /// Marks the connection for disconnection (its queue overflowed, or it is shutting down).
    pub fn close(&self) {
        if !self.closer.closed.swap(true, Ordering::AcqRel) {
            self.closer.notify.notify_one();
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closer.closed.load(Ordering::Acquire)
    }

    /// Resolves once the outbox has been closed (immediately if it already is).
    pub async fn closed(&self) {
        if self.is_closed() {
            return;
        }
        self.closer.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_closes_the_outbox() {
        let (outbox, mut rx) = Outbox::new(2);
        assert!(outbox.push(Outgoing::Text("1".into())));
        assert!(outbox.push(Outgoing::Text("2".into())));
        assert!(!outbox.push(Outgoing::Text("3".into())));
        assert!(outbox.is_closed());
        outbox.closed().await;
        assert!(!outbox.push(Outgoing::Text("4".into())), "a closed outbox takes nothing more");
        assert!(matches!(rx.recv().await, Some(Outgoing::Text(t)) if t == "1"));
    }
}
