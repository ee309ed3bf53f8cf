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
use std::time::Duration;

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
#[derive(Debug, Default)]
pub(crate) struct AckWindow {
    /// Outstanding tags: `true` once the handler acked it.
    outstanding: BTreeMap<u64, bool>,
}

impl AckWindow {
    pub(crate) fn delivered(&mut self, tag: u64) {
        self.outstanding.insert(tag, false);
    }

    /// Marks `tag` acked; returns the highest tag that can now be acked with
    /// `multiple=true`, and how many tags that covers.
    pub(crate) fn ack(&mut self, tag: u64) -> Option<(u64, usize)> {
        if let Some(ready) = self.outstanding.get_mut(&tag) {
            *ready = true;
        }
        self.flushable()
    }

    /// Removes `tag` (nacked or rejected on its own); may unblock a prefix.
    pub(crate) fn remove(&mut self, tag: u64) -> Option<(u64, usize)> {
        self.outstanding.remove(&tag);
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
        Some((last?, count))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.outstanding.is_empty()
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
                    Decision::Ack => self.window.ack(tag),
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
    };
    let mut batch = Vec::with_capacity(1024);
    while rx.recv_many(&mut batch, 1024).await > 0 {
        for msg in batch.drain(..) {
            settler.apply(msg).await;
        }
        settler.flush().await;
    }
    if !settler.window.is_empty() {
        tracing::debug!(
            consumer = settler.consumer,
            "settle task ended with outstanding deliveries; the broker requeues them"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_coalesce_only_over_a_complete_prefix() {
        let mut w = AckWindow::default();
        for t in 1..=5 {
            w.delivered(t);
        }
        assert_eq!(w.ack(2), None, "1 is still running");
        assert_eq!(w.ack(3), None);
        assert_eq!(w.ack(1), Some((3, 3)), "1..=3 in one multiple ack");
        assert_eq!(w.ack(5), None, "4 is still running");
        assert_eq!(w.remove(4), Some((5, 1)), "4 nacked alone frees 5");
        assert!(w.is_empty());
    }

    #[test]
    fn a_nack_in_the_middle_is_never_covered_by_a_multiple_ack() {
        let mut w = AckWindow::default();
        for t in 1..=3 {
            w.delivered(t);
        }
        assert_eq!(w.remove(2), None, "1 still running");
        assert_eq!(w.ack(3), None);
        // 2 is gone from the window, so the multiple ack for 3 covers 1 and
        // 3 only; the broker already has 2's nack, sent first.
        assert_eq!(w.ack(1), Some((3, 2)));
    }

    #[test]
    fn a_full_window_acked_in_reverse_flushes_once_and_empties() {
        let mut w = AckWindow::default();
        for t in 1..=1000 {
            w.delivered(t);
        }
        for t in (2..=1000).rev() {
            assert_eq!(w.ack(t), None, "tag 1 still running ({t})");
        }
        assert_eq!(w.ack(1), Some((1000, 1000)));
        assert!(w.is_empty());
        w.delivered(1001);
        assert_eq!(w.ack(1001), Some((1001, 1)), "the window goes on");
    }
}
