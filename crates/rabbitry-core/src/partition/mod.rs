//! Ordered processing by partition key: N partition queues, each with a
//! single active consumer, chosen by consistent hashing of the key.
//!
//! - [`Partitions`]: the queues (`<base>.<index>`) and the [`Route`] to
//!   them: jump consistent hash in the publisher, or a hashing exchange on
//!   the broker.
//! - [`PartitionedPublisher`]: refuses a message without a key, routes it,
//!   stamps the partition count, keeps its key's order with the outbox.
//! - [`check_partition_count`]: a consumer layer that catches a publisher
//!   and a consumer disagreeing on the count.
//!
//! The consumer side is [`Lanes`](crate::Lanes) (per-key order within a
//! partition) and [`OrderedRetry`](crate::OrderedRetry) (retries that keep
//! order).

mod count_check;
mod jump;
mod layout;
mod publisher;
mod route;

pub use self::count_check::{PARTITIONS_HEADER, check_partition_count};
pub use self::jump::{jump_hash, key_hash, partition_of};
pub use self::layout::{MAX_PARTITIONS, Partitions};
pub use self::publisher::PartitionedPublisher;
pub use self::route::Route;
