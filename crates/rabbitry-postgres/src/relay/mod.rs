//! The confirm-driven resend loop: claim due rows, publish them pipelined
//! with confirms, delete what the broker confirmed, back off the rest.
//!
//! The same loop runs inside a producer service ([`Relay::run`]) and in the
//! `rabbitry-relay` binary.

mod batch;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rabbitry_core::{Backoff, Publisher, WarnThrottle};
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::outbox::{NOTIFY_CHANNEL, OutboxStore};

/// Settings of the resend loop.
#[derive(Clone, Debug)]
#[must_use]
pub struct RelayConfig {
    batch_size: i64,
    poll_interval: Duration,
    max_attempts: i32,
    backoff: Backoff,
    ordered: bool,
    listen: bool,
    shutdown_grace: Duration,
    concurrency: usize,
    publish_bound: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_millis(200),
            max_attempts: 10,
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(300)),
            ordered: false,
            listen: true,
            shutdown_grace: Duration::from_secs(10),
            concurrency: 4,
            publish_bound: Duration::from_secs(45),
        }
    }
}

impl RelayConfig {
    /// Rows claimed per batch. Default: 500.
    pub fn batch_size(mut self, n: i64) -> Self {
        self.batch_size = n;
        self
    }
    /// How often an idle worker looks for due rows. This is how new rows
    /// are found: enqueueing sends no notification, since one inside the
    /// application's transaction would serialize its commit with every
    /// other enqueuer's (see [`OutboxStore::wake`] for lower latency). A
    /// look is an index probe. Default: 200 ms.
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }
    /// Failed attempts after which a row is parked as dead. Only failures
    /// caused by the message itself count (nacked, unroutable, too large,
    /// refused by its exchange); broker outages never park a row, however
    /// long they last. Default: 10.
    pub fn max_attempts(mut self, n: i32) -> Self {
        self.max_attempts = n;
        self
    }
    /// The retry schedule, over every failed try of a row (outages
    /// included). Default: 1 s doubling to 5 min, with jitter.
    pub fn backoff(mut self, b: Backoff) -> Self {
        self.backoff = b;
        self
    }
    /// Keep order per partition key: no row is published while an earlier
    /// pending or dead row with the same key exists. Default: false.
    pub fn ordered(mut self, yes: bool) -> Self {
        self.ordered = yes;
        self
    }
    /// Wake on `LISTEN rabbitry_outbox` ([`OutboxStore::wake`], dead-row
    /// replay) besides polling. Default: true.
    pub fn listen(mut self, yes: bool) -> Self {
        self.listen = yes;
        self
    }
    /// On shutdown, how long the batch in hand may take to finish before it
    /// is abandoned (its rows stay pending; none stays claimed). Default: 10 s.
    pub fn shutdown_grace(mut self, d: Duration) -> Self {
        self.shutdown_grace = d;
        self
    }

    /// Batches in flight at once, each in its own transaction. Default: 4.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// A last-resort bound on publishing one batch (the publisher bounds
    /// each message already, by its timeout and `blocked_timeout`). When it
    /// elapses the batch is abandoned: its transaction rolls back and its
    /// rows stay pending, with no attempt counted. Keep it below the store's
    /// `idle_in_transaction_timeout`, which ends the batch's session
    /// otherwise. Default: 45 s.
    pub fn publish_bound(mut self, d: Duration) -> Self {
        self.publish_bound = d;
        self
    }

    fn validate(&self) -> Result<()> {
        if self.batch_size < 1
            || self.max_attempts < 1
            || self.poll_interval.is_zero()
            || self.concurrency < 1
            || self.publish_bound.is_zero()
        {
            return Err(Error::Config(
                "batch_size, max_attempts and concurrency must be at least 1, poll_interval and publish_bound above zero".into(),
            ));
        }
        Ok(())
    }
}

/// Counters of a relay since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayMetrics {
    /// Rows published and deleted.
    pub published: u64,
    /// Failed attempts (each backs off or parks a row).
    pub failed: u64,
    /// Rows parked as dead.
    pub dead: u64,
    /// Batches that failed as a whole (Postgres unreachable, …).
    pub batch_errors: u64,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    failed: AtomicU64,
    dead: AtomicU64,
    batch_errors: AtomicU64,
}

/// What one batch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchReport {
    /// Rows claimed.
    pub claimed: usize,
    /// Rows published and deleted.
    pub published: usize,
    /// Rows that failed and were backed off or parked.
    pub failed: usize,
    /// Rows parked as dead in this batch.
    pub dead: u64,
}

/// The resend loop. Cheap to clone.
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

struct Inner {
    store: OutboxStore,
    publisher: Publisher,
    config: RelayConfig,
    counters: Counters,
    wake: Notify,
    /// The outage line of a batch: once per 30 s while the broker is away.
    outage_warn: std::sync::Mutex<WarnThrottle>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// A relay publishing `store`'s rows through `publisher` (which should
    /// have no outbox of its own).
    pub fn new(store: OutboxStore, publisher: Publisher, config: RelayConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                publisher,
                config,
                counters: Counters::default(),
                wake: Notify::new(),
                outage_warn: std::sync::Mutex::default(),
            }),
        })
    }

    /// Counters since start.
    pub fn metrics(&self) -> RelayMetrics {
        let c = &self.inner.counters;
        RelayMetrics {
            published: c.published.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            dead: c.dead.load(Ordering::Relaxed),
            batch_errors: c.batch_errors.load(Ordering::Relaxed),
        }
    }

    /// The store this relay drains.
    pub fn store(&self) -> &OutboxStore {
        &self.inner.store
    }

    /// Runs until `shutdown` is cancelled. Never returns on a transient
    /// error: Postgres or broker outages are logged and retried with
    /// backoff. On shutdown the batch in hand finishes within the grace
    /// period or is abandoned (its rows stay pending, none stays claimed).
    ///
    /// Fails only for what waiting cannot fix ([`Error::NotMigrated`]).
    /// The shape of every long-running part, like `Consumer::run`; where
    /// the relay goes in a service's shutdown order: on
    /// `rabbitry_core::Broker::close`.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<()> {
        let cfg = &self.inner.config;
        let listener = cfg
            .listen
            .then(|| tokio::spawn(listen(self.clone(), shutdown.clone())));
        // Several batches in flight overlap one batch's Postgres round trips
        // with another's confirms. SKIP LOCKED keeps their rows disjoint, and
        // the ordered claim stays correct: a key's next row is not eligible
        // while an earlier one is pending, even in another transaction.
        let workers = (0..cfg.concurrency).map(|_| self.worker(&shutdown));
        let results = futures_util::future::join_all(workers).await;
        if let Some(listener) = listener {
            listener.abort();
        }
        results.into_iter().find(Result::is_err).unwrap_or(Ok(()))
    }

    async fn worker(&self, shutdown: &CancellationToken) -> Result<()> {
        let cfg = &self.inner.config;
        let mut error_backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(15));
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let batch = self.run_batch();
            tokio::pin!(batch);
            let outcome = tokio::select! {
                r = &mut batch => r,
                () = shutdown.cancelled() => {
                    match tokio::time::timeout(cfg.shutdown_grace, &mut batch).await {
                        Ok(r) => r,
                        Err(_) => {
                            tracing::warn!("shutdown grace elapsed; abandoning the batch (its rows stay pending)");
                            return Ok(());
                        }
                    }
                }
            };
            let wait = match outcome {
                Ok(report) => {
                    error_backoff.reset();
                    if report.claimed as i64 >= cfg.batch_size {
                        continue;
                    }
                    cfg.poll_interval
                }
                Err(Error::NotMigrated) => return Err(Error::NotMigrated),
                Err(error) => {
                    self.inner
                        .counters
                        .batch_errors
                        .fetch_add(1, Ordering::Relaxed);
                    let delay = error_backoff.next_delay();
                    tracing::warn!(%error, retry_in = ?delay, "outbox batch failed; retrying");
                    delay
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = self.inner.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Runs [`run`](Self::run) on a task of its own (as `Consumer::spawn`
    /// does): cancel `shutdown`, then await the handle (`task.await??` in
    /// a function returning `rabbitry_core::Result`).
    pub fn spawn(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<Result<()>> {
        let relay = self.clone();
        tokio::spawn(async move { relay.run(shutdown).await })
    }
}

/// Forwards `NOTIFY rabbitry_outbox` to the loop. Reconnects on failure;
/// polling covers what is missed meanwhile.
async fn listen(relay: Relay, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    loop {
        let delay = backoff.next_delay();
        let session = async {
            let mut listener = PgListener::connect_with(relay.inner.store.pool()).await?;
            listener.listen(NOTIFY_CHANNEL).await?;
            tracing::debug!("listening for outbox notifications");
            loop {
                listener.recv().await?;
                // Wake every idle worker, and leave a permit for one that
                // is busy right now.
                relay.inner.wake.notify_waiters();
                relay.inner.wake.notify_one();
            }
            #[allow(unreachable_code)]
            Ok::<(), sqlx::Error>(())
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            r = session => if let Err(error) = r {
                tracing::warn!(%error, retry_in = ?delay, "outbox listener lost; polling meanwhile");
            },
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}
