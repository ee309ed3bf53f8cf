#![doc = include_str!("../README.md")]
//!
//! ## This crate
//!
//! The facade re-exports [`rabbitry_core`] at the root, and
//! `rabbitry-postgres` as [`postgres`] (feature `postgres`, on by default).
//! The companion types a service needs come with it:
//! [`CancellationToken`] for shutdown, [`lapin`], and `postgres::sqlx` (the
//! sqlx version `OutboxStore::enqueue_in` takes a connection of).

pub use rabbitry_core::*;

/// The Postgres outbox store and its resend loop.
#[cfg(feature = "postgres")]
pub use rabbitry_postgres as postgres;

#[cfg(feature = "redis")]
pub use rabbitry_redis as redis;
