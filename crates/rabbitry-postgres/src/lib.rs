//! # rabbitry-postgres
//!
//! The Postgres side of rabbitry's promise that no message is lost:
//!
//! - [`OutboxStore`]: the outbox table (migrations in the repository's
//!   `migrations/`, embedded, with their own history table). It is the
//!   publisher's fallback ([`rabbitry_core::Outbox`]) and the transactional
//!   outbox ([`OutboxStore::enqueue_in`] inside the application's
//!   transaction). Every call it makes is bounded ([`OutboxStoreBuilder`]).
//! - [`Relay`]: the confirm-driven resend loop, shared by services that run
//!   it in-process and by the `rabbitry-relay` binary.
//! - [`Inbox`]: the inbox table, for handlers whose effects are writes to
//!   the same database: the message's row and the effects commit together.
//! - [`migrations`]: the outbox's migrations, for applications that prefer
//!   to run them from their own sqlx migrator.

mod error;
mod failure;
mod inbox;
mod migrate;
mod outbox;
mod relay;

pub use error::{Error, Result};
pub use inbox::{INBOX_TABLE, Inbox, InboxTx};
pub use migrate::{MIGRATIONS_TABLE, migrations};
pub use outbox::{
    DeadFilter, DeadRow, NOTIFY_CHANNEL, OutboxRow, OutboxStats, OutboxStore, OutboxStoreBuilder,
    PendingCause, RowFilter,
};
pub use rabbitry_core::Backoff;
pub use relay::{BatchReport, Relay, RelayConfig, RelayMetrics};
/// The sqlx this crate is built with: `enqueue_in` takes its connection
/// type, so a service uses this one (or the same version).
pub use sqlx;
