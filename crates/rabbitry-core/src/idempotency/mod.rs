//! Idempotent consuming: a handler runs at most once per message, and never
//! twice at the same time, across every consumer of a group.
//!
//! - `store`: the [`IdempotencyStore`] trait (claim with a lease, complete,
//!   release, renew) and its [`Claim`] answers;
//! - `memory`: [`MemoryStore`], for tests and single-process services
//!   (`rabbitry-redis` has the shared one);
//! - `config`: [`Idempotency`] and its builder: key, prefix, lease,
//!   retention, waits;
//! - `layer`: the consumer layer; `lease`: renewal while the handler runs;
//! - `metrics`: [`IdempotencyMetrics`].
//!
//! See `docs/idempotency.md` for what each store guarantees.

mod config;
mod layer;
mod lease;
mod memory;
mod metrics;
mod store;

pub use self::config::{
    DEFAULT_LEASE, DEFAULT_RETENTION, Idempotency, IdempotencyBuilder, MissingKey,
};
pub use self::memory::MemoryStore;
pub use self::metrics::IdempotencyMetrics;
pub use self::store::{Claim, IdempotencyStore, StoreError, StoreResult};

#[cfg(test)]
mod layer_tests;
