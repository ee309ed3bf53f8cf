//! What an idempotency layer counts.

use crate::count::{Count, labels};
use crate::metric_names as names;

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

/// The live counters behind [`IdempotencyMetrics`], each exported too (see
/// [`metric_names`](crate::metric_names)).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) claimed: Count,
    pub(crate) duplicates: Count,
    pub(crate) busy: Count,
    pub(crate) store_unavailable: Count,
    pub(crate) gave_back: Count,
    pub(crate) completed: Count,
    pub(crate) released: Count,
    pub(crate) lease_lost: Count,
    pub(crate) mark_failed: Count,
    pub(crate) missing_key: Count,
}

impl Counters {
    /// Counters exported with the store's key `prefix` as label.
    pub(crate) fn labelled(prefix: &str) -> Self {
        let l = labels(&[("prefix", prefix)]);
        let c = |name| Count::named(name, &l);
        Self {
            claimed: c(names::IDEMPOTENCY_CLAIMED),
            duplicates: c(names::IDEMPOTENCY_DUPLICATES),
            busy: c(names::IDEMPOTENCY_BUSY),
            store_unavailable: c(names::IDEMPOTENCY_STORE_UNAVAILABLE),
            gave_back: c(names::IDEMPOTENCY_GAVE_BACK),
            completed: c(names::IDEMPOTENCY_COMPLETED),
            released: c(names::IDEMPOTENCY_RELEASED),
            lease_lost: c(names::IDEMPOTENCY_LEASE_LOST),
            mark_failed: c(names::IDEMPOTENCY_MARK_FAILED),
            missing_key: c(names::IDEMPOTENCY_MISSING_KEY),
        }
    }

    pub(crate) fn bump(counter: &Count) {
        counter.bump();
    }

    pub(crate) fn snapshot(&self) -> IdempotencyMetrics {
        IdempotencyMetrics {
            claimed: self.claimed.get(),
            duplicates: self.duplicates.get(),
            busy: self.busy.get(),
            store_unavailable: self.store_unavailable.get(),
            gave_back: self.gave_back.get(),
            completed: self.completed.get(),
            released: self.released.get(),
            lease_lost: self.lease_lost.get(),
            mark_failed: self.mark_failed.get(),
            missing_key: self.missing_key.get(),
        }
    }
}
