//! Running the rest of the chain under a lease: a renewal in the
//! background while the handler runs, and the handler stopped when the
//! lease can no longer be shown to be ours.

use std::future::Future;
use std::time::Duration;

use tokio::time::{Instant, sleep_until, timeout};

use super::store::IdempotencyStore;

/// How a leased run ended.
pub(crate) enum Leased<T> {
    /// The handler finished while the lease was ours.
    Finished(T),
    /// The lease was taken by another consumer, or could not be renewed
    /// before it ended: the handler was stopped (its future dropped).
    Lost,
}

/// Runs `work` while renewing `key`'s lease every third of `lease`. A
/// renewal that fails (store unreachable) is tried again at the next tick;
/// when the lease's last known end comes without a successful renewal, the
/// work is stopped, since another consumer may claim the key from then on.
/// `claimed_at` is when the claim was asked: the store's lease cannot end
/// before `claimed_at + lease`.
pub(crate) async fn run_leased<T>(
    store: &dyn IdempotencyStore,
    (key, token): (&str, &str),
    claimed_at: Instant,
    lease: Duration,
    store_timeout: Duration,
    work: impl Future<Output = T>,
) -> Leased<T> {
    tokio::select! {
        // The handler first: a handler that finishes as the lease ends
        // keeps its result.
        biased;
        out = work => Leased::Finished(out),
        () = keep(store, key, token, lease, store_timeout, claimed_at) => Leased::Lost,
    }
}

/// Returns when the lease is lost.
async fn keep(
    store: &dyn IdempotencyStore,
    key: &str,
    token: &str,
    lease: Duration,
    store_timeout: Duration,
    claimed_at: Instant,
) {
    let every = lease / 3;
    let mut valid_until = claimed_at + lease;
    let mut next = claimed_at + every;
    loop {
        // Leave a renewal's time before the end: stop while the lease is
        // still ours rather than after it might not be.
        let deadline = valid_until
            .checked_sub(store_timeout)
            .unwrap_or(valid_until);
        if next >= deadline {
            sleep_until(deadline).await;
            tracing::warn!("idempotency lease could not be renewed in time: stopping the handler");
            return;
        }
        sleep_until(next).await;
        let asked = Instant::now();
        match timeout(store_timeout, store.renew(key, token, lease)).await {
            Ok(Ok(true)) => valid_until = asked + lease,
            Ok(Ok(false)) => {
                tracing::warn!("idempotency lease taken by another consumer: stopping the handler");
                return;
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "renewing an idempotency lease failed; trying again");
            }
            Err(_) => tracing::warn!(
                after = ?store_timeout,
                "renewing an idempotency lease timed out; trying again"
            ),
        }
        next = Instant::now() + every;
    }
}
