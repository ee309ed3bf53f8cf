//! Matches every publisher confirm with its own `basic.return`.
//!
//! lapin hands a returned (unroutable) message to whichever confirm of the
//! channel it resolves next, and resolves a `multiple` ack's confirms in hash
//! order: under pipelined load the return of message M often rides on the
//! confirm of another message X. Read as is, M would be reported confirmed
//! and X unroutable, and an outbox would delete the row of a message the
//! broker dropped.
//!
//! What the broker and lapin do guarantee is enough to match them exactly:
//! - the broker sends M's `basic.return` before M's `basic.ack`, and lapin
//!   reads frames in order, so the confirm that carries M's return is
//!   resolved no later than M's own;
//! - a publish registers its confirm with lapin synchronously, on the first
//!   poll of `basic_publish`.
//!
//! So one collector per channel owns every confirm. Each publish takes a
//! [`Ticket`] just before `basic_publish` and hands over its confirm right
//! after. When the collector sees a confirm resolved, it notes how many
//! tickets had been issued by then (the barrier): any confirm that can carry
//! M's return belongs to one of them. It reports M only when every ticket
//! under the barrier has handed over its confirm (or given up), and every
//! confirm already resolved has been read, with its return filed under the
//! returned message's own id. A return is then matched to its message by
//! message id, never by position.
//!
//! The collector also keeps the confirms of publishes that timed out, so none
//! is parked in lapin's list of dropped confirms, which only
//! `wait_for_confirms` drains.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use lapin::{Confirmation, PublisherConfirm};
use tokio::sync::{mpsc, oneshot};

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
    /// The channel or connection failed before the confirm arrived.
    Failed(lapin::Error),
}

/// How long a collector whose channel is gone waits for confirms nobody is
/// waiting for any more, before it stops.
const DRAIN_AFTER_CLOSE: Duration = Duration::from_secs(60);

/// More unclaimed returns than this means returns of publishes that gave
/// up: forget them.
const MAX_UNCLAIMED_RETURNS: usize = 10_000;

/// The publishing side of one channel's collector.
pub(crate) struct Confirms {
    issued: Arc<AtomicU64>,
    events: mpsc::UnboundedSender<Event>,
}

/// A place in the channel's publish order, taken just before
/// `basic_publish`. Dropped without [`register`](Self::register), it tells
/// the collector not to wait for it.
pub(crate) struct Ticket {
    id: u64,
    events: Option<mpsc::UnboundedSender<Event>>,
}

enum Event {
    Registered {
        ticket: u64,
        message_id: String,
        confirm: PublisherConfirm,
        reply: oneshot::Sender<Verdict>,
    },
    Cancelled(u64),
}

type Resolved = (
    String,
    oneshot::Sender<Verdict>,
    lapin::Result<Confirmation>,
);
type Inflight = Pin<Box<dyn Future<Output = Resolved> + Send>>;

impl Confirms {
    /// Starts the collector of one channel.
    pub(crate) fn spawn() -> Self {
        let issued = Arc::new(AtomicU64::new(0));
        let (events, rx) = mpsc::unbounded_channel();
        tokio::spawn(Collector::new(issued.clone()).run(rx));
        Self { issued, events }
    }

    /// Takes the next place in publish order. Call it right before
    /// `basic_publish`.
    pub(crate) fn ticket(&self) -> Ticket {
        Ticket {
            id: self.issued.fetch_add(1, Ordering::SeqCst),
            events: Some(self.events.clone()),
        }
    }
}

impl Ticket {
    /// Hands the confirm of the message `message_id` to the collector; the
    /// receiver gets its verdict.
    pub(crate) fn register(
        mut self,
        message_id: &str,
        confirm: PublisherConfirm,
    ) -> oneshot::Receiver<Verdict> {
        let (reply, verdict) = oneshot::channel();
        if let Some(events) = self.events.take() {
            // A send fails only when the collector is gone; the receiver
            // then reports that.
            let _ = events.send(Event::Registered {
                ticket: self.id,
                message_id: message_id.to_owned(),
                confirm,
                reply,
            });
        }
        verdict
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(events) = self.events.take() {
            let _ = events.send(Event::Cancelled(self.id));
        }
    }
}

struct Held {
    barrier: u64,
    message_id: String,
    reply: oneshot::Sender<Verdict>,
    result: lapin::Result<Confirmation>,
}

struct Collector {
    issued: Arc<AtomicU64>,
    /// Every ticket below this one has registered or been cancelled.
    accounted_below: u64,
    /// Tickets at or above `accounted_below` that are accounted for.
    accounted: BTreeSet<u64>,
    inflight: FuturesUnordered<Inflight>,
    /// Resolved confirms waiting for their barrier, in the order seen.
    held: VecDeque<Held>,
    /// Return replies by the returned message's id, not yet claimed.
    returns: HashMap<String, VecDeque<String>>,
}

impl Collector {
    fn new(issued: Arc<AtomicU64>) -> Self {
        Self {
            issued,
            accounted_below: 0,
            accounted: BTreeSet::new(),
            inflight: FuturesUnordered::new(),
            held: VecDeque::new(),
            returns: HashMap::new(),
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
        // Whatever is still held can no longer be matched better.
        self.accounted_below = u64::MAX;
        self.report_ready();
    }

    fn apply(&mut self, event: Event) {
        let ticket = match event {
            Event::Registered {
                ticket,
                message_id,
                confirm,
                reply,
            } => {
                self.inflight.push(Box::pin(async move {
                    let result = confirm.await;
                    (message_id, reply, result)
                }));
                ticket
            }
            Event::Cancelled(ticket) => ticket,
        };
        self.accounted.insert(ticket);
        while self.accounted.remove(&self.accounted_below) {
            self.accounted_below += 1;
        }
    }

    fn harvest(&mut self, (message_id, reply, result): Resolved) {
        // Read the barrier after seeing the confirm resolved: every confirm
        // lapin resolved before it was registered under a smaller ticket.
        let barrier = self.issued.load(Ordering::SeqCst);
        let result = result.map(|confirmation| match confirmation {
            Confirmation::Ack(Some(returned)) => {
                self.file_return(&returned);
                Confirmation::Ack(None)
            }
            Confirmation::Nack(Some(returned)) => {
                self.file_return(&returned);
                Confirmation::Nack(None)
            }
            other => other,
        });
        self.held.push_back(Held {
            barrier,
            message_id,
            reply,
            result,
        });
    }

    fn file_return(&mut self, returned: &lapin::message::BasicReturnMessage) {
        let id = returned
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned())
            .unwrap_or_default();
        let reply = format!("{} {}", returned.reply_code, returned.reply_text);
        self.returns.entry(id).or_default().push_back(reply);
    }

    fn report_ready(&mut self) {
        while self
            .held
            .front()
            .is_some_and(|held| held.barrier <= self.accounted_below)
        {
            let Some(held) = self.held.pop_front() else {
                break;
            };
            let verdict = self.verdict(&held.message_id, held.result);
            // The publisher may have timed out and gone: nobody to tell.
            let _ = held.reply.send(verdict);
        }
        let idle = self.held.is_empty()
            && self.inflight.is_empty()
            && self.accounted_below == self.issued.load(Ordering::SeqCst);
        if idle || self.returns.len() > MAX_UNCLAIMED_RETURNS {
            // Nothing in flight can claim these: they belong to publishes
            // that gave up before handing over their confirm.
            self.returns.clear();
        }
    }

    fn verdict(&mut self, message_id: &str, result: lapin::Result<Confirmation>) -> Verdict {
        if let Some(replies) = self.returns.get_mut(message_id)
            && let Some(reply) = replies.pop_front()
        {
            if replies.is_empty() {
                self.returns.remove(message_id);
            }
            return Verdict::Unroutable { reply };
        }
        match result {
            Ok(Confirmation::Ack(_)) => Verdict::Confirmed,
            Ok(Confirmation::Nack(_)) => Verdict::Nacked,
            Ok(Confirmation::NotRequested) => Verdict::NotRequested,
            Err(e) => Verdict::Failed(e),
        }
    }
}
