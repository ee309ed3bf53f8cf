//! The settings of an idempotency layer, checked once by `build()`.

use std::sync::Arc;
use std::time::Duration;

use super::metrics::{Counters, IdempotencyMetrics};
use super::store::IdempotencyStore;
use crate::consumer::Delivery;
use crate::error::{Error, Result};

/// The lease unless set: how long a claimed key stays ours without a
/// renewal. A consumer killed mid-handler blocks duplicates of its message
/// this long; a running handler renews it every third of it.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// How long a `done` marker is kept unless set: 24 hours. Duplicates come
/// from a publisher's or the outbox relay's resends after a lost confirm
/// and from redeliveries after a consumer or broker outage; a day covers
/// an outage lasting a working day. MassTransit keeps 30 minutes,
/// NServiceBus 7 days; each marker costs about 100 bytes of store memory.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// What to do with a delivery that has no key: no message id, and no
/// business key from the extractor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum MissingKey {
    /// Send it to the error queue, saying why. The default: a message that
    /// cannot be deduplicated would silently lose the guarantee.
    #[default]
    DeadLetter,
    /// Run the handler without protection, with a warning and a count.
    Run,
}

type KeyFn = Arc<dyn Fn(&Delivery) -> Option<String> + Send + Sync>;

/// Builder for [`Idempotency`].
#[must_use]
pub struct IdempotencyBuilder {
    store: Arc<dyn IdempotencyStore>,
    settings: Settings,
}

/// What the layer runs with.
pub(crate) struct Settings {
    pub(crate) prefix: String,
    pub(crate) group: Option<String>,
    pub(crate) key: Option<KeyFn>,
    pub(crate) lease: Duration,
    pub(crate) retention: Duration,
    pub(crate) retry_delay: Duration,
    pub(crate) max_wait: Duration,
    pub(crate) store_timeout: Duration,
    pub(crate) missing_key: MissingKey,
}

impl IdempotencyBuilder {
    /// The first part of every key. Default: `rabbitry:idem`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.settings.prefix = prefix.into();
        self
    }
    /// The consumer group the keys belong to: consumers sharing a group
    /// run a message once between them. Default: the delivery's queue
    /// (competing consumers of one queue are one group).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.settings.group = Some(group.into());
        self
    }
    /// A business key instead of the message id (an order id, say), for
    /// messages a publisher may send twice under different ids. `None`:
    /// the delivery has no key (see [`on_missing_key`](Self::on_missing_key)).
    pub fn key(mut self, f: impl Fn(&Delivery) -> Option<String> + Send + Sync + 'static) -> Self {
        self.settings.key = Some(Arc::new(f));
        self
    }
    /// How long a claim holds without renewal. Default: [`DEFAULT_LEASE`].
    pub fn lease(mut self, lease: Duration) -> Self {
        self.settings.lease = lease;
        self
    }
    /// How long a handled message is remembered. Default:
    /// [`DEFAULT_RETENTION`].
    pub fn retention(mut self, retention: Duration) -> Self {
        self.settings.retention = retention;
        self
    }
    /// The first pause before asking again about a key another consumer
    /// holds, or a store that failed; it doubles up to 5 s. Default: 200 ms.
    pub fn retry_delay(mut self, delay: Duration) -> Self {
        self.settings.retry_delay = delay;
        self
    }
    /// How long a delivery waits (holding its place, unacked) for a busy
    /// key or an unavailable store before it is given back to the queue.
    /// Default: 60 s, far below RabbitMQ's 30-minute consumer timeout.
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.settings.max_wait = wait;
        self
    }
    /// The bound of each store call. Default: 2 s.
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.settings.store_timeout = timeout;
        self
    }
    /// What to do with a delivery that has no key. Default:
    /// [`MissingKey::DeadLetter`].
    pub fn on_missing_key(mut self, what: MissingKey) -> Self {
        self.settings.missing_key = what;
        self
    }

    /// Checks the settings.
    pub fn build(self) -> Result<Idempotency> {
        let s = &self.settings;
        if s.prefix.is_empty() || s.prefix.contains(char::is_whitespace) {
            return Err(Error::Config(
                "the idempotency key prefix must be non-empty, without spaces".into(),
            ));
        }
        if s.group.as_deref() == Some("") {
            return Err(Error::Config("an empty idempotency group".into()));
        }
        if s.retention.is_zero() || s.retry_delay.is_zero() || s.max_wait.is_zero() {
            return Err(Error::Config(
                "idempotency retention, retry delay and max wait must be above zero".into(),
            ));
        }
        // A renewal every third of the lease must be able to fail once,
        // within its bound, and still be retried before the lease ends.
        if s.store_timeout.is_zero() || s.lease < s.store_timeout * 3 {
            return Err(Error::Config(format!(
                "the idempotency lease ({:?}) must be at least three store timeouts ({:?})",
                s.lease, s.store_timeout
            )));
        }
        let counters = Counters::labelled(&self.settings.prefix);
        Ok(Idempotency {
            inner: Arc::new(Inner {
                store: self.store,
                settings: self.settings,
                counters,
            }),
        })
    }
}

/// Runs a consumer's handler at most once per message (per key), with an
/// [`IdempotencyStore`]. Cheap to clone; add it to a consumer with
/// [`ConsumerBuilder::idempotent`](crate::ConsumerBuilder::idempotent).
///
/// ```no_run
/// # async fn run(broker: rabbitry_core::Broker) -> Result<(), rabbitry_core::Error> {
/// use rabbitry_core::{Consumer, Idempotency, MemoryStore};
///
/// let idempotency = Idempotency::builder(MemoryStore::new()).build()?;
/// let consumer = Consumer::builder(broker, "orders.created")
///     .idempotent(idempotency.layer())
///     .build()?;
/// // later: idempotency.metrics().duplicates
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Idempotency {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn IdempotencyStore>,
    pub(crate) settings: Settings,
    pub(crate) counters: Counters,
}

impl std::fmt::Debug for Idempotency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.inner.settings;
        f.debug_struct("Idempotency")
            .field("prefix", &s.prefix)
            .field("group", &s.group)
            .field("business_key", &s.key.is_some())
            .field("lease", &s.lease)
            .field("retention", &s.retention)
            .finish_non_exhaustive()
    }
}

impl Idempotency {
    /// Starts a builder over `store`.
    pub fn builder(store: impl IdempotencyStore) -> IdempotencyBuilder {
        IdempotencyBuilder {
            store: Arc::new(store),
            settings: Settings {
                prefix: "rabbitry:idem".into(),
                group: None,
                key: None,
                lease: DEFAULT_LEASE,
                retention: DEFAULT_RETENTION,
                retry_delay: Duration::from_millis(200),
                max_wait: Duration::from_secs(60),
                store_timeout: Duration::from_secs(2),
                missing_key: MissingKey::DeadLetter,
            },
        }
    }

    /// Counters since it was built.
    pub fn metrics(&self) -> IdempotencyMetrics {
        self.inner.counters.snapshot()
    }

    /// The store key of `delivery`: `<prefix>:<group>:<message id or
    /// business key>`; `None` when it has no key.
    pub fn key_of(&self, delivery: &Delivery) -> Option<String> {
        let s = &self.inner.settings;
        let id = match &s.key {
            Some(f) => f(delivery)?,
            None => delivery.id().to_owned(),
        };
        if id.is_empty() {
            return None;
        }
        let group = s.group.as_deref().unwrap_or(delivery.queue());
        Some(format!("{}:{group}:{id}", s.prefix))
    }
}
