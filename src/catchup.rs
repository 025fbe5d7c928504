//! Catch-up for a resuming subscriber: replays the changes it missed from retained history, in
//! order, into its outbox (waiting for the client, never dropping it), joins the hub where it
//! stands with its live events held back ([`Start::Held`]), replays what was published during
//! the first read, and then has the hub release the held events after `subscribed`: live
//! delivery continues with no gap and no duplicate, in two reads however fast changes come. When the position cannot be honoured (pruned, another epoch, too far ahead) the
//! subscriber is told with a gap and goes live from now.
//!
//! The replay runs on its own task per subscription, so neither the hub nor the client's other
//! subscriptions wait for it. History comes through [`HistorySource`] (the feed's change table
//! in production, a list in the tests below).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::task::AbortHandle;
use uuid::Uuid;

use crate::hub::{self, Change, ConnectionId, Hub, Outbox, Outgoing, Reservation, Start, SubscribeError, Subscription};
use crate::position::{Gap, Position};
use crate::protocol::RequestId;
use crate::snapshot::{self, SnapshotSource};
use serde_json::{Map, Value};

/// How long a position ahead of this gateway's live stream is given to be reached (another
/// gateway may be slightly ahead) before it is treated as history that was lost.
const AHEAD_GRACE: Duration = Duration::from_secs(2);
/// How often a position ahead of the live stream is looked at again.
const AHEAD_POLL: Duration = Duration::from_millis(20);
/// Pause before retrying a failed history read.
const READ_RETRY: Duration = Duration::from_millis(500);

/// One read of history, with the stream state it was read under (one snapshot).
#[derive(Debug)]
pub struct HistoryBatch {
    pub epoch: Uuid,
    /// Changes at or below the floor are gone.
    pub floor: i64,
    /// In position order, at most one batch.
    pub changes: Vec<Arc<Change>>,
    /// How far the read reached: every change of the class in `(after, reached]` is in
    /// `changes` (the last one's position when the batch is full, else the `upto` asked for).
    pub reached: i64,
}

pub type HistoryError = Box<dyn std::error::Error + Send + Sync>;

/// Retained changes, as catch-up reads them.
pub trait HistorySource: Send + Sync {
    /// Changes of `class` with `after < pos <= upto`, at most one batch. The epoch and floor are
    /// read in the same snapshot, so if `floor <= after` the batch is complete however pruning
    /// races.
    fn read<'a>(&'a self, after: i64, upto: i64, class: &'a str) -> BoxFuture<'a, Result<HistoryBatch, HistoryError>>;
}

/// One subscription to resume.
pub struct Resume {
    pub connection: ConnectionId,
    pub request_id: RequestId,
    pub subscription: Subscription,
    pub since: Position,
    pub outbox: Outbox,
    /// Positions after `since` not to replay, ascending: the changes a snapshot taken at
    /// `since` already reflects (see [`crate::snapshot`]). The replay reaches past the last one
    /// before going live.
    pub skip: Vec<i64>,
    /// The client wants snapshots: when `since` cannot be replayed, it gets the gap, then a
    /// fresh snapshot of this `where` (`reset`), then the changes after it.
    pub resnapshot: Option<Arc<Map<String, Value>>>,
}

pub struct Catchup {
    hub: Arc<Hub>,
    history: SharedReads,
    snapshots: Arc<dyn SnapshotSource>,
    /// Most rows in a snapshot (`limits.snapshot_rows`).
    snapshot_rows: usize,
    /// Most changes one resume replays (`limits.replay_changes`); further behind is a gap.
    max_replay: u64,
}

impl std::fmt::Debug for Catchup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catchup").finish_non_exhaustive()
    }
}

/// How a replay ended.
enum Replayed {
    /// Registered live where the replay ended (or after a gap found once joined).
    Live,
    /// History cannot be replayed: go live from now after telling the client.
    Gap(Gap),
    /// The client left, or the hub refused it (and the client was told).
    Gone,
}

impl Catchup {
    pub fn new(
        hub: Arc<Hub>,
        history: Arc<dyn HistorySource>,
        max_replay: u64,
        snapshots: Arc<dyn SnapshotSource>,
        snapshot_rows: usize,
    ) -> Catchup {
        Catchup { hub, history: SharedReads::new(history), max_replay, snapshots, snapshot_rows }
    }

    /// Reserves the requestId and starts replaying. The caller may abort the task; the hub's
    /// reservation makes an unsubscribe during catch-up final either way.
    pub fn start(self: &Arc<Self>, resume: Resume) -> Result<AbortHandle, SubscribeError> {
        let ticket = self.hub.reserve(resume.connection, resume.request_id.clone())?;
        let catchup = self.clone();
        Ok(tokio::spawn(async move { catchup.run(resume, ticket).await }).abort_handle())
    }

    async fn run(&self, mut resume: Resume, ticket: Reservation) {
        let gap = match self.replay(&resume, ticket).await {
            Replayed::Live | Replayed::Gone => return,
            Replayed::Gap(gap) => gap,
        };
        if let Some(where_) = resume.resnapshot.take() {
            return self.resnapshot(resume, ticket, gap, &where_).await;
        }
        // The hub queues the gap, at the exact position the subscription goes live at, under
        // its lock with the confirmation: the client refetches, then continues from there.
        let Resume { connection, request_id, subscription, outbox, .. } = resume;
        if let Err(e) = self.hub.subscribe(connection, request_id.clone(), subscription, Start::AfterGap(ticket, gap)) {
            refuse(&outbox, request_id, &e);
        }
    }

    /// The gap, then a fresh snapshot (`reset`), then the changes after it, as a snapshot
    /// subscription starts; a second gap in a row (history lost again meanwhile) is only a gap.
    async fn resnapshot(&self, resume: Resume, ticket: Reservation, gap: Gap, where_: &Map<String, Value>) {
        let Resume { request_id, subscription, outbox, .. } = &resume;
        let (rows, bytes) = (self.snapshot_rows, outbox.max_bytes() / 2);
        let read = snapshot::take(&*self.snapshots, subscription, where_, request_id, rows, bytes).await;
        let read = match read {
            Ok(read) => read,
            Err(e) => {
                self.hub.unsubscribe(resume.connection, request_id);
                outbox.push(Outgoing::Refused { request_id: request_id.clone(), refusal: e.refusal() });
                return;
            }
        };
        let at = Position::new(read.epoch, read.head);
        let (request_id, objects) = (request_id.clone(), read.objects);
        let told = Outgoing::Gap { request_id: request_id.clone(), gap, position: at, snapshot: true };
        if !outbox.send(told).await || !outbox.send(Outgoing::Result { request_id, objects, reset: true }).await {
            return;
        }
        let resume = Resume { since: at, skip: read.skip, resnapshot: None, ..resume };
        Box::pin(self.run(resume, ticket)).await
    }

    /// Replays from `since` up to where the hub stands, joins the hub there holding live events
    /// back, replays what was published meanwhile, then releases the held events after it. Two
    /// reads whatever the write rate: the first may be long, the second covers only the time the
    /// first took.
    async fn replay(&self, resume: &Resume, ticket: Reservation) -> Replayed {
        let Resume { connection, request_id, subscription, since, outbox, skip, .. } = resume;
        let mut cursor = since.offset;
        let must_reach = skip.last().copied().unwrap_or(cursor).max(cursor);
        let live = match self.reachable(*since, must_reach).await {
            Ok(live) => live,
            Err(gap) => return Replayed::Gap(gap),
        };
        if let Err(ended) = self.replay_upto(resume, &mut cursor, live).await {
            return ended;
        }
        let joined =
            match self.hub.subscribe(*connection, request_id.clone(), subscription.clone(), Start::Held(ticket)) {
                Ok(joined) => joined,
                Err(e) => {
                    refuse(outbox, request_id.clone(), &e);
                    return Replayed::Gone;
                }
            };
        // From here on, live events are held for this subscription: history supplies the rest.
        let gap = match self.replay_upto(resume, &mut cursor, joined.offset).await {
            Ok(()) if joined.epoch == since.epoch => None,
            Ok(()) => Some(Gap::Reset),
            Err(Replayed::Gap(gap)) => Some(gap),
            Err(ended) => return ended,
        };
        match self.hub.release(*connection, request_id, ticket, gap) {
            Ok(_) => Replayed::Live,
            Err(e) => {
                refuse(outbox, request_id.clone(), &e);
                Replayed::Gone
            }
        }
    }

    /// The live offset to replay up to, once the hub has reached `cursor` in `since`'s epoch.
    async fn reachable(&self, since: Position, cursor: i64) -> Result<i64, Gap> {
        let mut waited = Duration::ZERO;
        loop {
            let live = self.hub.position();
            if live.epoch != since.epoch {
                return Err(Gap::Reset);
            }
            if cursor <= live.offset {
                // Positions number the changes, so this is how many the replay would read.
                let behind = live.offset.abs_diff(cursor);
                return if behind > self.max_replay { Err(Gap::Expired) } else { Ok(live.offset) };
            }
            if waited >= AHEAD_GRACE {
                return Err(Gap::Reset);
            }
            tokio::time::sleep(AHEAD_POLL).await;
            waited += AHEAD_POLL;
        }
    }

    /// Replays history in `(cursor, upto]` into the outbox, moving `cursor` along.
    async fn replay_upto(&self, resume: &Resume, cursor: &mut i64, upto: i64) -> Result<(), Replayed> {
        let Resume { request_id, subscription, since, outbox, skip, .. } = resume;
        while *cursor < upto {
            let class = &subscription.class;
            let batch = self.read(*cursor, upto, class, since.epoch, outbox).await.ok_or(Replayed::Gone)?;
            if batch.epoch != since.epoch {
                return Err(Replayed::Gap(Gap::Reset));
            }
            if batch.floor > *cursor {
                return Err(Replayed::Gap(Gap::Expired));
            }
            // Nothing after the cursor was pruned (checked above), so `changes` is all there is
            // up to where the read reached.
            for change in batch.changes.iter().filter(|c| skip.binary_search(&c.pos).is_err()) {
                if let Some(delivery) = hub::replay(subscription, request_id, change, since.epoch) {
                    if !outbox.send(Outgoing::Event(delivery)).await {
                        return Err(Replayed::Gone);
                    }
                }
            }
            *cursor = batch.reached;
        }
        Ok(())
    }

    /// One batch of history, retried until it is read; `None` when the client left meanwhile.
    async fn read(&self, after: i64, upto: i64, class: &str, epoch: Uuid, outbox: &Outbox) -> Option<HistoryBatch> {
        loop {
            match self.history.read(after, upto, class, epoch).await {
                Ok(batch) => return Some(batch),
                Err(e) => {
                    tracing::warn!(error = %e, "reading history for a resuming client failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(READ_RETRY) => {}
                        _ = outbox.closed() => return None,
                    }
                }
            }
        }
    }
}

/// Tells the client why its subscription could not go live, when there is something to say.
fn refuse(outbox: &Outbox, request_id: RequestId, error: &SubscribeError) {
    if let Some(refusal) = error.refusal() {
        outbox.push(Outgoing::Refused { request_id, refusal });
    }
}

mod shared;

pub use shared::SharedReads;

#[cfg(test)]
mod tests;
