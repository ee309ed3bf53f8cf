//! # rabbitry-redis
//!
//! The Redis [`IdempotencyStore`](rabbitry_core::IdempotencyStore) behind
//! rabbitry's [`Idempotency`](rabbitry_core::Idempotency) layer, for
//! consumers on several processes or machines:
//!
//! - `store`: [`RedisStore`], over one multiplexed [`ConnectionManager`]
//!   (concurrent deliveries share its round trips; it reconnects by itself);
//! - `scripts`: the compare-and-delete and compare-and-extend scripts, so
//!   that a consumer gives back or extends a lease only while it holds it;
//! - `batch`: claims and done markers of concurrent deliveries, each a
//!   native `SET`, sent as one pipeline (needs Redis 7.0 or later);
//! - `error`: [`Error`], for building the store.
//!
//! ```no_run
//! # async fn run(broker: rabbitry_core::Broker) -> Result<(), Box<dyn std::error::Error>> {
//! use rabbitry_core::{Consumer, Idempotency};
//! use rabbitry_redis::RedisStore;
//!
//! let store = RedisStore::builder("redis://127.0.0.1:6379").build()?;
//! let idempotency = Idempotency::builder(store).build()?;
//! let consumer = Consumer::builder(broker, "orders.created")
//!     .idempotent(idempotency.layer())
//!     .build()?;
//! # Ok(()) }
//! ```
//!
//! [`ConnectionManager`]: redis::aio::ConnectionManager

mod batch;
mod error;
mod scripts;
mod store;

pub use error::Error;
pub use store::{RedisStore, RedisStoreBuilder};
