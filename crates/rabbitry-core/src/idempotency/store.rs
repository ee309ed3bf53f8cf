//! The store an idempotency layer asks: claim a key for a while (a lease),
//! then mark it done, give it back, or extend the lease.

use std::time::Duration;

use crate::publisher::BoxFuture;

/// What a claim found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Claim {
    /// The key was free (or its lease had expired): it is ours until the
    /// lease ends, and the handler may run.
    Acquired,
    /// The message was already handled: ack it without running the handler.
    Done,
    /// Another consumer holds a live lease on it: do not run the handler now.
    Busy,
}

/// Why a store call failed. It never carries a store address, a password
/// or a payload.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be reached or refused the call.
    #[error("idempotency store unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The store did not answer within its bound.
    #[error("idempotency store did not answer {operation} within {after:?}")]
    TimedOut {
        /// What was asked.
        operation: &'static str,
        /// The bound that elapsed.
        after: Duration,
    },
}

impl StoreError {
    /// A store that could not be reached or refused the call.
    pub fn unavailable(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Unavailable(e.into())
    }
    /// Whether asking again later may succeed: always, for both kinds (an
    /// unreachable or slow store can come back).
    pub fn is_retryable(&self) -> bool {
        true
    }
}

/// The result of a store call.
pub type StoreResult<T> = Result<T, StoreError>;

/// Where an idempotency layer keeps its keys: a lease while a handler runs,
/// then a `done` marker for the retention time. Keys are opaque strings the
/// layer builds (prefix, consumer group, message id or business key); a
/// store keeps no payload.
///
/// Every method takes the claimant's `token`: a store changes a key only
/// while it still holds that token, so a consumer whose lease expired and
/// was taken by another cannot release or mark the other's work.
///
/// ```
/// use std::time::Duration;
/// use rabbitry_core::{Claim, IdempotencyStore, MemoryStore};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), rabbitry_core::StoreError> {
/// let store = MemoryStore::new();
/// let lease = Duration::from_secs(30);
/// assert_eq!(store.claim("orders:42", "t1", lease).await?, Claim::Acquired);
/// assert_eq!(store.claim("orders:42", "t2", lease).await?, Claim::Busy);
/// assert!(store.complete("orders:42", "t1", Duration::from_secs(3600)).await?);
/// assert_eq!(store.claim("orders:42", "t2", lease).await?, Claim::Done);
/// # Ok(()) }
/// ```
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Claims `key` for `lease` unless it is done or leased by another.
    fn claim<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, StoreResult<Claim>>;

    /// Marks `key` done for `retention`: the work is done, whoever holds
    /// the key now. `true` when it was still leased with `token` (or its
    /// lease had lapsed unclaimed); `false` when another consumer had
    /// claimed it after our lease ended (it is marked done all the same, so
    /// that its retry is acked rather than run a third time).
    fn complete<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        retention: Duration,
    ) -> BoxFuture<'a, StoreResult<bool>>;

    /// Gives `key` back (the handler failed), only while it holds `token`
    /// (a `done` marker is never given back).
    /// `false`: it was no longer ours.
    fn release<'a>(&'a self, key: &'a str, token: &'a str) -> BoxFuture<'a, StoreResult<bool>>;

    /// Extends the lease on `key` to `lease` from now, only while it holds
    /// `token`. `false`: the lease was lost.
    fn renew<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, StoreResult<bool>>;
}
