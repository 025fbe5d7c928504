//! History reads shared between resumes: many subscriptions resuming from nearby positions at
//! once (a reconnecting client's subscriptions, every client of a restarted gateway) read the
//! change table once, not once each.
//!
//! A read of `(after, upto]` for a class is kept for a moment ([`SHARE_FOR`]) as a *slot*; a
//! later (or concurrent) read of the same class and epoch whose `after` lies inside what the
//! slot covers is served from it: the changes after its own `after`, up to where the slot's
//! read reached. A read still in flight is awaited, not repeated. What a shared read returns is
//! exactly what its own read would have returned, possibly shorter (it reaches less far), which
//! the replay loop handles as one more batch.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, Shared};
use futures_util::FutureExt;
use uuid::Uuid;

use super::{HistoryBatch, HistoryError, HistorySource};

/// How long a finished read may serve others.
pub const SHARE_FOR: Duration = Duration::from_secs(2);
/// Most reads kept at once (each holds at most one batch of changes).
const SLOTS: usize = 16;

type Read = Shared<BoxFuture<'static, Result<Arc<HistoryBatch>, Arc<str>>>>;

struct Slot {
    class: Arc<str>,
    /// The epoch its reader expects: only readers expecting the same one share it.
    epoch: Uuid,
    after: i64,
    upto: i64,
    started: Instant,
    read: Read,
}

impl Slot {
    /// Whether a read of `(after, …]` may wait for this one: it starts at or before `after` and
    /// was asked to reach beyond it.
    fn may_serve(&self, class: &str, epoch: Uuid, after: i64) -> bool {
        &*self.class == class && self.epoch == epoch && self.after <= after && after < self.upto
    }
}

/// A [`HistorySource`] whose overlapping reads are done once.
pub struct SharedReads {
    source: Arc<dyn HistorySource>,
    slots: Mutex<VecDeque<Arc<Slot>>>,
}

impl SharedReads {
    pub fn new(source: Arc<dyn HistorySource>) -> SharedReads {
        SharedReads { source, slots: Mutex::new(VecDeque::new()) }
    }

    /// Changes of `class` with `after < pos <= upto`, for a reader that expects `epoch`: from a
    /// slot when one covers `after`, else from a read of its own (which others may then share).
    pub async fn read(&self, after: i64, upto: i64, class: &str, epoch: Uuid) -> Result<HistoryBatch, HistoryError> {
        if let Some(slot) = self.find(class, epoch, after) {
            if let Ok(batch) = slot.read.clone().await {
                if let Some(served) = serve(&batch, after, upto) {
                    return Ok(served);
                }
            }
        }
        let slot = self.start(after, upto, class, epoch);
        let batch = slot.read.clone().await.map_err(|e| HistoryError::from(e.to_string()));
        if batch.is_err() {
            self.forget(&slot);
        }
        // Its own read reaches beyond `after`, unless the source breaks its contract.
        let batch = batch?;
        serve(&batch, after, upto).ok_or_else(|| "a history read made no progress".into())
    }

    fn find(&self, class: &str, epoch: Uuid, after: i64) -> Option<Arc<Slot>> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.retain(|s| s.started.elapsed() < SHARE_FOR);
        slots.iter().rev().find(|s| s.may_serve(class, epoch, after)).cloned()
    }

    fn start(&self, after: i64, upto: i64, class: &str, epoch: Uuid) -> Arc<Slot> {
        let (source, owned_class) = (self.source.clone(), class.to_string());
        let read = async move {
            match source.read(after, upto, &owned_class).await {
                Ok(batch) => Ok(Arc::new(batch)),
                Err(e) => Err(Arc::<str>::from(e.to_string())),
            }
        }
        .boxed()
        .shared();
        let slot = Arc::new(Slot { class: class.into(), epoch, after, upto, started: Instant::now(), read });
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if slots.len() >= SLOTS {
            slots.pop_front();
        }
        slots.push_back(slot.clone());
        slot
    }

    /// A failed read serves nobody.
    fn forget(&self, slot: &Arc<Slot>) {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).retain(|s| !Arc::ptr_eq(s, slot));
    }
}

/// What `batch` (a read of some `(a, u]` with `a <= after`) holds for a read of `(after, upto]`:
/// its changes in that range, reaching as far as both reads do; `None` when it reaches no
/// further than `after`. Another epoch's batch is handed on as it is (the replay then stops
/// with a gap).
fn serve(batch: &HistoryBatch, after: i64, upto: i64) -> Option<HistoryBatch> {
    let reached = batch.reached.min(upto);
    if reached <= after {
        return None;
    }
    let changes = batch.changes.iter().filter(|c| c.pos > after && c.pos <= reached).cloned().collect();
    Some(HistoryBatch { epoch: batch.epoch, floor: batch.floor, changes, reached })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::json;
    use tokio::sync::Notify;

    use super::*;
    use crate::hub::{Change, ChangeKind, RowImage};

    /// Changes 1..=100 of class `Msg`, in batches of 10, counting reads; each read waits for
    /// `gate` when there is one.
    struct Counted {
        epoch: Uuid,
        reads: AtomicUsize,
        gate: Option<Arc<Notify>>,
    }

    impl HistorySource for Counted {
        fn read<'a>(
            &'a self,
            after: i64,
            upto: i64,
            class: &'a str,
        ) -> BoxFuture<'a, Result<HistoryBatch, HistoryError>> {
            Box::pin(async move {
                self.reads.fetch_add(1, Ordering::SeqCst);
                if let Some(gate) = &self.gate {
                    gate.notified().await;
                }
                let changes: Vec<Arc<Change>> = (after + 1..=upto.min(100))
                    .filter(|_| class == "Msg")
                    .take(10)
                    .map(|pos| Arc::new(change(pos)))
                    .collect();
                let reached = if changes.len() == 10 { changes[9].pos } else { upto };
                Ok(HistoryBatch { epoch: self.epoch, floor: 0, changes, reached })
            })
        }
    }

    fn change(pos: i64) -> Change {
        let object = json!({"objectId": pos.to_string()}).as_object().cloned().unwrap();
        Change {
            pos,
            class: "Msg".into(),
            kind: ChangeKind::Insert,
            old: None,
            new: Some(RowImage { object, acl: None }),
            captured_us: 0,
        }
    }

    fn positions(batch: &HistoryBatch) -> Vec<i64> {
        batch.changes.iter().map(|c| c.pos).collect()
    }

    #[tokio::test]
    async fn concurrent_reads_from_nearby_positions_read_once() {
        let epoch = Uuid::new_v4();
        let gate = Arc::new(Notify::new());
        let source = Arc::new(Counted { epoch, reads: AtomicUsize::new(0), gate: Some(gate.clone()) });
        let shared = Arc::new(SharedReads::new(source.clone()));
        let first = tokio::spawn({
            let shared = shared.clone();
            async move { shared.read(0, 100, "Msg", epoch).await.unwrap() }
        });
        tokio::task::yield_now().await;
        let nearby: Vec<_> = (1..=5)
            .map(|after| {
                let shared = shared.clone();
                tokio::spawn(async move { shared.read(after, 100, "Msg", epoch).await.unwrap() })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        gate.notify_waiters();
        assert_eq!(positions(&first.await.unwrap()), (1..=10).collect::<Vec<_>>());
        for (after, read) in (1..=5).zip(nearby) {
            let batch = read.await.unwrap();
            assert_eq!(positions(&batch), (after + 1..=10).collect::<Vec<_>>(), "from its own position");
            assert_eq!(batch.reached, 10, "as far as the shared read reached");
        }
        assert_eq!(source.reads.load(Ordering::SeqCst), 1, "one read for six resumes");
    }

    #[tokio::test]
    async fn reads_outside_a_slot_epoch_or_class_read_for_themselves() {
        let epoch = Uuid::new_v4();
        let source = Arc::new(Counted { epoch, reads: AtomicUsize::new(0), gate: None });
        let shared = SharedReads::new(source.clone());
        let batch = shared.read(20, 50, "Msg", epoch).await.unwrap();
        assert_eq!((positions(&batch).len(), batch.reached), (10, 30));
        let inside = shared.read(25, 40, "Msg", epoch).await.unwrap();
        assert_eq!((positions(&inside), inside.reached), ((26..=30).collect(), 30), "served, shorter");
        assert_eq!(source.reads.load(Ordering::SeqCst), 1);
        let before = shared.read(10, 50, "Msg", epoch).await.unwrap();
        assert_eq!(positions(&before), (11..=20).collect::<Vec<_>>());
        let beyond = shared.read(30, 50, "Msg", epoch).await.unwrap();
        assert_eq!(positions(&beyond), (31..=40).collect::<Vec<_>>(), "the slot reached no further than 30");
        shared.read(25, 50, "Other", epoch).await.unwrap();
        shared.read(25, 50, "Msg", Uuid::new_v4()).await.unwrap();
        assert_eq!(source.reads.load(Ordering::SeqCst), 5);
        let short = shared.read(95, 100, "Msg", epoch).await.unwrap();
        assert_eq!((positions(&short), short.reached), ((96..=100).collect(), 100));
    }
}
