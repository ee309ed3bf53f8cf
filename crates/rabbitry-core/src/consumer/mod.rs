//! The consumer runtime: ack modes, concurrency, retry then dead-letter,
//! re-subscription after a broker cancel, graceful shutdown.
//!
//! Every delivery ends in one decision, sent by one settle task per channel:
//! ack, requeue, or reject (broker dead-letter). In auto mode the handler's
//! result picks it:
//!
//! | handler result | decision |
//! | --- | --- |
//! | `Ok(())` | ack |
//! | retryable error, immediate retries left | run the handler again after a pause |
//! | retryable error, delayed retries left | republish to the retry queue (confirmed), then ack |
//! | anything else | republish to the error exchange with failure headers (confirmed), then ack |
//! | a republish fails | requeue (nothing is lost) |
//! | the handler panics | a retryable error |

mod delivery;
mod error_queue;
mod handler;
mod retry;
mod settle;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use self::delivery::{COUNTED_IN_HEADER, Delivery, REDELIVERIES_HEADER, RETRIES_HEADER};
pub use self::error_queue::{ErrorQueue, FailedMessage, ReplayReport};
pub use self::handler::{FailureKind, Handler, HandlerError, HandlerResult, JsonHandler, json};
pub use self::retry::{RetryPolicy, headers, retry_queue_name};
use self::settle::{Decision, SettleMsg, settle_task};
use crate::connection::outage::WarnThrottle;
use crate::connection::{Broker, ConnectionState, Role};
use crate::error::{Error, Result};
use crate::message::TRACEPARENT_HEADER;
use crate::publisher::Publisher;
use crate::topology::{Queue, Topology};

/// Who acknowledges deliveries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum AckMode {
    /// The handler's result decides (see the module docs). The default.
    #[default]
    Auto,
    /// The handler calls [`Delivery::ack`], [`Delivery::requeue`] or
    /// [`Delivery::reject`]. A delivery dropped without a decision is
    /// requeued with a warning.
    Manual,
    /// No acknowledgements: the broker forgets a message as soon as it is
    /// sent. At-most-once: a crash loses what was in flight.
    None,
}

/// What a consumer is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConsumerState {
    /// Declaring and subscribing for the first time.
    Starting,
    /// Subscribed and receiving.
    Consuming,
    /// Lost its subscription (broker cancel, channel error, connection
    /// lost) and is subscribing again with backoff.
    Recovering {
        /// Why.
        reason: String,
    },
    /// Stopped after a shutdown.
    Stopped,
}

/// Counters of a consumer since it was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerMetrics {
    /// Deliveries received.
    pub delivered: u64,
    /// Deliveries the broker had delivered before.
    pub redelivered: u64,
    /// Deliveries handled successfully.
    pub succeeded: u64,
    /// Handler failures (each attempt).
    pub failed_attempts: u64,
    /// Messages sent to a retry queue.
    pub delayed_retries: u64,
    /// Messages sent to the error exchange.
    pub dead_lettered: u64,
    /// Deliveries requeued.
    pub requeued: u64,
}

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    redelivered: AtomicU64,
    succeeded: AtomicU64,
    failed_attempts: AtomicU64,
    delayed_retries: AtomicU64,
    dead_lettered: AtomicU64,
    requeued: AtomicU64,
}

/// Builder for [`Consumer`].
#[derive(Debug)]
#[must_use]
pub struct ConsumerBuilder {
    broker: Broker,
    queue: String,
    topology: Option<Topology>,
    name: Option<String>,
    prefetch: u16,
    concurrency: usize,
    ack_mode: AckMode,
    retry: RetryPolicy,
    error_exchange: Option<String>,
    max_redeliveries: Option<u32>,
    shutdown_timeout: Duration,
}

impl ConsumerBuilder {
    /// Declares `topology` before subscribing, and again on every
    /// re-subscription. Default: none (the queue must exist).
    pub fn topology(mut self, topology: Topology) -> Self {
        self.topology = Some(topology);
        self
    }
    /// The consumer's name, in logs, headers and its consumer tag.
    /// Default: the queue name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// Unacknowledged deliveries the broker may send ahead. Default: 32.
    pub fn prefetch(mut self, n: u16) -> Self {
        self.prefetch = n;
        self
    }
    /// Handlers running at once. Default: 4. Use 1 (or partitioned lanes)
    /// when order matters.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }
    /// Who acknowledges. Default: [`AckMode::Auto`].
    pub fn ack_mode(mut self, mode: AckMode) -> Self {
        self.ack_mode = mode;
        self
    }
    /// Retries for retryable failures (auto mode). Default:
    /// [`RetryPolicy::default`].
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }
    /// Where failed messages go. Default: `<queue>.dlx`, the topology's
    /// convention, bound to `<queue>.dlq`.
    pub fn error_exchange(mut self, exchange: impl Into<String>) -> Self {
        self.error_exchange = Some(exchange.into());
        self
    }
    /// Poison-message guard: a message the broker delivered this many times
    /// without a decision (the consumer crashed or lost its connection
    /// mid-handler) goes to the error exchange without running the handler
    /// again. Read from quorum queues' `x-delivery-count`. Default: 10.
    /// Pair it with the queue's own `x-delivery-limit` as a backstop.
    pub fn max_redeliveries(mut self, n: u32) -> Self {
        self.max_redeliveries = Some(n);
        self
    }
    /// On shutdown, how long in-flight handlers may run before they are
    /// stopped and their deliveries requeued. Default: 30 s.
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }

    /// Every name the consumer will send fits in an AMQP short string: the
    /// queue, its consumer tag (`<name>-<12 chars>`), the retry queues
    /// (`<queue>.retry.<ms>ms`) and the error exchange.
    fn check_names(&self) -> Result<()> {
        use crate::wire::check_name;
        let name = self.name.as_deref().unwrap_or(&self.queue);
        check_name("queue name", &self.queue)
            .and_then(|()| check_name("consumer tag", &format!("{name}-{:012}", 0)))
            .and_then(|()| match &self.error_exchange {
                Some(exchange) => check_name("error exchange name", exchange),
                None => Ok(()),
            })
            .map_err(Error::Config)?;
        self.retry.topology(&self.queue).validate()
    }

    /// Validates the settings.
    pub fn build(self) -> Result<Consumer> {
        if self.queue.is_empty() {
            return Err(Error::Config("the consumer needs a queue name".into()));
        }
        if self.concurrency == 0 || self.prefetch == 0 {
            return Err(Error::Config(
                "consumer concurrency and prefetch must be at least 1".into(),
            ));
        }
        if usize::from(self.prefetch) < self.concurrency {
            return Err(Error::Config(format!(
                "prefetch ({}) below concurrency ({}) would leave handlers idle",
                self.prefetch, self.concurrency
            )));
        }
        if let Some(t) = &self.topology {
            t.validate()?;
        }
        self.check_names()?;
        let publisher = Publisher::builder(self.broker.clone())
            .channels(2)
            // Whatever the broker delivered can be dead-lettered or retried,
            // however large: a size limit here would requeue it forever.
            .max_message_size(usize::MAX)
            .app_id(self.broker.config().connection_name().to_owned())
            .build()?;
        let name = self.name.unwrap_or_else(|| self.queue.clone());
        Ok(Consumer {
            inner: Arc::new(Inner {
                error_exchange: self
                    .error_exchange
                    .unwrap_or_else(|| Queue::dead_letter_exchange_name(&self.queue)),
                broker: self.broker,
                publisher,
                queue: self.queue,
                topology: self.topology,
                name,
                prefetch: self.prefetch,
                concurrency: self.concurrency,
                ack_mode: self.ack_mode,
                retry: self.retry,
                max_redeliveries: self.max_redeliveries.unwrap_or(10),
                shutdown_timeout: self.shutdown_timeout,
                state: watch::Sender::new(ConsumerState::Starting),
                counters: Counters::default(),
            }),
        })
    }
}

/// A consumer of one queue. Cheap to clone.
///
/// ```no_run
/// # async fn run(broker: rabbitry_core::Broker) -> Result<(), rabbitry_core::Error> {
/// use rabbitry_core::{Consumer, Delivery, HandlerError, RetryPolicy};
/// use tokio_util::sync::CancellationToken;
///
/// let consumer = Consumer::builder(broker, "orders.created")
///     .concurrency(8)
///     .prefetch(64)
///     .retry(RetryPolicy::default().immediate(2))
///     .build()?;
/// let shutdown = CancellationToken::new();
/// consumer
///     .run(
///         |d: Delivery| async move {
///             let order: serde_json::Value = d.json().map_err(HandlerError::decode)?;
///             println!("{order}");
///             Ok(())
///         },
///         shutdown,
///     )
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Consumer {
    inner: Arc<Inner>,
}

struct Inner {
    broker: Broker,
    publisher: Publisher,
    queue: String,
    topology: Option<Topology>,
    name: String,
    prefetch: u16,
    concurrency: usize,
    ack_mode: AckMode,
    retry: RetryPolicy,
    error_exchange: String,
    max_redeliveries: u32,
    shutdown_timeout: Duration,
    state: watch::Sender<ConsumerState>,
    counters: Counters,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("queue", &self.inner.queue)
            .field("name", &self.inner.name)
            .field("ack_mode", &self.inner.ack_mode)
            .field("state", &*self.inner.state.borrow())
            .finish_non_exhaustive()
    }
}

/// Sends `Requeue` for a delivery unless a decision was sent: covers a
/// handler task that panics or is aborted at shutdown.
struct DecisionGuard {
    tx: mpsc::UnboundedSender<SettleMsg>,
    epoch: u64,
    tag: u64,
    sent: bool,
}

impl DecisionGuard {
    fn send(mut self, decision: Decision) {
        self.sent = true;
        let _ = self.tx.send(SettleMsg::Decide {
            epoch: self.epoch,
            tag: self.tag,
            decision,
        });
    }
}

impl Drop for DecisionGuard {
    fn drop(&mut self) {
        if !self.sent {
            let _ = self.tx.send(SettleMsg::Decide {
                epoch: self.epoch,
                tag: self.tag,
                decision: Decision::Requeue,
            });
        }
    }
}

struct Subscription {
    channel: lapin::Channel,
    stream: lapin::Consumer,
    tag: String,
}

impl Consumer {
    /// Starts a builder for consuming `queue` on `broker`'s consuming
    /// connection.
    pub fn builder(broker: Broker, queue: impl Into<String>) -> ConsumerBuilder {
        ConsumerBuilder {
            broker,
            queue: queue.into(),
            topology: None,
            name: None,
            prefetch: 32,
            concurrency: 4,
            ack_mode: AckMode::Auto,
            retry: RetryPolicy::default(),
            error_exchange: None,
            max_redeliveries: None,
            shutdown_timeout: Duration::from_secs(30),
        }
    }

    /// The current state.
    pub fn state(&self) -> ConsumerState {
        self.inner.state.borrow().clone()
    }

    /// A receiver of state changes, for health checks.
    pub fn watch_state(&self) -> watch::Receiver<ConsumerState> {
        self.inner.state.subscribe()
    }

    /// Counters since the consumer was built.
    pub fn metrics(&self) -> ConsumerMetrics {
        let c = &self.inner.counters;
        ConsumerMetrics {
            delivered: c.delivered.load(Ordering::Relaxed),
            redelivered: c.redelivered.load(Ordering::Relaxed),
            succeeded: c.succeeded.load(Ordering::Relaxed),
            failed_attempts: c.failed_attempts.load(Ordering::Relaxed),
            delayed_retries: c.delayed_retries.load(Ordering::Relaxed),
            dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
            requeued: c.requeued.load(Ordering::Relaxed),
        }
    }

    /// Consumes until `shutdown` is cancelled, then drains: stops intake,
    /// requeues deliveries that did not start, lets running handlers finish
    /// within the shutdown timeout (then stops them and requeues their
    /// deliveries), settles everything and closes the channel.
    ///
    /// A subscription the broker cancels (queue deleted, node lost) or a
    /// channel that fails is re-established with backoff; the state says so.
    pub async fn run(&self, handler: impl Handler, shutdown: CancellationToken) -> Result<()> {
        let handler: Arc<dyn Handler> = Arc::new(handler);
        let inner = &self.inner;
        let (settle_tx, settle_rx) = mpsc::unbounded_channel();
        let settler = tokio::spawn(settle_task(settle_rx, inner.name.clone()));
        let permits = Arc::new(Semaphore::new(inner.concurrency));
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut epoch = 0u64;
        let mut backoff = Duration::from_millis(200);
        let mut last: Option<Subscription> = None;

        // The consuming connection's state: when it is lost, so is the
        // subscription (rabbitry replaces connections whole).
        let mut connection = inner.broker.watch_state(Role::Consume);
        let mut warn = WarnThrottle::default();

        'subscribe: while !shutdown.is_cancelled() {
            let subscribed = tokio::select! {
                r = self.subscribe() => r,
                () = shutdown.cancelled() => break 'subscribe,
            };
            let mut sub = match subscribed {
                Ok(sub) => sub,
                Err(error) if epoch == 0 && !error.is_retryable() => {
                    // Never subscribed, and retrying cannot help (a queue
                    // that does not exist, a refused declaration): fail now
                    // instead of retrying forever under a typo.
                    tracing::error!(consumer = inner.name, queue = inner.queue, %error, "cannot start consuming");
                    drop(settle_tx);
                    let _ = tokio::time::timeout(Duration::from_secs(10), settler).await;
                    inner.state.send_replace(ConsumerState::Stopped);
                    return Err(error);
                }
                Err(error) => {
                    // Rate-limited: during an outage this fails every few
                    // seconds.
                    if let Some(suppressed) = warn.hit(std::time::Instant::now()) {
                        tracing::warn!(consumer = inner.name, queue = inner.queue, %error, retry_in = ?backoff, suppressed, "subscribing failed; retrying");
                    }
                    inner.state.send_replace(ConsumerState::Recovering {
                        reason: error.to_string(),
                    });
                    // Retry after the backoff, or as soon as the connection
                    // is back, whichever comes first.
                    connection.borrow_and_update();
                    tokio::select! {
                        () = shutdown.cancelled() => break 'subscribe,
                        () = tokio::time::sleep(backoff) => {}
                        () = connected(&mut connection) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            backoff = Duration::from_millis(200);
            warn.reset();
            epoch += 1;
            let mut last_tag = 0u64;
            inner.state.send_replace(ConsumerState::Consuming);
            tracing::info!(consumer = inner.name, queue = inner.queue, "consuming");
            connection.borrow_and_update();
            loop {
                let next = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => {
                        last = Some(sub);
                        break 'subscribe;
                    }
                    Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
                    Ok(()) = connection.changed() => {
                        let state = connection.borrow_and_update().clone();
                        if matches!(state, ConnectionState::Reconnecting | ConnectionState::Closed) {
                            tracing::warn!(consumer = inner.name, queue = inner.queue, %state, "consuming connection lost; subscribing again on the new one");
                            inner.state.send_replace(ConsumerState::Recovering {
                                reason: format!("consuming connection {state}"),
                            });
                            continue 'subscribe;
                        }
                        continue;
                    }
                    next = sub.stream.next() => next,
                };
                let delivery = match next {
                    Some(Ok(d)) => d,
                    Some(Err(error)) => {
                        tracing::warn!(consumer = inner.name, %error, "consumer stream error");
                        let status = sub.channel.status();
                        if status.connected() || status.reconnecting() {
                            continue;
                        }
                        inner.state.send_replace(ConsumerState::Recovering {
                            reason: error.to_string(),
                        });
                        continue 'subscribe;
                    }
                    None => {
                        tracing::warn!(
                            consumer = inner.name,
                            queue = inner.queue,
                            "subscription cancelled by the broker (queue deleted or node lost); subscribing again"
                        );
                        inner.state.send_replace(ConsumerState::Recovering {
                            reason: "subscription cancelled by the broker".into(),
                        });
                        continue 'subscribe;
                    }
                };
                // After lapin recovers a channel, delivery tags start again:
                // a new epoch voids decisions for the old deliveries (the
                // broker redelivers those).
                if delivery.delivery_tag <= last_tag {
                    epoch += 1;
                }
                last_tag = delivery.delivery_tag;
                let permit = tokio::select! {
                    p = permits.clone().acquire_owned() => p.map_err(|_| Error::Shutdown)?,
                    () = shutdown.cancelled() => {
                        if inner.ack_mode != AckMode::None {
                            // It never started: give it back.
                            let tag = delivery.delivery_tag;
                            let _ = settle_tx.send(SettleMsg::Delivered { epoch, tag, acker: delivery.acker.clone() });
                            let _ = settle_tx.send(SettleMsg::Decide { epoch, tag, decision: Decision::Requeue });
                        }
                        last = Some(sub);
                        break 'subscribe;
                    }
                };
                self.dispatch(&handler, delivery, epoch, &settle_tx, &mut tasks, permit);
            }
        }

        // Drain: stop intake and give back what never started, then let
        // running handlers finish (within the timeout), then settle.
        let channel = match last {
            Some(sub) => {
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    sub.channel
                        .basic_cancel(sub.tag.as_str().into(), BasicCancelOptions::default()),
                )
                .await;
                let mut stream = sub.stream;
                while let Ok(Some(Ok(d))) =
                    tokio::time::timeout(Duration::from_millis(100), stream.next()).await
                {
                    if inner.ack_mode != AckMode::None {
                        let tag = d.delivery_tag;
                        let _ = settle_tx.send(SettleMsg::Delivered {
                            epoch,
                            tag,
                            acker: d.acker.clone(),
                        });
                        let _ = settle_tx.send(SettleMsg::Decide {
                            epoch,
                            tag,
                            decision: Decision::Requeue,
                        });
                    }
                }
                Some(sub.channel)
            }
            // Shut down while (re)subscribing: handlers from an earlier
            // subscription may still run.
            None => None,
        };
        let finished = tokio::time::timeout(inner.shutdown_timeout, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if finished.is_err() {
            tracing::warn!(
                consumer = inner.name,
                running = tasks.len(),
                "handlers still running at the shutdown timeout; stopping them and requeueing their deliveries"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        drop(settle_tx);
        // A manual delivery the application still holds keeps the settle
        // task alive; do not wait for it forever.
        if tokio::time::timeout(Duration::from_secs(10), settler)
            .await
            .is_err()
        {
            tracing::warn!(
                consumer = inner.name,
                "settling did not finish; the broker requeues what is left"
            );
        }
        if let Some(channel) = channel {
            let _ = channel.close(200, "consumer stopped".into()).await;
        }
        inner.state.send_replace(ConsumerState::Stopped);
        tracing::info!(consumer = inner.name, "consumer stopped");
        Ok(())
    }

    async fn subscribe(&self) -> Result<Subscription> {
        let inner = &self.inner;
        if let Some(t) = &inner.topology {
            inner.broker.declare(t).await?;
        }
        // Before declaring anything of its own (retry queues named after
        // it): a queue that does not exist is a typo or a missing
        // declaration, and says so.
        if let Err(error) = inner.broker.queue_stats(&inner.queue).await {
            return Err(match error {
                Error::Broker { code: 404, .. } => Error::Config(format!(
                    "queue '{}' does not exist: declare it, or give the consumer its topology",
                    inner.queue
                )),
                other => other,
            });
        }
        if inner.ack_mode == AckMode::Auto && !inner.retry.delays.is_empty() {
            inner
                .broker
                .declare(&inner.retry.topology(&inner.queue))
                .await?;
        }
        let channel = inner.broker.open_channel(Role::Consume).await?;
        let timeout = inner.broker.operation_timeout();
        if inner.ack_mode != AckMode::None {
            crate::bounded::bounded(
                timeout,
                "basic.qos",
                channel.basic_qos(inner.prefetch, BasicQosOptions::default()),
            )
            .await?;
        }
        let tag = format!(
            "{}-{}",
            inner.name,
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        );
        let options = BasicConsumeOptions {
            no_ack: inner.ack_mode == AckMode::None,
            ..Default::default()
        };
        let stream = crate::bounded::within(
            timeout,
            "basic.consume",
            channel.basic_consume(
                inner.queue.as_str().into(),
                tag.as_str().into(),
                options,
                FieldTable::default(),
            ),
        )
        .await?
        .map_err(|e| match Error::from_lapin("basic.consume", &e) {
            Error::Broker { code, text, .. } => Error::Broker {
                operation: format!("consume from queue '{}'", inner.queue),
                code,
                text,
            },
            other => other,
        })?;
        Ok(Subscription {
            channel,
            stream,
            tag,
        })
    }

    fn dispatch(
        &self,
        handler: &Arc<dyn Handler>,
        delivery: lapin::message::Delivery,
        epoch: u64,
        settle_tx: &mpsc::UnboundedSender<SettleMsg>,
        tasks: &mut JoinSet<()>,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let inner = self.inner.clone();
        let c = &inner.counters;
        c.delivered.fetch_add(1, Ordering::Relaxed);
        if delivery.redelivered {
            c.redelivered.fetch_add(1, Ordering::Relaxed);
        }
        let tag = delivery.delivery_tag;
        let handler = handler.clone();
        match inner.ack_mode {
            AckMode::None | AckMode::Manual => {
                // Manual: the handler decides through the delivery, and
                // dropping the last clone undecided requeues it. None: the
                // broker already forgot the message (at-most-once).
                let manual = (inner.ack_mode == AckMode::Manual).then(|| {
                    let _ = settle_tx.send(SettleMsg::Delivered {
                        epoch,
                        tag,
                        acker: delivery.acker.clone(),
                    });
                    (settle_tx.clone(), epoch, inner.name.clone())
                });
                let d = Delivery::from_lapin(&inner.queue, delivery, manual);
                let span = process_span(&inner, &d, tag);
                tasks.spawn(
                    async move {
                        let _permit = permit;
                        let outcome = AssertUnwindSafe(handler.handle(d)).catch_unwind().await;
                        let c = &inner.counters;
                        let lost = inner.ack_mode == AckMode::None;
                        match outcome {
                            Ok(Ok(())) => {
                                c.succeeded.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(Err(error)) => {
                                c.failed_attempts.fetch_add(1, Ordering::Relaxed);
                                if lost {
                                    tracing::error!(%error, "handler failed in no-ack mode; the message is gone (at-most-once)");
                                } else {
                                    tracing::warn!(%error, "manual handler returned an error");
                                }
                            }
                            Err(_) => tracing::error!(no_ack = lost, "handler panicked"),
                        }
                    }
                    .instrument(span),
                );
            }
            AckMode::Auto => {
                let _ = settle_tx.send(SettleMsg::Delivered {
                    epoch,
                    tag,
                    acker: delivery.acker.clone(),
                });
                let guard = DecisionGuard {
                    tx: settle_tx.clone(),
                    epoch,
                    tag,
                    sent: false,
                };
                let d = Delivery::from_lapin(&inner.queue, delivery, None);
                let span = process_span(&inner, &d, tag);
                tasks.spawn(
                    async move {
                        let _permit = permit;
                        let decision = auto_decision(&inner, handler.as_ref(), &d).await;
                        if decision == Decision::Requeue {
                            inner.counters.requeued.fetch_add(1, Ordering::Relaxed);
                        }
                        guard.send(decision);
                    }
                    .instrument(span),
                );
            }
        }
    }
}

/// Resolves once the connection is (back) up.
async fn connected(state: &mut watch::Receiver<ConnectionState>) {
    let _ = state
        .wait_for(|s| {
            matches!(
                s,
                ConnectionState::Connected | ConnectionState::Blocked { .. }
            )
        })
        .await;
}

fn process_span(inner: &Inner, d: &Delivery, tag: u64) -> tracing::Span {
    tracing::info_span!(
        target: crate::SPAN_TARGET,
        "process",
        otel.name = %format_args!("{} process", inner.queue),
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.destination.name = %inner.queue,
        messaging.consumer.group.name = %inner.name,
        messaging.message.id = d.id(),
        messaging.rabbitmq.message.delivery_tag = tag,
        messaging.rabbitmq.destination.routing_key = d.routing_key(),
        traceparent = d.header(TRACEPARENT_HEADER).and_then(|h| h.as_str()).unwrap_or(""),
    )
}

/// Runs the handler with immediate retries, then picks the decision.
async fn auto_decision(inner: &Inner, handler: &dyn Handler, d: &Delivery) -> Decision {
    let c = &inner.counters;
    if d.delivery_count() >= inner.max_redeliveries {
        let reason = format!(
            "delivered {} times without a decision (the consumer crashed or lost its connection mid-handler): poison-message guard",
            d.delivery_count()
        );
        return dead_letter(
            inner,
            d,
            &reason,
            FailureKind::Permanent,
            d.delivery_count(),
        )
        .await;
    }
    if d.redelivered() && !d.broker_counts_deliveries() {
        // A classic queue redelivered it: count that in a header on a copy
        // (confirmed), ack this one, and handle the copy when it comes back.
        let msg = retry::counted_redelivery(d, d.delivery_count());
        return match inner.publisher.send(msg).await {
            Ok(()) => Decision::Ack,
            Err(error) => requeue_after_failure(&error, "work queue (redelivery count)").await,
        };
    }
    let retry = &inner.retry;
    let mut attempt = 0u32;
    loop {
        let outcome = AssertUnwindSafe(handler.handle(d.clone()))
            .catch_unwind()
            .await;
        let error = match outcome {
            Ok(Ok(())) => {
                c.succeeded.fetch_add(1, Ordering::Relaxed);
                return Decision::Ack;
            }
            Ok(Err(e)) => e,
            Err(panic) => {
                HandlerError::retryable(format!("handler panicked: {}", panic_text(&panic)))
            }
        };
        c.failed_attempts.fetch_add(1, Ordering::Relaxed);
        // Header values come from outside: saturate, never overflow.
        let attempts = d
            .retries()
            .saturating_mul(retry.immediate.saturating_add(1))
            .saturating_add(attempt)
            .saturating_add(1);
        if error.is_retryable() {
            if attempt < retry.immediate {
                tracing::debug!(%error, attempt = attempts, "handler failed; retrying at once");
                tokio::time::sleep(retry.immediate_pause(attempt)).await;
                attempt += 1;
                continue;
            }
            let next = d.retries().saturating_add(1);
            if let Some(retry_queue) = retry.retry_queue(&inner.queue, next) {
                let msg = retry::retry_message(d, &retry_queue, next);
                return match inner.publisher.send(msg).await {
                    Ok(()) => {
                        c.delayed_retries.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(%error, attempt = attempts, retry_queue, "handler failed; retrying later");
                        Decision::Ack
                    }
                    Err(publish_error) => {
                        requeue_after_failure(&publish_error, "retry queue").await
                    }
                };
            }
        }
        return dead_letter(inner, d, &error.to_string(), error.kind(), attempts).await;
    }
}

async fn dead_letter(
    inner: &Inner,
    d: &Delivery,
    reason: &str,
    kind: FailureKind,
    attempts: u32,
) -> Decision {
    let msg = retry::dead_letter_message(
        d,
        &inner.error_exchange,
        reason,
        kind,
        attempts,
        &inner.name,
    );
    match inner.publisher.send(msg).await {
        Ok(()) => {
            inner.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                message_id = d.id(),
                reason,
                kind = kind.as_str(),
                attempts,
                error_exchange = inner.error_exchange,
                "message dead-lettered"
            );
            Decision::Ack
        }
        Err(error) => requeue_after_failure(&error, "error exchange").await,
    }
}

/// A republish failed: the message must not be lost, so it is requeued,
/// after a pause so that a broker outage does not become a hot loop.
async fn requeue_after_failure(error: &Error, target: &str) -> Decision {
    tracing::error!(%error, target, "republishing failed; requeueing the message");
    tokio::time::sleep(Duration::from_secs(1)).await;
    Decision::Requeue
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
