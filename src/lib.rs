//! # rabbitry
//!
//! Reliable messaging over RabbitMQ for Rust services, built on lapin and
//! tokio. A message handed to rabbitry ends up in exactly one of three
//! places: confirmed by the broker into durable storage, stored in a
//! Postgres outbox and resent until the broker confirms it, or returned to
//! the caller as an error. On the consuming side every delivery ends in one
//! explicit decision: ack, retry, requeue or dead-letter.
//!
//! This facade re-exports `rabbitry-core` at its root, the Postgres crate as
//! [`postgres`] (feature `postgres`, on by default) and the Redis crate as
//! `redis` (feature `redis`). `cargo doc -p rabbitry --all-features --open`
//! shows all of it.
//!
//! ## Which type for which job
//!
//! | job | start with | guide in the repository |
//! | --- | --- | --- |
//! | connect to a cluster, by builder or from the environment | [`BrokerConfig`], [`Broker`] | `docs/configuration.md`, `docs/recovery.md`, `docs/security.md` |
//! | declare exchanges, queues (quorum, dead-lettered) and bindings | [`Topology`], [`Queue`], [`Exchange`], [`Binding`] | `docs/topology.md` |
//! | publish with confirms; defer to an outbox when the broker fails | [`Publisher`], [`Message`], [`PublishOutcome`] | `docs/guarantees.md` |
//! | store messages in Postgres, in the application's own transaction | [`postgres::OutboxStore`] | `docs/outbox.md` |
//! | resend the outbox (in-process, or the `rabbitry-relay` binary) | [`postgres::Relay`], [`postgres::RelayConfig`] | `docs/operating.md` |
//! | consume: ack modes, concurrency, retry, then dead-letter | [`Consumer`], [`Delivery`], [`HandlerError`], [`RetryPolicy`], [`Disposition`] | `docs/ack-modes.md`, `docs/retries.md`, `docs/consumer.md` |
//! | run a handler once per message | [`Idempotency`] over `redis::RedisStore` or [`MemoryStore`]; [`postgres::Inbox`] | `docs/idempotency.md` |
//! | deliver after a delay, never early | [`Delays`] | `docs/delays.md` |
//! | keep order per key | [`Partitions`], [`PartitionedPublisher`], [`Lanes`], [`OrderedRetry`] | `docs/ordering.md` |
//! | look at, replay or purge what consumers gave up on | [`ErrorQueue`], [`ErrorFilter`], [`ListQuery`] | `docs/operating.md` |
//! | metrics and traces | [`describe_metrics`], [`SPAN_TARGET`], [`Publisher::metrics`] and friends | `docs/observability.md` |
//! | handle failures: one error for `?` everywhere | [`Error`] ([`Error::is_retryable`]); [`postgres::Error`] converts into it | `docs/guarantees.md` |
//!
//! In the auto ack mode (the default) the handler's result picks the
//! delivery's [`Disposition`]; the table of what each result does is on
//! [`AckMode::Auto`].
//!
//! The companion types every service needs come with the facade:
//! [`CancellationToken`] (the shutdown signal of [`Consumer::run`] and
//! [`Relay::spawn`](postgres::Relay::spawn)), [`lapin`], and
//! [`postgres::sqlx`], the sqlx whose connection type
//! [`OutboxStore::enqueue_in`](postgres::OutboxStore::enqueue_in) takes (a
//! service uses this one, or sqlx 0.9 itself).
//!
//! One error: [`Error`]. The outbox's and the Redis store's errors convert
//! into it ([`Error::Store`], the store's own error kept as its source), a
//! broker error from the outbox comes back as itself, and a spawned task's
//! join error becomes [`Error::TaskFailed`], so a service's `main` can
//! return [`Result`] and use `?` throughout. Every long-running part stops
//! with a [`CancellationToken`]; the README's "Shutdown" section gives the
//! order.
//!
//! ## Features
//!
//! | feature | default | what it adds | dependencies it brings |
//! | --- | --- | --- | --- |
//! | `postgres` | yes | [`postgres`]: the outbox store, the relay loop, the inbox | sqlx (Postgres, rustls) |
//! | `redis` | no | `redis`: the Redis idempotency store | redis |
//! | `otel` | no | the W3C trace context of a message from and to the current OpenTelemetry span | opentelemetry, tracing-opentelemetry |
//!
//! A service that only publishes and consumes takes
//! `rabbitry = { version = "0.1", default-features = false }` and compiles
//! neither sqlx nor redis (`cargo tree -p rabbitry --no-default-features -e
//! normal` lists neither). `rabbitry-testkit`'s `containers` feature starts
//! the services with testcontainers for tests on a machine with Docker.
//!
//! ## Connect
//!
//! ```no_run
//! use std::time::Duration;
//! use rabbitry::{Broker, BrokerConfig};
//!
//! # async fn run() -> Result<(), rabbitry::Error> {
//! let broker = Broker::connect(
//!     BrokerConfig::builder()
//!         .endpoints(["amqp://app:secret@rabbit-1:5672/%2f", "amqp://app:secret@rabbit-2:5672/%2f"])
//!         .connection_name("billing")
//!         .heartbeat(Duration::from_secs(30))
//!         .build()?,
//! )
//! .await?;
//! // The same from RABBITRY_AMQP_URL, RABBITRY_CONNECTION_NAME,
//! // RABBITRY_HEARTBEAT_SECS, ... (the table is on `BrokerConfig::from_env`):
//! let broker = Broker::connect(BrokerConfig::from_env()?).await?;
//! # Ok(()) }
//! ```
//!
//! ## Publish with confirms and an outbox
//!
//! [`Publisher::publish`] returns once the broker confirmed the message, or
//! once it is in the outbox ([`PublishOutcome::Deferred`]), or with an
//! error that says whether a retry can help.
//!
//! ```no_run
//! # #[cfg(feature = "postgres")]
//! # async fn run(broker: rabbitry::Broker) -> Result<(), Box<dyn std::error::Error>> {
//! use rabbitry::postgres::OutboxStore;
//! use rabbitry::{Message, PublishOutcome, Publisher};
//!
//! let store = OutboxStore::connect("postgres://app@db/app").await?;
//! store.migrate().await?;
//! let publisher = Publisher::builder(broker).outbox(store.clone()).build()?;
//! let msg = Message::json("orders", "order.created", &serde_json::json!({"id": 7}))?;
//! match publisher.publish(msg).await? {
//!     PublishOutcome::Confirmed => {}
//!     PublishOutcome::Deferred { outbox_id, .. } => println!("in the outbox as row {outbox_id}"),
//!     _ => {}
//! }
//!
//! // A business write and its message in one transaction:
//! let mut tx = store.pool().begin().await?;
//! rabbitry::postgres::sqlx::query("UPDATE orders SET paid = true WHERE id = $1")
//!     .bind(7_i64)
//!     .execute(&mut *tx)
//!     .await?;
//! store.enqueue_in(&mut tx, &Message::json("orders", "order.paid", &serde_json::json!({"id": 7}))?).await?;
//! tx.commit().await?;
//! # Ok(()) }
//! ```
//!
//! ## Resend the outbox: the relay
//!
//! Rows in the outbox are published by a relay: in-process as below, or the
//! `rabbitry-relay` binary (`cargo install --path crates/rabbitry-relay`).
//!
//! ```no_run
//! # #[cfg(feature = "postgres")]
//! # async fn run(store: rabbitry::postgres::OutboxStore, broker: rabbitry::Broker) -> rabbitry::Result<()> {
//! use rabbitry::postgres::{Relay, RelayConfig};
//! use rabbitry::{CancellationToken, Publisher};
//!
//! let relay = Relay::new(store, Publisher::builder(broker).build()?, RelayConfig::default())?;
//! let shutdown = CancellationToken::new();
//! let task = relay.spawn(shutdown.clone());
//! // ... on shutdown:
//! shutdown.cancel();
//! task.await??;
//! # Ok(()) }
//! ```
//!
//! ## Consume with retry, then dead-letter
//!
//! ```no_run
//! use std::time::Duration;
//! use rabbitry::{CancellationToken, Consumer, Delivery, HandlerError, RetryPolicy, consumer_json};
//!
//! #[derive(serde::Deserialize)]
//! struct OrderCreated { id: u64 }
//!
//! # async fn run(broker: rabbitry::Broker) -> Result<(), rabbitry::Error> {
//! let consumer = Consumer::builder(broker, "orders.created")
//!     .prefetch(64)
//!     .retry(RetryPolicy::default().immediate(2).delays([Duration::from_secs(10)]))
//!     .build()?;
//! let shutdown = CancellationToken::new();
//! consumer
//!     .run(
//!         consumer_json(|order: OrderCreated, _d: Delivery| async move {
//!             if order.id == 0 {
//!                 return Err(HandlerError::permanent("order id 0")); // the error queue at once
//!             }
//!             Ok(()) // ack; `?` on any error retries
//!         }),
//!         shutdown,
//!     )
//!     .await
//! # }
//! ```
//!
//! ## Idempotency with Redis
//!
//! ```no_run
//! # #[cfg(feature = "redis")]
//! # async fn run(broker: rabbitry::Broker) -> rabbitry::Result<()> {
//! use rabbitry::redis::RedisStore;
//! use rabbitry::{Consumer, Idempotency};
//!
//! let idempotency = Idempotency::builder(RedisStore::builder("redis://127.0.0.1:6379").build()?).build()?;
//! let consumer = Consumer::builder(broker, "orders.created")
//!     .idempotent(idempotency.layer()) // a duplicate is acked without running the handler
//!     .build()?;
//! # Ok(()) }
//! ```
//!
//! ## A Postgres inbox
//!
//! For handlers whose effects are writes to Postgres: the inbox row and the
//! writes commit together, so the effects happen once.
//!
//! ```no_run
//! # #[cfg(feature = "postgres")]
//! # async fn run(inbox: rabbitry::postgres::Inbox, d: rabbitry::Delivery) -> rabbitry::HandlerResult {
//! let Some(mut tx) = inbox.begin("billing", d.id()).await? else {
//!     return Ok(()); // handled before: ack, do nothing again
//! };
//! rabbitry::postgres::sqlx::query("INSERT INTO invoices (order_id) VALUES ($1)")
//!     .bind(42_i64)
//!     .execute(tx.conn())
//!     .await?;
//! tx.commit().await?;
//! # Ok(()) }
//! ```
//!
//! ## Delays
//!
//! ```no_run
//! use std::time::Duration;
//! use rabbitry::{Delays, Message, Publisher};
//!
//! # async fn run(broker: rabbitry::Broker) -> Result<(), rabbitry::Error> {
//! let delays = Delays::builder(Publisher::builder(broker).build()?).build().await?;
//! let timeout = Message::json("", "orders.timeouts", &serde_json::json!({"order": 7}))?;
//! delays.publish_after(timeout, Duration::from_secs(15 * 60)).await?; // never early
//! # Ok(()) }
//! ```
//!
//! ## Ordering by key
//!
//! ```no_run
//! use rabbitry::{Consumer, Lanes, Message, OrderedRetry, PartitionedPublisher, Partitions, Publisher};
//!
//! # async fn run(broker: rabbitry::Broker) -> Result<(), rabbitry::Error> {
//! let partitions = Partitions::new("user-events", 4); // user-events.0 … .3
//! broker.declare(&partitions.topology()?).await?;
//! let publisher = PartitionedPublisher::new(Publisher::builder(broker.clone()).build()?, partitions.clone())?;
//! publisher.publish(Message::bytes("", "", "signed up").partition_key("user-42")).await?;
//! for queue in partitions.queue_names() {
//!     let consumer = Consumer::builder(broker.clone(), queue)
//!         .dispatch(Lanes::new(8)) // 8 keys at once, each key in order
//!         .ordered(OrderedRetry::default())
//!         .build()?;
//!     // tokio::spawn(consumer.run(handler, shutdown.clone()));
//! #   drop(consumer);
//! }
//! # Ok(()) }
//! ```
//!
//! ## The error queue
//!
//! ```no_run
//! # async fn run(broker: rabbitry::Broker, publisher: rabbitry::Publisher) -> Result<(), rabbitry::Error> {
//! use rabbitry::{ErrorFilter, ErrorQueue, ListQuery};
//!
//! let errors = ErrorQueue::new(broker, "orders.created.dlq");
//! let page = errors.peek(&ListQuery::new().limit(20)).await?; // changes nothing
//! for failed in &page.messages {
//!     println!("{} {}", failed.message_id, failed.reason());
//! }
//! errors.replay_where(&publisher, None, &ErrorFilter::new().exception_contains("timeout")).await?;
//! # Ok(()) }
//! ```
//!
//! ## Guides
//!
//! The repository's `README.md` walks through every capability with its
//! defaults; `docs/` holds the guides named in the table above, and
//! `examples/` a runnable example per capability (`cargo run --example
//! demo` runs the whole flow).

pub use rabbitry_core::*;

/// The Postgres side (feature `postgres`, on by default): the outbox store
/// ([`OutboxStore`](postgres::OutboxStore)), the resend loop
/// ([`Relay`](postgres::Relay)), the inbox ([`Inbox`](postgres::Inbox)),
/// and their error ([`postgres::Error`]).
#[cfg(feature = "postgres")]
#[doc(inline)]
pub use rabbitry_postgres as postgres;

/// The Redis idempotency store (feature `redis`):
/// [`RedisStore`](redis::RedisStore), for [`Idempotency`].
#[cfg(feature = "redis")]
#[doc(inline)]
pub use rabbitry_redis as redis;

// The README's examples are compiled and run as doc tests too.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
