//! Building a consumer: its settings, checked once.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::delivery::Delivery;
use super::dispatch::{Concurrent, Dispatch};
use super::disposition::Disposition;
use super::layer::{Layer, Next, from_fn};
use super::ordered::OrderedRetry;
use super::policy::RetryPolicy;
use super::telemetry::{ConsumerMetrics, Counters};
use crate::connection::Broker;
use crate::error::{Error, Result};
use crate::publisher::Publisher;
use crate::topology::{Queue, QueueStats, Topology};

/// Who acknowledges deliveries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum AckMode {
    /// The handler's result decides, through its
    /// [`Disposition`](super::Disposition). The default.
    ///
    /// | handler result | disposition | what happens |
    /// | --- | --- | --- |
    /// | `Ok(())` | `Ack` | ack |
    /// | retryable error | `Retry { after: None }` | run again after a pause while immediate retries are left; then republish to the next retry queue (confirmed) and ack; when the delays are used up, the error exchange |
    /// | `HandlerError::retryable(e).after(d)` | `Retry { after: Some(d) }` | republish to a delay queue for `d` (rounded up, never early) and ack |
    /// | `HandlerError::requeue(e)` | `Requeue` | `basic.reject(requeue)`: the broker delivers it again and counts it |
    /// | permanent or decode error | `DeadLetter` | republish to the error exchange with failure headers (confirmed), then ack |
    /// | the handler panics or times out | `Retry { after: None }` | as a retryable error |
    /// | a republish fails (three tries) | | given back to the queue: nothing is lost |
    ///
    /// The delays and the number of in-process retries come from the
    /// consumer's [`RetryPolicy`](super::RetryPolicy); the error exchange is
    /// `<queue>.dlx`, bound to `<queue>.dlq`, which
    /// [`ErrorQueue`](super::ErrorQueue) reads.
    #[default]
    Auto,
    /// The handler settles with [`Delivery::settle`], [`Delivery::ack`],
    /// [`Delivery::requeue`] or [`Delivery::reject`]. A delivery dropped
    /// without a decision is given back to the queue with a warning.
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

/// The handler timeout unless set: below RabbitMQ's default consumer
/// timeout (30 minutes), after which the broker would close the channel and
/// redeliver every message in flight on it.
pub const DEFAULT_HANDLER_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Builder for [`Consumer`].
#[must_use]
pub struct ConsumerBuilder {
    broker: Broker,
    queue: String,
    topology: Option<Topology>,
    name: Option<String>,
    prefetch: u16,
    dispatch: Arc<dyn Dispatch>,
    ack_mode: AckMode,
    retry: RetryPolicy,
    ordered: Option<OrderedRetry>,
    error_exchange: Option<String>,
    max_redeliveries: u32,
    shutdown_timeout: Duration,
    backlog_poll: Duration,
    /// `None`: the default for the ack mode.
    handler_timeout: Option<Option<Duration>>,
    layers: Vec<Layer>,
}

impl std::fmt::Debug for ConsumerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerBuilder")
            .field("queue", &self.queue)
            .field("ack_mode", &self.ack_mode)
            .field("prefetch", &self.prefetch)
            .field("layers", &self.layers.len())
            .finish_non_exhaustive()
    }
}

impl ConsumerBuilder {
    pub(crate) fn new(broker: Broker, queue: String) -> Self {
        Self {
            broker,
            queue,
            topology: None,
            name: None,
            prefetch: 32,
            dispatch: Arc::new(Concurrent::new(4)),
            ack_mode: AckMode::Auto,
            retry: RetryPolicy::default(),
            ordered: None,
            error_exchange: None,
            max_redeliveries: 10,
            shutdown_timeout: Duration::from_secs(30),
            backlog_poll: Duration::from_secs(15),
            handler_timeout: None,
            layers: Vec::new(),
        }
    }
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
    /// Handlers running at once, in any order ([`Concurrent`]). Default: 4.
    /// Use 1 (or a keyed [`Dispatch`]) when order matters.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.dispatch = Arc::new(Concurrent::new(n));
        self
    }
    /// When handlers may start: any [`Dispatch`] strategy. Replaces
    /// [`concurrency`](Self::concurrency).
    pub fn dispatch(mut self, strategy: impl Dispatch) -> Self {
        self.dispatch = Arc::new(strategy);
        self
    }
    /// Who acknowledges. Default: [`AckMode::Auto`].
    pub fn ack_mode(mut self, mode: AckMode) -> Self {
        self.ack_mode = mode;
        self
    }
    /// Retries for retryable failures. Default: [`RetryPolicy::default`].
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }
    /// Ordered consumption: a failure is retried in place, holding its
    /// key (with [`Lanes`](super::Lanes)) or the whole queue (with
    /// `concurrency(1)`), never requeued behind later messages nor sent to
    /// a delay queue. Replaces [`retry`](Self::retry); needs
    /// [`AckMode::Auto`] and a dispatch that keeps order per key
    /// ([`Lanes`](super::Lanes), `concurrency(1)`, or one whose
    /// [`keeps_key_order`](super::Dispatch::keeps_key_order) says so):
    /// [`build`](Self::build) refuses others. Default: off.
    pub fn ordered(mut self, retry: OrderedRetry) -> Self {
        self.ordered = Some(retry);
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
    /// again. Counted by quorum queues (`x-delivery-count`, set by the
    /// broker on redeliveries only) or by rabbitry on classic queues.
    /// Default: 10, below the delivery limit rabbitry gives quorum queues.
    pub fn max_redeliveries(mut self, n: u32) -> Self {
        self.max_redeliveries = n;
        self
    }
    /// On shutdown, how long in-flight handlers may run before they are
    /// stopped and their deliveries given back. Default: 30 s.
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }
    /// How often the queue's backlog (ready messages, consumers) is polled
    /// while the consumer runs, for [`Consumer::backlog`] and the queue
    /// gauges of [`metric_names`](crate::metric_names); zero turns it off,
    /// otherwise between 100 ms and one day. Default: 15 s.
    pub fn backlog_poll(mut self, every: Duration) -> Self {
        self.backlog_poll = every;
        self
    }
    /// How long one handler attempt may run before it is stopped (its
    /// future dropped) and counted as a retryable failure; `None` for no
    /// limit. Default: [`DEFAULT_HANDLER_TIMEOUT`] in auto mode, none in the
    /// manual and no-ack modes (a stopped manual handler's delivery would be
    /// given back, with no retry policy to end the loop).
    pub fn handler_timeout(mut self, limit: Option<Duration>) -> Self {
        self.handler_timeout = Some(limit);
        self
    }
    /// Adds a layer around the handler (see [`Next`] for examples). Layers
    /// run in the order added, inside rabbitry's own (poison guard,
    /// redelivery accounting, immediate retries), so a layer runs once per
    /// handler attempt.
    pub fn layer<F, Fut>(mut self, layer: F) -> Self
    where
        F: Fn(Delivery, Next) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Disposition> + Send + 'static,
    {
        self.layers.push(from_fn(layer));
        self
    }

    /// Adds an idempotency layer (from [`Idempotency::layer`](crate::Idempotency::layer))
    /// *first* among the user layers, whenever it is called: inside the
    /// immediate retries (a failed attempt gives its lease back and the
    /// retry claims again) and around every other user layer, so that a
    /// duplicate runs none of them. For [`AckMode::Auto`]: the layer marks a
    /// message done when the handler's result is `Ok`, which in manual mode
    /// says nothing about how the handler settled it.
    pub fn idempotent<F, Fut>(mut self, layer: F) -> Self
    where
        F: Fn(Delivery, Next) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Disposition> + Send + 'static,
    {
        self.layers.insert(0, from_fn(layer));
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
            .and_then(|()| {
                let longest = super::decision::MAX_ASKED_DELAY;
                check_name(
                    "retry queue name",
                    &super::policy::retry_queue_name(&self.queue, longest),
                )
            })
            .map_err(Error::Config)?;
        self.retry.topology(&self.queue).validate()
    }

    /// Validates the settings.
    pub fn build(mut self) -> Result<Consumer> {
        let poll = self.backlog_poll;
        if !poll.is_zero() && !(MIN_BACKLOG_POLL..=MAX_BACKLOG_POLL).contains(&poll) {
            return Err(Error::Config(format!(
                "the backlog poll ({poll:?}) must be zero (off) or between 100 ms and one day"
            )));
        }
        if self.ordered.is_some() {
            if self.ack_mode != AckMode::Auto {
                return Err(Error::Config(
                    "ordered consumption needs the auto ack mode".into(),
                ));
            }
            if !self.dispatch.keeps_key_order() {
                return Err(Error::Config(
                    "ordered consumption needs a dispatch that keeps order per key: `dispatch(Lanes::new(n))` or `concurrency(1)`".into(),
                ));
            }
            // No delay queues: nothing may wait behind later messages.
            self.retry = RetryPolicy::none();
        }
        if self.queue.is_empty() {
            return Err(Error::Config("the consumer needs a queue name".into()));
        }
        let concurrency = self.dispatch.max_concurrency();
        if concurrency == Some(0) || self.prefetch == 0 {
            return Err(Error::Config(
                "consumer concurrency and prefetch must be at least 1".into(),
            ));
        }
        if let Some(n) = concurrency
            && usize::from(self.prefetch) < n
        {
            return Err(Error::Config(format!(
                "prefetch ({}) below concurrency ({n}) would leave handlers idle",
                self.prefetch
            )));
        }
        if self.handler_timeout == Some(Some(Duration::ZERO)) {
            return Err(Error::Config("a handler timeout of zero".into()));
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
        let counters = Arc::new(Counters::labelled(&self.queue, &name));
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
                dispatch: self.dispatch,
                ack_mode: self.ack_mode,
                retry: self.retry,
                ordered: self.ordered,
                max_redeliveries: self.max_redeliveries,
                shutdown_timeout: self.shutdown_timeout,
                backlog_poll: self.backlog_poll,
                backlog: watch::Sender::new(None),
                handler_timeout: self
                    .handler_timeout
                    .unwrap_or((self.ack_mode == AckMode::Auto).then_some(DEFAULT_HANDLER_TIMEOUT)),
                layers: self.layers,
                state: watch::Sender::new(ConsumerState::Starting),
                counters,
            }),
        })
    }
}

const MIN_BACKLOG_POLL: Duration = Duration::from_millis(100);
const MAX_BACKLOG_POLL: Duration = Duration::from_secs(24 * 3600);

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
///             println!("order {order}, attempt {}", d.attempt());
///             Ok(())
///         },
///         shutdown,
///     )
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Consumer {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) broker: Broker,
    pub(crate) publisher: Publisher,
    pub(crate) queue: String,
    pub(crate) topology: Option<Topology>,
    pub(crate) name: String,
    pub(crate) prefetch: u16,
    pub(crate) dispatch: Arc<dyn Dispatch>,
    pub(crate) ack_mode: AckMode,
    pub(crate) retry: RetryPolicy,
    pub(crate) ordered: Option<OrderedRetry>,
    pub(crate) error_exchange: String,
    pub(crate) max_redeliveries: u32,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) handler_timeout: Option<Duration>,
    pub(crate) layers: Vec<Layer>,
    pub(crate) state: watch::Sender<ConsumerState>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) backlog_poll: Duration,
    pub(crate) backlog: watch::Sender<Option<QueueStats>>,
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

impl Consumer {
    /// Starts a builder for consuming `queue` on `broker`'s consuming
    /// connection.
    pub fn builder(broker: Broker, queue: impl Into<String>) -> ConsumerBuilder {
        ConsumerBuilder::new(broker, queue.into())
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
        self.inner.counters.snapshot()
    }

    /// The queue's backlog at the last poll while running (see
    /// [`ConsumerBuilder::backlog_poll`]); `None` before the first.
    pub fn backlog(&self) -> Option<QueueStats> {
        *self.inner.backlog.borrow()
    }
}
