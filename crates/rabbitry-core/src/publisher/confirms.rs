//! Matches every publisher confirm with its own `basic.return`.
//!
//! lapin hands a returned (unroutable) message to whichever confirm of the
//! channel it resolves next, and resolves the confirms of a `multiple` ack
//! in hash order: under pipelined load the return of message M often rides
//! on the confirm of another message X. Read as is, M would be reported
//! confirmed and X unroutable, and an outbox would delete the row of a
//! message the broker dropped.
//!
//! What the broker and lapin do guarantee is enough to match them exactly:
//! - the broker sends M's `basic.return` before M's `basic.ack`, and returns
//!   in publish order; lapin reads frames in order, and each ack it handles
//!   takes the oldest waiting return;
//! - so the confirm carrying M's return is resolved no later than the last,
//!   in lapin's order, of M and the messages published before M. (With one
//!   waiting return that is M or earlier; in a `multiple` ack resolved in
//!   hash order, the k-th confirm resolved takes the k-th return, and the
//!   returns ahead of M's belong to messages published before M.)
//!
//! So one collector per channel owns every publish and reports verdicts in
//! publish order. A publish takes its ticket, makes lapin register its
//! confirm (the first poll of `basic_publish`) and hands itself to the
//! collector, all under one lock: tickets follow lapin's delivery tags, and
//! no confirm lapin knows of is missing from the collector for longer than
//! that lock is held. The collector reports M only when every earlier
//! publish has been reported, every publish whose ticket was issued before
//! M's confirm was seen resolved has been handed over (the barrier), and
//! every confirm already resolved has been read, with its return filed under
//! the returned message's own id. A return is thus matched to its message by
//! message id, never by position.
//!
//! Because the collector owns the publish, a caller that gives up (a
//! timeout) cannot drop a confirm that carries another message's return, nor
//! park one in lapin's list of dropped confirms, which only
//! `wait_for_confirms` drains. A channel that fails (lapin may keep a stale
//! return across a recovery), or collects too many returns nobody claims, is
//! retired: its verdicts not yet reported become retryable failures, and the
//! pool drops it.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use lapin::Confirmation;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

/// How a confirmed publish ended, with returns matched to their message.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Acked, and no return names this message.
    Confirmed,
    /// The broker returned this message (mandatory, no queue bound).
    Unroutable {
        /// The broker's reply code and text.
        reply: String,
    },
    /// The broker nacked it.
    Nacked,
    /// The channel was not in confirm mode.
    NotRequested,
    /// The channel or connection failed before the confirm arrived, or the
    /// channel lost track of a confirm: whether the broker has the message
    /// is unknown.
    Lost(String),
}

/// How long a collector whose channel is gone waits for confirms nobody is
/// waiting for any more, before it stops.
const DRAIN_AFTER_CLOSE: Duration = Duration::from_secs(60);

/// More unclaimed returns than this: retire the channel.
const MAX_UNCLAIMED_RETURNS: usize = 10_000;

/// The publishing side of one channel's collector.
pub(crate) struct Confirms {
    issued: Arc<AtomicU64>,
    ids: RandomState,
    /// Held while a publish takes its ticket, makes lapin register its
    /// confirm and hands itself to the collector, so that tickets follow
    /// lapin's delivery tags and arrive in order.
    order: Mutex<mpsc::UnboundedSender<Event>>,
    retired: Arc<AtomicBool>,
}

/// A publish, from `basic_publish` to its confirm, owned by the collector.
pub(crate) type Publish = Pin<Box<dyn Future<Output = lapin::Result<Confirmation>> + Send>>;

enum Event {
    Registered {
        ticket: u64,
        message_id: IdHash,
        publish: Publish,
        reply: oneshot::Sender<Verdict>,
        permit: OwnedSemaphorePermit,
    },
    /// The ticket was taken but its publish never started (a panic).
    Cancelled(u64),
}

type Resolved = (u64, lapin::Result<Confirmation>);

/// A message id, hashed: returns are matched by it without copying ids.
type IdHash = u64;

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

/// Sends `Cancelled` for a ticket whose publish did not reach the
/// collector, so that the collector never waits for it.
struct CancelOnDrop<'a> {
    ticket: u64,
    events: &'a mpsc::UnboundedSender<Event>,
    armed: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.events.send(Event::Cancelled(self.ticket));
        }
    }
}

impl Confirms {
    /// Starts the collector of one channel.
    pub(crate) fn spawn() -> Self {
        let issued = Arc::new(AtomicU64::new(0));
        let retired = Arc::new(AtomicBool::new(false));
        let (events, rx) = mpsc::unbounded_channel();
        let ids = RandomState::new();
        tokio::spawn(Collector::new(issued.clone(), retired.clone(), ids.clone()).run(rx));
        Self {
            issued,
            ids,
            order: Mutex::new(events),
            retired,
        }
    }

    /// Starts `publish` (a `basic_publish` followed by its confirm) for the
    /// message `message_id` and hands it to the collector, with the window
    /// permit it holds until the verdict; the receiver gets the verdict.
    ///
    /// The first poll of `basic_publish` is where lapin registers the
    /// confirm and queues the frames; it happens here, under the order lock,
    /// and the publish is owned by the collector from then on: a caller that
    /// gives up (a timeout) cannot lose a confirm that carries a return.
    pub(crate) fn submit(
        &self,
        message_id: &str,
        mut publish: Publish,
        permit: OwnedSemaphorePermit,
    ) -> oneshot::Receiver<Verdict> {
        let (reply, verdict) = oneshot::channel();
        let message_id = self.ids.hash_one(message_id);
        let events = self.order.lock().unwrap_or_else(|p| p.into_inner());
        let ticket = self.issued.fetch_add(1, Ordering::SeqCst);
        let mut cancel = CancelOnDrop {
            ticket,
            events: &events,
            armed: true,
        };
        let first = publish
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()));
        let publish: Publish = match first {
            Poll::Pending => publish,
            Poll::Ready(result) => Box::pin(std::future::ready(result)),
        };
        cancel.armed = false;
        // A send fails only when the collector is gone; the receiver then
        // reports that.
        let _ = events.send(Event::Registered {
            ticket,
            message_id,
            publish,
            reply,
            permit,
        });
        verdict
    }

    /// Whether the channel must leave the pool.
    pub(crate) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }
}

enum Slot {
    Waiting {
        message_id: IdHash,
        reply: oneshot::Sender<Verdict>,
        _permit: OwnedSemaphorePermit,
    },
    Resolved {
        message_id: IdHash,
        reply: oneshot::Sender<Verdict>,
        _permit: OwnedSemaphorePermit,
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

struct Collector {
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
}

impl Collector {
    fn new(issued: Arc<AtomicU64>, retired: Arc<AtomicBool>, ids: RandomState) -> Self {
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
        }
    }

    async fn run(mut self, mut events: mpsc::UnboundedReceiver<Event>) {
        let mut open = true;
        loop {
            if open {
                tokio::select! {
                    event = events.recv() => match event {
                        Some(event) => self.apply(event),
                        None => open = false,
                    },
                    Some(resolved) = self.inflight.next(), if !self.inflight.is_empty() => {
                        self.harvest(resolved);
                    }
                }
            } else if self.inflight.is_empty() {
                break;
            } else {
                match tokio::time::timeout(DRAIN_AFTER_CLOSE, self.inflight.next()).await {
                    Ok(Some(resolved)) => self.harvest(resolved),
                    Ok(None) | Err(_) => break,
                }
            }
            while let Ok(event) = events.try_recv() {
                self.apply(event);
            }
            while let Some(Some(resolved)) = self.inflight.next().now_or_never() {
                self.harvest(resolved);
            }
            self.report_ready();
        }
        // Whatever is left can no longer be matched.
        self.retire("the channel closed before its confirms arrived");
        self.report_ready();
    }

    fn slot(&mut self, ticket: u64) -> &mut Option<Slot> {
        let index = usize::try_from(ticket - self.base).unwrap_or(usize::MAX);
        if self.slots.len() <= index {
            self.slots.resize_with(index + 1, || None);
        }
        &mut self.slots[index]
    }

    fn apply(&mut self, event: Event) {
        let ticket = match event {
            Event::Registered {
                ticket,
                message_id,
                mut publish,
                reply,
                permit,
            } => {
                *self.slot(ticket) = Some(Slot::Waiting {
                    message_id,
                    reply,
                    _permit: permit,
                });
                // A confirm resolved already is read now, not after a trip
                // through the ready queue.
                match (&mut publish).now_or_never() {
                    Some(result) => self.harvest((ticket, result)),
                    None => self.inflight.push(Awaiting { ticket, publish }),
                }
                ticket
            }
            Event::Cancelled(ticket) => {
                *self.slot(ticket) = Some(Slot::Cancelled);
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
        if result.is_err() {
            // lapin may keep a return across the channel's recovery and hand
            // it to a later confirm.
            self.retire("the channel failed");
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
        let slot = self.slot(ticket);
        if let Some(Slot::Waiting {
            message_id,
            reply,
            _permit,
        }) = slot.take()
        {
            *slot = Some(Slot::Resolved {
                message_id,
                reply,
                _permit,
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
            self.retired_because = Some(why.to_owned());
            self.retired.store(true, Ordering::Release);
        }
    }

    /// Reports, in publish order, every verdict that can no longer change.
    fn report_ready(&mut self) {
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
            let (message_id, reply, outcome) = match slot {
                Slot::Cancelled => continue,
                Slot::Waiting {
                    message_id, reply, ..
                } => (message_id, reply, None),
                Slot::Resolved {
                    message_id,
                    reply,
                    outcome,
                    ..
                } => (message_id, reply, Some(outcome)),
            };
            let verdict = self.verdict(message_id, outcome);
            // The publisher may have timed out and gone: nobody to tell.
            let _ = reply.send(verdict);
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
