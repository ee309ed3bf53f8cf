//! Settling deliveries: one task per subscription (channel) sends every ack,
//! nack and reject, coalescing acks into `multiple=true` where that is safe.
//! It ends when the last [`SettleGuard`] of its channel is gone: that is
//! when the channel may be closed without the broker requeueing a delivery
//! whose handler is still running.
//!
//! Safe means: an ack with `multiple=true` for tag T settles every unsettled
//! tag up to T on the channel, so it is sent only when every outstanding tag
//! up to T has finished with an ack. A nack or reject is sent on its own, at
//! once. Acks go through lapin's `Acker`, which refuses (instead of acking
//! the wrong message) when the channel was lost since the delivery; such a
//! refusal is logged, never taken for success.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::Acker;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use tokio::sync::mpsc;

use super::telemetry::Counters;

/// What to tell the broker about one delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Done: remove it.
    Ack,
    /// The handler asked to put it back: `basic.reject(requeue)`, the verb
    /// every RabbitMQ version counts toward a quorum queue's delivery limit.
    Requeue,
    /// rabbitry gives it back on its own (shutdown before it started, a
    /// republish that failed): `basic.nack(requeue)`, which RabbitMQ 4.3 and
    /// later do not count as a failed delivery.
    GiveBack,
    /// Refuse it: the broker dead-letters it to the queue's DLX.
    Reject,
}

pub(crate) enum SettleMsg {
    /// A delivery arrived (sent before its handler starts).
    Delivered { tag: u64, acker: Acker },
    /// A decision for a delivery.
    Decide { tag: u64, decision: Decision },
}

/// The promise that a delivery gets exactly one decision: sending one
/// consumes the guard, and dropping it unsent (a handler task that panicked
/// or was stopped, a manual delivery dropped undecided) gives the delivery
/// back.
pub(crate) struct SettleGuard {
    tx: mpsc::UnboundedSender<SettleMsg>,
    tag: u64,
    sent: bool,
}

impl SettleGuard {
    /// Registers the delivery with its channel's settle task.
    pub(crate) fn new(tx: &mpsc::UnboundedSender<SettleMsg>, tag: u64, acker: Acker) -> Self {
        let _ = tx.send(SettleMsg::Delivered { tag, acker });
        Self {
            tx: tx.clone(),
            tag,
            sent: false,
        }
    }

    pub(crate) fn send(mut self, decision: Decision) -> bool {
        self.sent = true;
        self.tx
            .send(SettleMsg::Decide {
                tag: self.tag,
                decision,
            })
            .is_ok()
    }
}

impl Drop for SettleGuard {
    fn drop(&mut self) {
        if !self.sent {
            let _ = self.tx.send(SettleMsg::Decide {
                tag: self.tag,
                decision: Decision::GiveBack,
            });
        }
    }
}

/// The pure bookkeeping of outstanding tags, kept apart for unit tests.
///
/// Acks coalesce over the finished prefix, so one unfinished delivery at the
/// head holds back every ack behind it, and those held deliveries still count
/// against the channel's prefetch: with a slow handler (or a retry waiting in
/// place, or a stopped ordering key) at the head, the broker would stop
/// sending once `prefetch` deliveries had piled up behind it. So held acks go
/// out on their own (`multiple=false`) once they are half of the window or
/// the oldest has waited [`HELD_ACK_LIMIT`]: a consumer never stalls behind
/// one delivery, and under ordinary load (a head that finishes within a few
/// milliseconds) acks still coalesce.
#[derive(Debug, Default)]
pub(crate) struct AckWindow {
    /// Outstanding tags: `true` once the handler acked it.
    outstanding: BTreeMap<u64, bool>,
    /// How many outstanding tags are acked but held behind the head.
    held: usize,
    /// Since when acks have been held (the first of the current run).
    held_since: Option<Instant>,
}

/// The longest an ack waits behind an unfinished delivery before it is sent
/// on its own.
pub(crate) const HELD_ACK_LIMIT: Duration = Duration::from_millis(100);

impl AckWindow {
    pub(crate) fn delivered(&mut self, tag: u64) {
        self.outstanding.insert(tag, false);
    }

    /// Marks `tag` acked; returns the highest tag that can now be acked with
    /// `multiple=true`, and how many tags that covers.
    pub(crate) fn ack(&mut self, tag: u64, now: Instant) -> Option<(u64, usize)> {
        if let Some(ready) = self.outstanding.get_mut(&tag)
            && !*ready
        {
            *ready = true;
            self.held += 1;
            self.held_since.get_or_insert(now);
        }
        self.flushable()
    }

    /// Removes `tag` (nacked or rejected on its own); may unblock a prefix.
    pub(crate) fn remove(&mut self, tag: u64) -> Option<(u64, usize)> {
        if self.outstanding.remove(&tag) == Some(true) {
            self.held -= 1;
        }
        self.flushable()
    }

    /// Takes the acked prefix off the window: O(prefix · log n), never a
    /// walk over the whole window (up to the prefetch) per ack.
    fn flushable(&mut self) -> Option<(u64, usize)> {
        let mut last = None;
        let mut count = 0;
        while let Some(first) = self.outstanding.first_entry() {
            if !*first.get() {
                break;
            }
            last = Some(first.remove_entry().0);
            count += 1;
        }
        self.held -= count;
        if self.held == 0 {
            self.held_since = None;
        }
        Some((last?, count))
    }

    /// When held acks must go out on their own if nothing frees them first.
    pub(crate) fn held_deadline(&self) -> Option<Instant> {
        self.held_since.map(|since| since + HELD_ACK_LIMIT)
    }

    /// The acks held behind an unfinished head, taken off the window to be
    /// sent one by one, once they are half the window or the oldest has
    /// waited [`HELD_ACK_LIMIT`]; otherwise nothing.
    pub(crate) fn take_held(&mut self, now: Instant) -> Vec<u64> {
        let overdue = self.held_deadline().is_some_and(|at| now >= at);
        if self.held == 0 || !(overdue || self.held * 2 >= self.outstanding.len()) {
            return Vec::new();
        }
        let tags: Vec<u64> = self
            .outstanding
            .iter()
            .filter_map(|(tag, ready)| ready.then_some(*tag))
            .collect();
        self.outstanding.retain(|_, ready| !*ready);
        self.held = 0;
        self.held_since = None;
        tags
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.outstanding.is_empty()
    }

    /// Outstanding tags: delivered and not settled yet.
    pub(crate) fn len(&self) -> usize {
        self.outstanding.len()
    }
}

/// The longest one ack, nack or reject may take to be written: a stalled
/// socket must not hold up every later decision on the channel.
const SETTLE_CALL_LIMIT: Duration = Duration::from_secs(10);

async fn bounded(call: impl Future<Output = lapin::Result<bool>>) -> lapin::Result<bool> {
    // Timed out: as good as refused; the broker redelivers.
    tokio::time::timeout(SETTLE_CALL_LIMIT, call)
        .await
        .unwrap_or(Ok(false))
}

/// The settle task's state for one channel.
struct Settler {
    consumer: String,
    counters: Arc<Counters>,
    window: AckWindow,
    ackers: BTreeMap<u64, Acker>,
    /// An ack with `multiple=true` up to this tag, not sent yet, and how
    /// many deliveries it covers.
    pending: Option<(u64, usize)>,
    /// The window's size last added to the in-flight gauge.
    reported: usize,
}

impl Settler {
    async fn apply(&mut self, msg: SettleMsg) {
        match msg {
            SettleMsg::Delivered { tag, acker } => {
                self.window.delivered(tag);
                self.ackers.insert(tag, acker);
            }
            SettleMsg::Decide { tag, decision } => {
                let flushable = match decision {
                    Decision::Ack => self.window.ack(tag, Instant::now()),
                    Decision::Requeue | Decision::GiveBack | Decision::Reject => {
                        if decision != Decision::Reject {
                            Counters::bump(&self.counters.requeued);
                        }
                        if let Some(acker) = self.ackers.remove(&tag) {
                            let result = bounded(async {
                                match decision {
                                    Decision::GiveBack => {
                                        acker
                                            .nack(BasicNackOptions {
                                                multiple: false,
                                                requeue: true,
                                            })
                                            .await
                                    }
                                    requeue => {
                                        acker
                                            .reject(BasicRejectOptions {
                                                requeue: requeue == Decision::Requeue,
                                            })
                                            .await
                                    }
                                }
                            })
                            .await;
                            self.refused(tag, 1, result);
                        }
                        self.window.remove(tag)
                    }
                };
                if let Some((last, count)) = flushable {
                    let covered = self.pending.map_or(0, |(_, n)| n);
                    self.pending = Some((last, covered + count));
                }
            }
        }
    }

    /// Sends the pending multiple ack, if any.
    async fn flush(&mut self) {
        let Some((last, count)) = self.pending.take() else {
            return;
        };
        let acker = self.ackers.get(&last).cloned();
        // Keep the tags above `last`, without a walk over every acker.
        self.ackers = self.ackers.split_off(&(last.saturating_add(1)));
        if let Some(acker) = acker {
            let result = bounded(acker.ack(BasicAckOptions {
                multiple: count > 1,
            }))
            .await;
            self.refused(last, count, result);
        }
    }

    /// Sends the acks held behind an unfinished head one by one, when the
    /// window says they have waited long enough (see [`AckWindow`]).
    async fn flush_held(&mut self) {
        let held = self.window.take_held(Instant::now());
        if held.is_empty() {
            return;
        }
        tracing::trace!(
            consumer = self.consumer,
            count = held.len(),
            "acking deliveries held behind an unfinished one"
        );
        let mut tags = held.into_iter();
        while let Some(tag) = tags.next() {
            let Some(acker) = self.ackers.remove(&tag) else {
                continue;
            };
            let result = bounded(acker.ack(BasicAckOptions { multiple: false })).await;
            if !matches!(result, Ok(true)) {
                // The channel is gone or stalled: the rest would each wait
                // as long, and the broker redelivers them anyway.
                let rest: Vec<u64> = tags.collect();
                for t in &rest {
                    self.ackers.remove(t);
                }
                self.refused(tag, 1 + rest.len(), result);
                return;
            }
        }
    }

    /// Moves the exported in-flight gauge by the window's change.
    fn report_in_flight(&mut self) {
        let now = self.window.len();
        if now != self.reported {
            let gauge = &self.counters.in_flight.0;
            gauge.increment(now as f64 - self.reported as f64);
            self.reported = now;
        }
    }

    /// Logs an ack, nack or reject that did not reach the broker. lapin
    /// answers `Ok(false)` when the channel was lost since the delivery (the
    /// broker requeues it by itself) or the acker was already used.
    fn refused(&self, tag: u64, count: usize, result: lapin::Result<bool>) {
        match result {
            Ok(true) => {}
            Ok(false) => tracing::debug!(
                consumer = self.consumer,
                tag,
                count,
                "settling refused: the channel was lost since the delivery; the broker redelivers"
            ),
            Err(error) => tracing::warn!(
                consumer = self.consumer,
                tag,
                count,
                %error,
                "settling failed; the broker redelivers"
            ),
        }
    }
}

/// Runs until every sender is gone and the queue is empty. Takes whatever
/// has queued up, applies it, then sends one ack for the finished prefix:
/// under load, one frame settles many deliveries.
pub(crate) async fn settle_task(
    mut rx: mpsc::UnboundedReceiver<SettleMsg>,
    consumer: String,
    counters: Arc<Counters>,
) {
    let mut settler = Settler {
        consumer,
        counters,
        window: AckWindow::default(),
        ackers: BTreeMap::new(),
        pending: None,
        reported: 0,
    };
    let mut batch = Vec::with_capacity(1024);
    loop {
        let received = match settler.window.held_deadline() {
            None => rx.recv_many(&mut batch, 1024).await,
            Some(at) => {
                tokio::select! {
                    n = rx.recv_many(&mut batch, 1024) => n,
                    () = tokio::time::sleep_until(at.into()) => usize::MAX,
                }
            }
        };
        if received == 0 {
            break;
        }
        for msg in batch.drain(..) {
            settler.apply(msg).await;
        }
        settler.flush().await;
        settler.flush_held().await;
        settler.report_in_flight();
    }
    if !settler.window.is_empty() {
        tracing::debug!(
            consumer = settler.consumer,
            "settle task ended with outstanding deliveries; the broker requeues them"
        );
    }
    // What is left goes back to the queue with the channel.
    settler.window = AckWindow::default();
    settler.report_in_flight();
}

#[cfg(test)]
#[path = "settle_tests.rs"]
mod tests;
