//! One bounded send queue per connection, bounded in frames and in bytes. The hub pushes without
//! waiting; when either bound would be passed the connection is marked closed (its transport
//! then drops the client) and every later push is refused, so a slow client costs the hub one
//! failed push and holds at most its budget of memory.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::mpsc::error::TryRecvError;
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
    /// `position`. `snapshot`: the refetch follows (a `Result` with `reset`), and the client
    /// resumes from the `subscribed` after it, not from here.
    Gap { request_id: RequestId, gap: Gap, position: Position, snapshot: bool },
    /// The current rows of a subscription's query, encoded (a snapshot, or Parse's `query`).
    /// `reset`: it follows a gap, and replaces what the client had.
    Result { request_id: RequestId, objects: Vec<String>, reset: bool },
}

impl Outgoing {
    /// What the item accounts for in its queue's byte budget: the bytes it will be framed
    /// into, roughly (an event's shared payload counts for every queue holding it).
    pub fn size(&self) -> usize {
        const FRAMING: usize = 64;
        FRAMING
            + match self {
                Outgoing::Text(text) => text.len(),
                Outgoing::Event(d) => d.payload.object.len() + d.payload.original.as_ref().map_or(0, String::len),
                Outgoing::Refused { refusal, .. } => refusal.message.len(),
                Outgoing::Result { objects, .. } => objects.iter().map(|o| o.len() + 1).sum(),
                Outgoing::Subscribed { .. } | Outgoing::Gap { .. } => 0,
            }
    }
}

/// How much a connection's queue may hold before the client counts as too slow, and the
/// budget all queues share.
#[derive(Debug, Clone)]
pub struct QueueBudget {
    pub frames: usize,
    pub bytes: usize,
    pub total: Arc<TotalBudget>,
}

impl QueueBudget {
    /// A budget in frames only (tests, benches).
    pub fn frames(frames: usize) -> QueueBudget {
        QueueBudget { frames, bytes: usize::MAX, total: Arc::new(TotalBudget::new(usize::MAX)) }
    }
}

/// Bytes queued for all connections together (`limits.send_queue_bytes_total`). Past it, a
/// push to a queue holding more than an equal share of the total is refused and that client
/// cut: many slow clients together cannot exhaust memory, and the ones that are not behind
/// never pay for those that are.
#[derive(Debug)]
pub struct TotalBudget {
    queued: AtomicUsize,
    queues: AtomicUsize,
    limit: usize,
}

impl TotalBudget {
    pub fn new(limit: usize) -> TotalBudget {
        TotalBudget { queued: AtomicUsize::new(0), queues: AtomicUsize::new(0), limit }
    }

    /// Whether a queue holding `mine` bytes may take `size` more, as far as the total goes.
    fn admits(&self, mine: usize, size: usize) -> bool {
        let total = self.queued.fetch_add(size, Ordering::AcqRel).saturating_add(size);
        let share = self.limit / self.queues.load(Ordering::Acquire).max(1);
        if total <= self.limit || mine <= share {
            return true;
        }
        self.queued.fetch_sub(size, Ordering::AcqRel);
        false
    }

    fn release(&self, size: usize) {
        self.queued.fetch_sub(size, Ordering::AcqRel);
    }
}

#[derive(Debug, Clone)]
pub struct Delivery {
    pub op: EventOp,
    pub request_id: RequestId,
    pub payload: Arc<Payload>,
    /// The subscriber tracks positions: frame the event with its position.
    pub positioned: bool,
    /// Replayed from history to a resuming subscriber (counted apart from live events).
    pub replayed: bool,
}

/// Why an outbox was closed; the first reason given is the one kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCause {
    /// Its queue overflowed (or the total budget cut it): the client reads too slowly.
    TooSlow,
    /// The transport ended it (the client hung up, or the stream was dropped).
    Ended,
    /// The gateway is shutting down; every change up to `at` was queued before the close.
    Shutdown { at: Position },
}

#[derive(Debug)]
struct Closer {
    closed: AtomicBool,
    cause: OnceLock<CloseCause>,
    notify: Notify,
}

/// The sending half of a connection's queue, shared by the hub and the connection's session.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Outgoing>,
    closer: Arc<Closer>,
    /// Bytes queued and not yet taken by the transport.
    queued: Arc<AtomicUsize>,
    max_bytes: usize,
    total: Arc<TotalBudget>,
}

/// The receiving half, read by the connection's transport.
#[derive(Debug)]
pub struct Queue {
    rx: mpsc::Receiver<Outgoing>,
    queued: Arc<AtomicUsize>,
    total: Arc<TotalBudget>,
}

impl Queue {
    pub async fn recv(&mut self) -> Option<Outgoing> {
        let item = self.rx.recv().await?;
        self.taken(&item);
        Some(item)
    }

    /// Whether nothing is waiting (the transport has sent all it was given).
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    pub fn try_recv(&mut self) -> Result<Outgoing, TryRecvError> {
        let item = self.rx.try_recv()?;
        self.taken(&item);
        Ok(item)
    }

    fn taken(&self, item: &Outgoing) {
        let size = item.size();
        self.queued.fetch_sub(size, Ordering::AcqRel);
        self.total.release(size);
    }
}

/// What is left in a queue nobody reads any more leaves the total with it.
impl Drop for Queue {
    fn drop(&mut self) {
        self.rx.close();
        while self.try_recv().is_ok() {}
        self.total.queues.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Outbox {
    pub fn new(budget: QueueBudget) -> (Outbox, Queue) {
        let (tx, rx) = mpsc::channel(budget.frames.max(1));
        let closer = Arc::new(Closer { closed: AtomicBool::new(false), cause: OnceLock::new(), notify: Notify::new() });
        let queued = Arc::new(AtomicUsize::new(0));
        let total = budget.total;
        total.queues.fetch_add(1, Ordering::AcqRel);
        let outbox = Outbox { tx, closer, queued: queued.clone(), max_bytes: budget.bytes, total: total.clone() };
        (outbox, Queue { rx, queued, total })
    }

    /// Queues `item` without waiting. Returns false when it was not queued: the connection is
    /// closed, or is now, because the item would pass its budget of frames or bytes.
    pub fn push(&self, item: Outgoing) -> bool {
        if self.is_closed() {
            return false;
        }
        let size = item.size();
        let before = self.queued.fetch_add(size, Ordering::AcqRel);
        if before.saturating_add(size) > self.max_bytes || !self.total.admits(before, size) {
            self.queued.fetch_sub(size, Ordering::AcqRel);
            self.close();
            return false;
        }
        match self.tx.try_send(item) {
            Ok(()) => true,
            Err(e) => {
                self.queued.fetch_sub(size, Ordering::AcqRel);
                self.total.release(size);
                if matches!(e, mpsc::error::TrySendError::Full(_)) {
                    self.close();
                }
                false
            }
        }
    }

    /// How many frames the queue holds at most.
    pub fn capacity(&self) -> usize {
        self.tx.max_capacity()
    }

    /// How many bytes the queue holds at most.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Whether more than half of either budget is taken.
    fn crowded(&self) -> bool {
        self.tx.capacity() < self.tx.max_capacity() / 2 || self.queued.load(Ordering::Acquire) > self.max_bytes / 2
    }

    /// Queues `item` for catch-up, waiting while the queue is more than half full (in frames or
    /// bytes): a replay may outpace the client but must neither drop it nor take the room live
    /// events need (a live push into a full queue disconnects the client). Returns false when
    /// the connection is gone.
    pub async fn send(&self, item: Outgoing) -> bool {
        while self.crowded() {
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

    /// Marks the connection for disconnection because its queue overflowed.
    pub fn close(&self) {
        self.close_because(CloseCause::TooSlow);
    }

    /// Marks the connection for disconnection; its transport learns why from [`Outbox::cause`].
    pub fn close_because(&self, cause: CloseCause) {
        let _ = self.closer.cause.set(cause);
        if !self.closer.closed.swap(true, Ordering::AcqRel) {
            // Every waiter: a stream and its watch may both be waiting.
            self.closer.notify.notify_waiters();
        }
    }

    /// Why the outbox was closed; `None` while it is open.
    pub fn cause(&self) -> Option<CloseCause> {
        self.closer.cause.get().copied()
    }

    pub fn is_closed(&self) -> bool {
        self.closer.closed.load(Ordering::Acquire)
    }

    /// Resolves once the outbox has been closed (immediately if it already is).
    pub async fn closed(&self) {
        let notified = self.closer.notify.notified();
        tokio::pin!(notified);
        // Registered before the flag is read, so a close in between still wakes this waiter.
        notified.as_mut().enable();
        if self.is_closed() {
            return;
        }
        notified.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_closes_the_outbox() {
        let (outbox, mut rx) = Outbox::new(QueueBudget::frames(2));
        assert!(outbox.push(Outgoing::Text("1".into())));
        assert!(outbox.push(Outgoing::Text("2".into())));
        assert!(!outbox.push(Outgoing::Text("3".into())));
        assert!(outbox.is_closed());
        outbox.closed().await;
        assert!(!outbox.push(Outgoing::Text("4".into())), "a closed outbox takes nothing more");
        assert!(matches!(rx.recv().await, Some(Outgoing::Text(t)) if t == "1"));
    }

    #[tokio::test]
    async fn the_byte_budget_closes_the_outbox_and_frees_as_frames_leave() {
        let text = |n: usize| Outgoing::Text("x".repeat(n));
        let (outbox, mut rx) = Outbox::new(QueueBudget { bytes: 1_000, ..QueueBudget::frames(100) });
        assert!(outbox.push(text(400)));
        assert!(outbox.push(text(400)));
        rx.try_recv().unwrap();
        assert!(outbox.push(text(400)), "what the transport took is free again");
        assert!(!outbox.push(text(400)), "a push past the byte budget is refused");
        assert!(outbox.is_closed());
        rx.try_recv().unwrap();
        rx.try_recv().unwrap();
        assert_eq!(outbox.queued.load(Ordering::Acquire), 0, "the accounting balances");
    }

    #[tokio::test]
    async fn past_the_total_the_queues_holding_more_than_their_share_are_cut() {
        let total = Arc::new(TotalBudget::new(3_000));
        let budget = QueueBudget { frames: 100, bytes: usize::MAX, total: total.clone() };
        let (behind, _behind_rx) = Outbox::new(budget.clone());
        let (reading, mut reading_rx) = Outbox::new(budget.clone());
        let text = |n: usize| Outgoing::Text("x".repeat(n));
        for _ in 0..5 {
            assert!(behind.push(text(436))); // 500 bytes each with framing
        }
        assert!(reading.push(text(436)));
        // 3,000 in all now: the one behind (2,500, more than half) is cut, not the other.
        assert!(!behind.push(text(436)));
        assert!(behind.is_closed());
        reading_rx.try_recv().unwrap();
        assert!(reading.push(text(436)), "a queue within its share still takes events");
        drop((behind, _behind_rx));
        assert_eq!(total.queued.load(Ordering::Acquire), 500, "a dropped queue gives its bytes back");
    }
}
