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

use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use lapin::Confirmation;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio::time::Instant;

mod collector;

use self::collector::Collector;

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

/// A verdict, and the time from its publish's start to the moment the
/// collector reported it: the confirm latency the caller sees, measured
/// where the clock is read once for a whole round of verdicts.
pub(crate) type Reply = (Verdict, std::time::Duration);

/// A publish, from `basic_publish` to its confirm, owned by the collector.
pub(crate) type Publish = Pin<Box<dyn Future<Output = lapin::Result<Confirmation>> + Send>>;

/// A message id, hashed: returns are matched by it without copying ids.
type IdHash = u64;

enum Event {
    Registered {
        ticket: u64,
        message_id: IdHash,
        publish: Publish,
        reply: oneshot::Sender<Reply>,
        permit: OwnedSemaphorePermit,
        sent_at: Instant,
    },
    /// The ticket was taken but its publish never started (a panic).
    Cancelled(u64),
}

/// What the publishing side and the collector share, under one lock.
///
/// Registrations wait here without waking the collector: the first poll of
/// each publish registers the collector's waker with lapin, which wakes it
/// when the frames are written (many publishes per wake-up, instead of one
/// wake-up per publish).
#[derive(Default)]
struct Shared {
    events: Vec<Event>,
    /// The collector's waker, once it has run.
    waker: Option<Waker>,
    /// No more publishes: every `Confirms` handle is gone.
    closed: bool,
}

impl Shared {
    fn wake(&mut self) {
        if let Some(waker) = &self.waker {
            waker.wake_by_ref();
        }
    }
}

/// The publishing side of one channel's collector.
pub(crate) struct Confirms {
    issued: Arc<AtomicU64>,
    ids: RandomState,
    /// Held while a publish takes its ticket, makes lapin register its
    /// confirm and hands itself over, so that tickets follow lapin's
    /// delivery tags and arrive in order.
    shared: Arc<Mutex<Shared>>,
    retired: Arc<AtomicBool>,
}

impl Confirms {
    /// Starts the collector of one channel.
    pub(crate) fn spawn() -> Self {
        let issued = Arc::new(AtomicU64::new(0));
        let retired = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Mutex::new(Shared::default()));
        let ids = RandomState::new();
        let collector = Collector::new(issued.clone(), retired.clone(), ids.clone());
        tokio::spawn(collector.run(shared.clone()));
        Self {
            issued,
            ids,
            shared,
            retired,
        }
    }

    /// Starts `publish` (a `basic_publish` followed by its confirm) for the
    /// message `message_id` and hands it to the collector, with the window
    /// permit it holds until the verdict; the receiver gets the verdict
    /// and its latency from `sent_at`.
    ///
    /// The first poll of `basic_publish` is where lapin registers the
    /// confirm and queues the frames; it happens here, under the lock, and
    /// the publish is owned by the collector from then on: a caller that
    /// gives up (a timeout) cannot lose a confirm that carries a return.
    pub(crate) fn submit(
        &self,
        message_id: &str,
        mut publish: Publish,
        permit: OwnedSemaphorePermit,
        sent_at: Instant,
    ) -> oneshot::Receiver<Reply> {
        let (reply, verdict) = oneshot::channel();
        let message_id = self.ids.hash_one(message_id);
        let mut shared = lock(&self.shared);
        let ticket = self.issued.fetch_add(1, Ordering::SeqCst);
        let waker = shared
            .waker
            .clone()
            .unwrap_or_else(|| Waker::noop().clone());
        let first = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            publish.as_mut().poll(&mut Context::from_waker(&waker))
        }));
        let (publish, ready): (Publish, bool) = match first {
            Ok(Poll::Pending) => (publish, false),
            Ok(Poll::Ready(result)) => (Box::pin(std::future::ready(result)), true),
            Err(panic) => {
                shared.events.push(Event::Cancelled(ticket));
                shared.wake();
                drop(shared);
                std::panic::resume_unwind(panic);
            }
        };
        shared.events.push(Event::Registered {
            ticket,
            message_id,
            publish,
            reply,
            permit,
            sent_at,
        });
        if ready {
            // Nothing else would wake the collector for this one.
            shared.wake();
        }
        verdict
    }

    /// Whether the channel must leave the pool.
    pub(crate) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }
}

impl Drop for Confirms {
    fn drop(&mut self) {
        let mut shared = lock(&self.shared);
        shared.closed = true;
        shared.wake();
    }
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests;
