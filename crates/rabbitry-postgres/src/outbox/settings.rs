//! How the store bounds its Postgres calls, and the builder that sets it up.
//!
//! sqlx sets no `statement_timeout` and no TCP keepalive: on a half-open
//! connection a query waits until the kernel gives up, minutes later. So
//! every call of the store has a bound of its own on the client side, and
//! the pool's sessions carry server-side bounds too, so that Postgres
//! itself ends a session that stalls or dies while it holds locks.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::OutboxStore;
use crate::error::{Error, Result};

/// The store's own bounds, shared by its clones.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    pub(crate) call_timeout: Duration,
    pub(crate) defer_timeout: Duration,
    pub(crate) defer_delay: Duration,
    pub(crate) migrate_timeout: Duration,
}

/// Builds an [`OutboxStore`]. Every setting documents its default.
///
/// ```no_run
/// # async fn run() -> Result<(), rabbitry_postgres::Error> {
/// use std::time::Duration;
/// use rabbitry_postgres::OutboxStore;
///
/// let store = OutboxStore::builder()
///     .statement_timeout(Duration::from_secs(10))
///     .defer_timeout(Duration::from_secs(2))
///     .connect("postgres://app@db/app")
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct OutboxStoreBuilder {
    max_connections: u32,
    acquire_timeout: Duration,
    statement_timeout: Duration,
    lock_timeout: Duration,
    idle_in_transaction_timeout: Duration,
    keepalive_idle: Duration,
    limits: Limits,
}

impl Default for OutboxStoreBuilder {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(15),
            lock_timeout: Duration::from_secs(5),
            idle_in_transaction_timeout: Duration::from_secs(60),
            keepalive_idle: Duration::from_secs(30),
            limits: Limits {
                call_timeout: Duration::from_secs(20),
                defer_timeout: Duration::from_secs(3),
                defer_delay: Duration::from_secs(1),
                migrate_timeout: Duration::from_secs(120),
            },
        }
    }
}

impl OutboxStoreBuilder {
    /// Connections in the pool. Default: 10.
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
        self
    }
    /// How long a call waits for a free connection. Default: 5 s.
    pub fn acquire_timeout(mut self, d: Duration) -> Self {
        self.acquire_timeout = d;
        self
    }
    /// Postgres's `statement_timeout` on the pool's sessions: the server
    /// cancels a statement that runs longer. Default: 15 s.
    pub fn statement_timeout(mut self, d: Duration) -> Self {
        self.statement_timeout = d;
        self
    }
    /// Postgres's `lock_timeout` on the pool's sessions: a statement waiting
    /// longer for a lock fails. Default: 5 s.
    pub fn lock_timeout(mut self, d: Duration) -> Self {
        self.lock_timeout = d;
        self
    }
    /// Postgres's `idle_in_transaction_session_timeout` on the pool's
    /// sessions: the server ends a session that sits in an open transaction
    /// this long, rolling it back and releasing its locks (the rows a stuck
    /// relay claimed become claimable again). It must exceed the relay
    /// publisher's timeout, since a batch's transaction is idle while its
    /// rows are published. Default: 60 s.
    pub fn idle_in_transaction_timeout(mut self, d: Duration) -> Self {
        self.idle_in_transaction_timeout = d;
        self
    }
    /// TCP keepalive on the server's side of each session (Postgres's
    /// `tcp_keepalives_idle`, with 10 s between probes and 3 probes), so the
    /// server notices a client that vanished. sqlx 0.9 cannot enable
    /// keepalive on the client's side; the client-side bounds below cover
    /// it. Default: 30 s.
    pub fn keepalive_idle(mut self, d: Duration) -> Self {
        self.keepalive_idle = d;
        self
    }
    /// Client-side bound on each call of the store (acquire included):
    /// stats, listings, enqueue, and each step of a relay batch (begin,
    /// claim, settle, commit). On expiry the call fails with
    /// [`Error::TimedOut`] and its connection is closed. Default: 20 s.
    pub fn call_timeout(mut self, d: Duration) -> Self {
        self.limits.call_timeout = d;
        self
    }
    /// Bound on the publisher's fallback write ([`rabbitry_core::Outbox`]),
    /// acquire included. Default: 3 s.
    pub fn defer_timeout(mut self, d: Duration) -> Self {
        self.limits.defer_timeout = d;
        self
    }
    /// A row the publisher defers becomes due after this delay (with
    /// jitter, between half and all of it), not at once: the broker just
    /// failed. Default: 1 s.
    pub fn defer_delay(mut self, d: Duration) -> Self {
        self.limits.defer_delay = d;
        self
    }
    /// Bound on [`OutboxStore::migrate`], waiting for another migrator
    /// included. Default: 120 s.
    pub fn migrate_timeout(mut self, d: Duration) -> Self {
        self.limits.migrate_timeout = d;
        self
    }

    /// Connects now. The URL's password never appears in errors.
    pub async fn connect(self, url: &str) -> Result<OutboxStore> {
        let (options, pool) = self.pool_settings(url)?;
        let pool = pool.connect_with(options).await?;
        Ok(self.with_pool(pool))
    }

    /// Connects on first use, so that a worker can start while Postgres is
    /// down.
    pub fn connect_lazy(self, url: &str) -> Result<OutboxStore> {
        let (options, pool) = self.pool_settings(url)?;
        Ok(self.with_pool(pool.connect_lazy_with(options)))
    }

    /// Uses the application's own pool. Only the store's client-side bounds
    /// apply; the pool's session settings are the application's (see
    /// [`session_options`](Self::session_options)).
    pub fn with_pool(self, pool: PgPool) -> OutboxStore {
        OutboxStore {
            pool,
            limits: Arc::new(self.limits),
        }
    }

    /// The server-side session settings this builder puts on its pool, to
    /// apply to a pool of one's own:
    /// `PgConnectOptions::new().options(builder.session_options())`.
    pub fn session_options(&self) -> Vec<(&'static str, String)> {
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        vec![
            ("statement_timeout", ms(self.statement_timeout)),
            ("lock_timeout", ms(self.lock_timeout)),
            (
                "idle_in_transaction_session_timeout",
                ms(self.idle_in_transaction_timeout),
            ),
            (
                "tcp_keepalives_idle",
                self.keepalive_idle.as_secs().max(1).to_string(),
            ),
            ("tcp_keepalives_interval", "10".into()),
            ("tcp_keepalives_count", "3".into()),
        ]
    }

    /// Parses the URL (the error never repeats it: it may hold a password).
    fn pool_settings(&self, url: &str) -> Result<(PgConnectOptions, PgPoolOptions)> {
        let bounds = [
            self.acquire_timeout,
            self.statement_timeout,
            self.lock_timeout,
            self.idle_in_transaction_timeout,
            self.limits.call_timeout,
            self.limits.defer_timeout,
            self.limits.migrate_timeout,
        ];
        if self.max_connections == 0 || bounds.iter().any(Duration::is_zero) {
            return Err(Error::Config(
                "max_connections and every timeout of the outbox store must be above zero".into(),
            ));
        }
        let options: PgConnectOptions = url
            .parse()
            .map_err(|_| Error::Config("DATABASE_URL is not a valid postgres:// URL".into()))?;
        let options = options.options(self.session_options());
        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.acquire_timeout);
        Ok((options, pool))
    }
}
