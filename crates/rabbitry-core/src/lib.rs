//! # rabbitry-core
//!
//! The lapin-facing layer of rabbitry:
//!
//! - [`BrokerConfig`] and [`Broker`]: separate publishing and consuming
//!   connections across a cluster's endpoints, auto-recovery, observable
//!   [`ConnectionState`], credentials redacted everywhere;
//! - [`Topology`]: exchanges, queues (quorum by default, each wired to a
//!   dead-letter exchange) and bindings, declared idempotently and again
//!   after every reconnect;
//! - [`Message`] and [`Publisher`]: confirmed, mandatory, persistent
//!   publishing over a pool of confirm-mode channels, with an [`Outbox`]
//!   for failures;
//! - [`Consumer`]: ack modes, concurrency, retry then dead-letter, and the
//!   [`ErrorQueue`] tools for the person who handles failures;
//! - [`Delays`]: messages delivered to a queue after a delay, never early:
//!   fixed delay queues, a binary TTL cascade, or the delayed-message plugin;
//! - [`Partitions`], [`PartitionedPublisher`], [`Lanes`] and
//!   [`OrderedRetry`]: ordered processing by partition key (single active
//!   consumer per partition queue, per-key lanes, in-place retries);
//! - [`Idempotency`]: a layer that runs a handler once per message, over an
//!   [`IdempotencyStore`] ([`MemoryStore`] here, Redis in `rabbitry-redis`);
//! - [`Error`]: one error type that says whether a retry can help.
//!
//! ```no_run
//! # async fn run() -> Result<(), rabbitry_core::Error> {
//! use rabbitry_core::{Broker, BrokerConfig, Queue, Topology};
//!
//! let broker = Broker::connect(
//!     BrokerConfig::builder()
//!         .endpoints(["amqp://guest:guest@rabbit-1:5672/%2f", "amqp://guest:guest@rabbit-2:5672/%2f"])
//!         .connection_name("billing")
//!         .build()?,
//! )
//! .await?;
//! broker.declare(&Topology::new().queue(Queue::new("invoices"))).await?;
//! # Ok(()) }
//! ```

mod backoff;
mod bounded;
mod config;
mod connection;
mod consumer;
mod count;
mod delay;
mod delay_queue;
mod error;
mod header;
mod idempotency;
mod log_filter;
mod log_throttle;
mod message;
#[doc(hidden)]
pub mod metric_names;
mod partition;
mod publisher;
pub mod raw;
mod topology;
mod trace_context;
mod wire;

pub use backoff::Backoff;
pub use config::{BrokerConfig, BrokerConfigBuilder, Endpoint};
pub use connection::ServerVersion;
pub use connection::{Broker, ConnectionState, Role};
pub use consumer::{
    AckMode, COUNTED_IN_HEADER, Concurrent, Consumer, ConsumerBuilder, ConsumerMetrics,
    ConsumerState, DEFAULT_HANDLER_TIMEOUT, DEFAULT_SCAN, Delivery, Dispatch, Disposition,
    ErrorFilter, ErrorQueue, FailedMessage, FailureKind, Handler, HandlerError, HandlerResult,
    JsonHandler, Lanes, ListQuery, Listing, Next, OrderedRetry, REDELIVERIES_HEADER,
    RETRIES_HEADER, ReplayReport, RetryPolicy, Slot, WhenExhausted, headers, json as consumer_json,
    retry_queue_name,
};
pub use delay::{
    DUE_AT_HEADER, DelayStrategy, Delays, DelaysBuilder, MAX_CASCADE_LEVELS, MAX_DUE_AT_MILLIS,
};
pub use error::{Error, Result, RetryAdvice};
pub use idempotency::{
    Claim, DEFAULT_LEASE, DEFAULT_RETENTION, Idempotency, IdempotencyBuilder, IdempotencyMetrics,
    IdempotencyStore, MemoryStore, MissingKey, StoreError, StoreResult,
};
pub use log_filter::{PAYLOAD_TARGETS_OFF, RECOMMENDED_LOG_FILTER, log_filter};
#[doc(hidden)]
pub use log_throttle::WarnThrottle;
pub use message::{
    HeaderValue, Headers, Message, MessageProperties, PARTITION_KEY_HEADER, TRACEPARENT_HEADER,
};
pub use metric_names::describe_metrics;
pub use partition::{
    MAX_PARTITIONS, PARTITIONS_HEADER, PartitionedPublisher, Partitions, Route,
    check_partition_count, jump_hash, key_hash, partition_of,
};
pub use publisher::{
    BoxFuture, Outbox, PublishOutcome, Publisher, PublisherBuilder, PublisherMetrics,
};
pub use topology::DEFAULT_DELIVERY_LIMIT;
pub use topology::{
    ArgValue, Arguments, Binding, DeadLetter, Exchange, ExchangeKind, Overflow, Queue, QueueStats,
    QueueType, TeardownReport, Topology,
};
pub use wire::MAX_SHORT_STRING;

/// The `tracing` target of rabbitry's per-message spans (`publish`,
/// `process`), which follow the OpenTelemetry messaging conventions
/// (`messaging.system`, `messaging.destination.name`, `messaging.message.id`,
/// …). They are `info` spans on their own target, so that a service can send
/// them to an OpenTelemetry layer without paying for them in its log output:
/// `RUST_LOG=info,rabbitry::otel=off` keeps the logs and drops the spans.
pub const SPAN_TARGET: &str = "rabbitry::otel";

/// The lapin version rabbitry is built on, for users who reach below.
pub use lapin;
/// The shutdown signal every long-running part takes (`Consumer::run`,
/// `Relay::spawn`), so a service needs no tokio-util of its own.
pub use tokio_util::sync::CancellationToken;
