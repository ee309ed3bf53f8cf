//! What an idempotency layer counts.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one [`Idempotency`](super::Idempotency) since it was built
/// (shared by every consumer it guards).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct IdempotencyMetrics {
    /// Claims that let the handler run.
    pub claimed: u64,
    /// Deliveries acked without running the handler: the message was
    /// already handled.
    pub duplicates: u64,
    /// Claims refused because another consumer held a live lease (each
    /// try; the delivery waits and asks again).
    pub busy: u64,
    /// Store calls that failed or timed out (each try). On a claim, the
    /// handler did not run and nothing was acked.
    pub store_unavailable: u64,
    /// Deliveries given back to the queue (requeued) after waiting
    /// `max_wait` for a busy key or an unavailable store.
    pub gave_back: u64,
    /// Handlers marked done.
    pub completed: u64,
    /// Handlers that failed and gave their lease back.
    pub released: u64,
    /// Handlers stopped because their lease could not be renewed, or that
    /// finished after another consumer had taken their key.
    pub lease_lost: u64,
    /// Handlers that succeeded but whose `done` marker could not be written
    /// (the delivery is acked; a later duplicate may run again).
    pub mark_failed: u64,
    /// Deliveries with no key (no message id, no business key).
    pub missing_key: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) claimed: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) busy: AtomicU64,
    pub(crate) store_unavailable: AtomicU64,
    pub(crate) gave_back: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) released: AtomicU64,
    pub(crate) lease_lost: AtomicU64,
    pub(crate) mark_failed: AtomicU64,
    pub(crate) missing_key: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> IdempotencyMetrics {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        IdempotencyMetrics {
            claimed: l(&self.claimed),
            duplicates: l(&self.duplicates),
            busy: l(&self.busy),
            store_unavailable: l(&self.store_unavailable),
            gave_back: l(&self.gave_back),
            completed: l(&self.completed),
            released: l(&self.released),
            lease_lost: l(&self.lease_lost),
            mark_failed: l(&self.mark_failed),
            missing_key: l(&self.missing_key),
        }
    }
}
