//! Catch-up for a resuming subscriber: replays the changes it missed from retained history, in
//! order, into its outbox (waiting for the client, never dropping it), then registers it in the
//! hub at exactly the position the replay reached, so live delivery continues with no gap and no
//! duplicate. When the position cannot be honoured (pruned, another epoch) the subscriber is told
//! with a gap and goes live from now.
//!
//! The replay runs on its own task per subscription, so neither the hub nor the client's other
//! subscriptions wait for it.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::AbortHandle;

use crate::feed::History;
use crate::hub::{self, ConnectionId, Hub, Outbox, Outgoing, Reservation, Start, SubscribeError, Subscription};
use crate::position::{Gap, Position};
use crate::protocol::RequestId;

/// How long a position ahead of this gateway's live stream is given to be reached (another
/// gateway may be slightly ahead) before it is treated as history that was lost.
const AHEAD_GRACE: Duration = Duration::from_secs(2);

/// Builds the reply for a subscription that went live at a position.
pub type SubscribedReply = Box<dyn Fn(Position) -> Outgoing + Send + Sync>;
/// Builds the reply for a subscription the hub refused (`None`: send nothing).
pub type RefusedReply = Box<dyn Fn(&SubscribeError) -> Option<Outgoing> + Send + Sync>;

/// The replies a transport sends when catch-up ends.
pub struct Replies {
    pub subscribed: SubscribedReply,
    pub refused: RefusedReply,
}

/// One subscription to resume.
pub struct Resume {
    pub connection: ConnectionId,
    pub request_id: RequestId,
    pub subscription: Subscription,
    pub since: Position,
    pub outbox: Outbox,
    pub replies: Replies,
}

pub struct Catchup {
    hub: Arc<Hub>,
    history: Arc<History>,
}

impl std::fmt::Debug for Catchup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catchup").finish_non_exhaustive()
    }
}

impl Catchup {
    pub fn new(hub: Arc<Hub>, history: Arc<History>) -> Catchup {
        Catchup { hub, history }
    }

    /// Reserves the requestId and starts replaying. The caller may abort the task; the hub's
    /// reservation makes an unsubscribe during catch-up final either way.
    pub fn start(self: &Arc<Self>, resume: Resume) -> Result<AbortHandle, SubscribeError> {
        let ticket = self.hub.reserve(resume.connection, resume.request_id.clone())?;
        let catchup = self.clone();
        Ok(tokio::spawn(async move { catchup.run(resume, ticket).await }).abort_handle())
    }

    async fn run(&self, resume: Resume, ticket: Reservation) {
        let gap = match self.replay(&resume, ticket).await {
            Replayed::Live | Replayed::Gone => return,
            Replayed::Gap(gap) => gap,
        };
        let Resume { connection, request_id, subscription, outbox, replies, .. } = resume;
        // The gap carries the exact position the subscription goes live at (queued under the
        // hub's lock with the confirmation): the client refetches, then continues from there.
        let gap_request = request_id.clone();
        let subscribed = |position| {
            outbox.push(Outgoing::Gap { request_id: gap_request, gap, position });
            (replies.subscribed)(position)
        };
        if let Err(e) = self.hub.subscribe(connection, request_id, subscription, Start::Reserved(ticket), subscribed) {
            if let Some(reply) = (replies.refused)(&e) {
                outbox.push(reply);
            }
        }
    }

    /// Replays from `since` until the subscription is registered live where the replay ended.
    async fn replay(&self, resume: &Resume, ticket: Reservation) -> Replayed {
        let Resume { connection, request_id, subscription, since, outbox, replies } = resume;
        let mut cursor = since.offset;
        let mut waited = Duration::ZERO;
        loop {
            let live = self.hub.position();
            if live.epoch != since.epoch {
                return Replayed::Gap(Gap::Reset);
            }
            if cursor > live.offset {
                if waited >= AHEAD_GRACE {
                    return Replayed::Gap(Gap::Reset);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                waited += Duration::from_millis(20);
                continue;
            }
            while cursor < live.offset {
                let batch = loop {
                    match self.history.read(cursor, live.offset).await {
                        Ok(batch) => break batch,
                        Err(e) => {
                            tracing::warn!(error = %e, "reading history for a resuming client failed; retrying");
                            tokio::select! {
                                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                                _ = outbox.closed() => return Replayed::Gone,
                            }
                        }
                    }
                };
                if batch.epoch != since.epoch {
                    return Replayed::Gap(Gap::Reset);
                }
                if batch.floor > cursor {
                    return Replayed::Gap(Gap::Expired);
                }
                let Some(last) = batch.changes.last().map(|c| c.pos) else {
                    // Nothing after the cursor was pruned (checked above), so nothing is there.
                    cursor = live.offset;
                    break;
                };
                for change in &batch.changes {
                    if let Some(delivery) = hub::replay(subscription, request_id, change, since.epoch) {
                        if !outbox.send(Outgoing::Event(delivery)).await {
                            return Replayed::Gone;
                        }
                    }
                }
                cursor = last;
            }
            let at = Start::At(Position::new(since.epoch, cursor), ticket);
            let subscribed = |p| (replies.subscribed)(p);
            match self.hub.subscribe(*connection, request_id.clone(), subscription.clone(), at, subscribed) {
                Ok(_) => return Replayed::Live,
                // Live delivery moved on while we read: replay the difference and try again.
                Err(SubscribeError::Moved(_)) => continue,
                Err(e) => {
                    if let Some(reply) = (replies.refused)(&e) {
                        outbox.push(reply);
                    }
                    return Replayed::Gone;
                }
            }
        }
    }
}

enum Replayed {
    Live,
    Gap(Gap),
    Gone,
}
