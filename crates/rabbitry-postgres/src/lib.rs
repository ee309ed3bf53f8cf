//! # rabbitry-postgres
//!
//! The Postgres side of rabbitry's promise that no message is lost:
//!
//! - [`OutboxStore`]: the outbox table (migrations in the repository's
//!   `migrations/`, embedded). It is the publisher's fallback
//!   ([`rabbitry_core::Outbox`]) and the transactional outbox
//!   ([`OutboxStore::enqueue_in`] inside the application's transaction).
//! - [`Relay`]: the confirm-driven resend loop, shared by services that run
//!   it in-process and by the `rabbitry-relay` binary.

mod error;
mod outbox;
mod relay;

pub use error::{Error, Result};
pub use outbox::{DeadFilter, DeadRow, NOTIFY_CHANNEL, OutboxStats, OutboxStore};
pub use relay::{Backoff, BatchReport, Relay, RelayConfig, RelayMetrics};
