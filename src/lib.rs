//! # rabbitry
//!
//! Reliable messaging over RabbitMQ: a message handed to rabbitry is
//! confirmed by the broker, stored in the outbox and resent, or returned to
//! the caller as an error, never silently lost.
//!
//! This facade re-exports the crates of the workspace:
//!
//! - [`rabbitry_core`] (everything at the root): connections, topology, errors;
//! - [`postgres`] (feature `postgres`, on by default): the outbox store and
//!   its resend loop.
//!
//! See the README for a tour and `examples/` for runnable programs.

pub use rabbitry_core::*;

/// The Postgres outbox store and its resend loop.
#[cfg(feature = "postgres")]
pub use rabbitry_postgres as postgres;
