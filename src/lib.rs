#![doc = include_str!("../README.md")]
//!
//! ## This crate
//!
//! The facade re-exports [`rabbitry_core`] at the root, and
//! `rabbitry-postgres` as [`postgres`] (feature `postgres`, on by default).
//! The companion types a service needs come with it:
//! [`CancellationToken`] for shutdown, [`lapin`], and `postgres::sqlx` (the
//! sqlx version `OutboxStore::enqueue_in` takes a connection of).
//!
//! One error: [`Error`]. The outbox's and the Redis store's errors convert
//! into it ([`Error::Store`], the store's own error kept as its source), a
//! broker error from the outbox comes back as itself, and a spawned task's
//! join error becomes [`Error::TaskFailed`], so a service's `main` can
//! return [`Result`] and use `?` throughout.

pub use rabbitry_core::*;

/// The Postgres outbox store and its resend loop.
#[cfg(feature = "postgres")]
pub use rabbitry_postgres as postgres;

#[cfg(feature = "redis")]
pub use rabbitry_redis as redis;
