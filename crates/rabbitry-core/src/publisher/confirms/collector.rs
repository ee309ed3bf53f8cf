//! The collector: reads every confirm of one channel, files returns under
//! their message's id, and reports verdicts in publish order once they can
//! no longer change.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use lapin::Confirmation;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio::time::Instant;

use super::{Event, IdHash, Publish, Reply, Shared, Verdict, lock};

/// How long a collector whose channel is gone waits for confirms nobody is
/// waiting for any more, before it stops.
const DRAIN_AFTER_CLOSE: Duration = Duration::from_secs(60);

/// Nacks in a row after which a channel leaves the pool.
pub(super) const NACKS_BEFORE_NEW_CHANNEL: u32 = 64;

/// More unclaimed returns than this: retire the channel.
const MAX_UNCLAIMED_RETURNS: usize = 10_000;

type Resolved = (u64, lapin::Result<Confirmation>);

/// One registered publish and its ticket.
struct Awaiting {
    ticket: u64,
    publish: Publish,
}

impl Future for Awaiting {
    type Output = Resolved;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Resolved> {
        let ticket = self.ticket;
        self.publish
            .as_mut()
            .poll(cx)
            .map(|result| (ticket, result))
    }
}

enum Slot {
    Waiting {
        message_id: IdHash,
        reply: oneshot::Sender<Reply>,
        _permit: OwnedSemaphorePermit,
        sent_at: Instant,
    },
    Resolved {
        message_id: IdHash,
        reply: oneshot::Sender<Reply>,
        _permit: OwnedSemaphorePermit,
        sent_at: Instant,
        barrier: u64,
        outcome: Outcome,
    },
    Cancelled,
}

/// What lapin said of one confirm, its return filed away.
enum Outcome {
    Ack,
    Nack,
    NotRequested,
    Failed(String),
}

pub(super) struct Collector {
    issued: Arc<AtomicU64>,
    retired: Arc<AtomicBool>,
    /// The ticket of `slots[0]`: every ticket below it has been reported.
    base: u64,
    /// One entry per ticket from `base` on: `None` until the publish
    /// registers or gives up.
    slots: VecDeque<Option<Slot>>,
    /// Every ticket below this one has registered or given up.
    accounted_below: u64,
    inflight: FuturesUnordered<Awaiting>,
    ids: RandomState,
    /// Return replies by the returned message's id, not yet claimed.
    returns: HashMap<IdHash, VecDeque<String>>,
    /// Why the channel was retired, once it is.
    retired_because: Option<String>,
    /// Nacks reported in a row, with no ack between.
    nacks_in_a_row: u32,
}

impl Collector {
    pub(super) fn new(issued: Arc<AtomicU64>, retired: Arc<AtomicBool>, ids: RandomState) -> Self {
        Self {
            issued,
            ids,
            retired,
            base: 0,
            slots: VecDeque::new(),
            accounted_below: 0,
            inflight: FuturesUnordered::new(),
            returns: HashMap::new(),
            retired_because: None,
            nacks_in_a_row: 0,
        }
    }

    pub(super) async fn run(mut self, shared: Arc<Mutex<Shared>>) {
        let mut events = Vec::new();
        std::future::poll_fn(|cx| self.poll_run(cx, &shared, &mut events, false)).await;
        let drain = std::future::poll_fn(|cx| self.poll_run(cx, &shared, &mut events, true));
        if tokio::time::timeout(DRAIN_AFTER_CLOSE, drain)
            .await
            .is_err()
        {
            tracing::debug!("a closed publishing channel left confirms unanswered");
        }
        // Whatever is left can no longer be matched. A channel closed with
        // nothing unanswered (a publisher or relay shutting down) is an
        // ordinary end, not worth a warning.
        let unanswered = self
            .slots
            .iter()
            .filter(|s| !matches!(s, Some(Slot::Cancelled)))
            .count();
        if self.retired_because.is_some() {
            // Already retired, and said why.
        } else if unanswered == 0 {
            tracing::debug!("a publishing channel closed with every confirm answered");
            self.mark_retired("the channel closed");
        } else {
            tracing::warn!(
                unanswered,
                "a publishing channel closed before all its confirms arrived"
            );
            self.mark_retired("the channel closed before its confirms arrived");
        }
        self.report_ready();
    }

    /// One round: takes the registrations, reads every confirm that has
    /// resolved, reports what can be reported. Ready once every handle is
    /// gone (and, with `drain`, nothing is in flight any more).
    fn poll_run(
        &mut self,
        cx: &mut Context<'_>,
        shared: &Mutex<Shared>,
        events: &mut Vec<Event>,
        drain: bool,
    ) -> Poll<()> {
        loop {
            let closed = {
                let mut shared = lock(shared);
                if !shared
                    .waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    shared.waker = Some(cx.waker().clone());
                }
                std::mem::swap(events, &mut shared.events);
                shared.closed
            };
            let mut progressed = !events.is_empty();
            for event in events.drain(..) {
                self.apply(event);
            }
            while let Poll::Ready(Some(resolved)) = self.inflight.poll_next_unpin(cx) {
                self.harvest(resolved);
                progressed = true;
            }
            self.report_ready();
            if closed && (!drain || self.inflight.is_empty()) {
                return Poll::Ready(());
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    }

    /// The slot of `ticket`; `None` once it was reported (a retired
    /// channel reports its waiting publishes before their confirms resolve).
    fn slot(&mut self, ticket: u64) -> Option<&mut Option<Slot>> {
        let index = usize::try_from(ticket.checked_sub(self.base)?).ok()?;
        if self.slots.len() <= index {
            self.slots.resize_with(index + 1, || None);
        }
        Some(&mut self.slots[index])
    }

    fn apply(&mut self, event: Event) {
        let ticket = match event {
            Event::Registered {
                ticket,
                message_id,
                mut publish,
                reply,
                permit,
                sent_at,
            } => {
                if let Some(slot) = self.slot(ticket) {
                    *slot = Some(Slot::Waiting {
                        message_id,
                        reply,
                        _permit: permit,
                        sent_at,
                    });
                }
                // A confirm resolved already is read now, not after a trip
                // through the ready queue.
                match (&mut publish).now_or_never() {
                    Some(result) => self.harvest((ticket, result)),
                    None => self.inflight.push(Awaiting { ticket, publish }),
                }
                ticket
            }
            Event::Cancelled(ticket) => {
                if let Some(slot) = self.slot(ticket) {
                    *slot = Some(Slot::Cancelled);
                }
                ticket
            }
        };
        if ticket == self.accounted_below {
            while self.accounted_below < self.base + self.slots.len() as u64
                && self.slots[(self.accounted_below - self.base) as usize].is_some()
            {
                self.accounted_below += 1;
            }
        }
    }

    fn harvest(&mut self, (ticket, result): Resolved) {
        // Read the barrier after seeing the confirm resolved: every confirm
        // lapin resolved before it was registered under a smaller ticket.
        let barrier = self.issued.load(Ordering::SeqCst);
        if let Err(e) = &result {
            // lapin may keep a return across the channel's recovery and hand
            // it to a later confirm. The broker's reason (a 406 for a body
            // over its limit, say) goes with every verdict it loses.
            self.retire(&format!("the channel failed: {e}"));
        }
        let outcome = match result {
            Ok(Confirmation::Ack(returned)) => {
                if let Some(returned) = returned {
                    self.file_return(&returned);
                }
                Outcome::Ack
            }
            Ok(Confirmation::Nack(returned)) => {
                if let Some(returned) = returned {
                    self.file_return(&returned);
                }
                Outcome::Nack
            }
            Ok(Confirmation::NotRequested) => Outcome::NotRequested,
            Err(e) => Outcome::Failed(e.to_string()),
        };
        let Some(slot) = self.slot(ticket) else {
            return;
        };
        if let Some(Slot::Waiting {
            message_id,
            reply,
            _permit,
            sent_at,
        }) = slot.take()
        {
            *slot = Some(Slot::Resolved {
                message_id,
                reply,
                _permit,
                sent_at,
                barrier,
                outcome,
            });
        }
    }

    fn file_return(&mut self, returned: &lapin::message::BasicReturnMessage) {
        let id = self.ids.hash_one(
            returned
                .properties
                .message_id()
                .as_ref()
                .map_or("", |id| id.as_str()),
        );
        let reply = format!("{} {}", returned.reply_code, returned.reply_text);
        self.returns.entry(id).or_default().push_back(reply);
        if self.returns.len() > MAX_UNCLAIMED_RETURNS {
            self.retire("too many returns without their message");
        }
    }

    fn retire(&mut self, why: &str) {
        if self.retired_because.is_none() {
            tracing::warn!(reason = why, "retiring a publishing channel");
            self.mark_retired(why);
        }
    }

    /// Takes the channel out of use: what is still waiting is reported
    /// lost with `why`.
    fn mark_retired(&mut self, why: &str) {
        if self.retired_because.is_none() {
            self.retired_because = Some(why.to_owned());
            self.retired.store(true, Ordering::Release);
        }
    }

    /// A channel that only gets nacks leaves the pool (its verdicts stay
    /// true). Seen on RabbitMQ 3.10.8: a channel that published to a quorum
    /// queue before its new leader was elected, after a node loss, was
    /// nacked for the rest of its life while a fresh channel was acked. On a
    /// full `reject-publish` queue this costs a new channel every
    /// `NACKS_BEFORE_NEW_CHANNEL` messages.
    fn count_nacks(&mut self, verdict: &Verdict) {
        match verdict {
            Verdict::Nacked => {
                self.nacks_in_a_row += 1;
                if self.nacks_in_a_row == NACKS_BEFORE_NEW_CHANNEL {
                    tracing::warn!(
                        nacks = self.nacks_in_a_row,
                        "a publishing channel gets only nacks; a new one will be opened"
                    );
                    self.retired.store(true, Ordering::Release);
                }
            }
            Verdict::Confirmed => self.nacks_in_a_row = 0,
            _ => {}
        }
    }

    /// Reports, in publish order, every verdict that can no longer change.
    fn report_ready(&mut self) {
        // Read once for every verdict of this round, and only if there is
        // one.
        let mut now = None;
        loop {
            let ready = match self.slots.front() {
                Some(Some(Slot::Cancelled)) => true,
                Some(Some(Slot::Resolved { barrier, .. })) => *barrier <= self.accounted_below,
                Some(Some(Slot::Waiting { .. })) => self.retired_because.is_some(),
                _ => false,
            };
            if !ready {
                break;
            }
            let Some(Some(slot)) = self.slots.pop_front() else {
                break;
            };
            self.base += 1;
            self.accounted_below = self.accounted_below.max(self.base);
            let (message_id, reply, sent_at, outcome) = match slot {
                Slot::Cancelled => continue,
                Slot::Waiting {
                    message_id,
                    reply,
                    sent_at,
                    ..
                } => (message_id, reply, sent_at, None),
                Slot::Resolved {
                    message_id,
                    reply,
                    sent_at,
                    outcome,
                    ..
                } => (message_id, reply, sent_at, Some(outcome)),
            };
            let verdict = self.verdict(message_id, outcome);
            self.count_nacks(&verdict);
            let latency = now
                .get_or_insert_with(Instant::now)
                .saturating_duration_since(sent_at);
            // The publisher may have timed out and gone: nobody to tell.
            let _ = reply.send((verdict, latency));
        }
        let idle = self.slots.is_empty()
            && self.inflight.is_empty()
            && self.base == self.issued.load(Ordering::SeqCst);
        if idle {
            // Nothing in flight can claim these.
            self.returns.clear();
        }
    }

    fn verdict(&mut self, message_id: IdHash, outcome: Option<Outcome>) -> Verdict {
        if let Some(replies) = self.returns.get_mut(&message_id)
            && let Some(reply) = replies.pop_front()
        {
            if replies.is_empty() {
                self.returns.remove(&message_id);
            }
            return Verdict::Unroutable { reply };
        }
        if let Some(why) = &self.retired_because {
            // A return for this message may sit on a confirm nobody can read.
            return Verdict::Lost(why.clone());
        }
        match outcome {
            Some(Outcome::Ack) => Verdict::Confirmed,
            Some(Outcome::Nack) => Verdict::Nacked,
            Some(Outcome::NotRequested) => Verdict::NotRequested,
            Some(Outcome::Failed(e)) => Verdict::Lost(e),
            None => Verdict::Lost("no confirm".into()),
        }
    }
}
