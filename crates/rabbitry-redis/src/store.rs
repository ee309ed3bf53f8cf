//! [`RedisStore`]: leases and done markers in Redis.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rabbitry_core::{BoxFuture, Claim, IdempotencyStore, StoreError, StoreResult};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};

use crate::batch::{Answer, Batcher, Kind};
use crate::error::Error;
use crate::scripts::{RELEASE, RENEW};

/// Builder for [`RedisStore`].
#[must_use]
pub struct RedisStoreBuilder {
    url: String,
    response_timeout: Duration,
    connect_timeout: Duration,
}

impl std::fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("response_timeout", &self.response_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStoreBuilder {
    /// How long one command may wait for its answer. Default: 1 s.
    pub fn response_timeout(mut self, d: Duration) -> Self {
        self.response_timeout = d;
        self
    }
    /// How long one connection attempt may take. Default: 1 s.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Builds the store without connecting: it connects on first use, and
    /// again after every lost connection. Until Redis answers, every call
    /// fails (and the idempotency layer holds deliveries back).
    pub fn build(self) -> Result<RedisStore, Error> {
        if self.response_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(Error::InvalidUrl {
                reason: "Redis timeouts must be above zero".into(),
            });
        }
        let client = redis::Client::open(self.url.as_str()).map_err(|e| Error::InvalidUrl {
            reason: format!("{:?} (check the scheme, host, port and database)", e.kind()),
        })?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(self.response_timeout))
            .set_connection_timeout(Some(self.connect_timeout))
            // Few reconnection tries per request: the layer bounds and
            // repeats its own calls.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(|e| {
            Error::InvalidUrl {
                reason: format!("{:?} (check the scheme, host, port and database)", e.kind()),
            }
        })?;
        Ok(RedisStore {
            conn,
            bound: self.response_timeout + self.connect_timeout,
            batcher: Arc::default(),
        })
    }

    /// Builds the store and checks that Redis answers a ping.
    pub async fn connect(self) -> Result<RedisStore, Error> {
        let store = self.build()?;
        store.ping().await?;
        Ok(store)
    }
}

/// Leases and done markers in Redis, over one multiplexed connection.
/// Cheap to clone (clones share the connection).
///
/// A key is `processing:<token>` with the lease as its TTL while a handler
/// runs, then `done` with the retention time as its TTL. It holds no
/// payload.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    /// The longest one call should take: a bound on top of the
    /// connection's own, in case a reconnect stalls.
    bound: Duration,
    /// The batcher of claims and done markers, started on first use
    /// (inside the caller's runtime).
    batcher: Arc<OnceLock<Batcher>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Starts a builder for the Redis at `url` (`redis://[:password@]host:port[/db]`).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            response_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
        }
    }

    /// Asks Redis for a `PONG`, within the store's bound.
    pub async fn ping(&self) -> Result<(), Error> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("PING");
        match tokio::time::timeout(self.bound, cmd.query_async::<String>(&mut conn)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Error::Unreachable(e)),
            Err(_) => Err(Error::TimedOut(self.bound)),
        }
    }

    fn batcher(&self) -> &Batcher {
        self.batcher
            .get_or_init(|| Batcher::spawn(self.conn.clone(), self.bound))
    }

    async fn run(
        &self,
        operation: &'static str,
        script: &Script,
        key: &str,
        token: &str,
        ms: Option<Duration>,
    ) -> StoreResult<i64> {
        let mut conn = self.conn.clone();
        let mut call = script.key(key);
        call.arg(token);
        if let Some(d) = ms {
            call.arg(millis(d));
        }
        match tokio::time::timeout(self.bound, call.invoke_async::<i64>(&mut conn)).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(StoreError::TimedOut {
                operation,
                after: self.bound,
            }),
        }
    }
}

/// A duration in whole milliseconds, at least 1 (`PX 0` is an error).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The error without anything but its kind and Redis's own words, which
/// never hold the URL or a key's value.
fn unavailable(e: RedisError) -> StoreError {
    StoreError::unavailable(e)
}

impl IdempotencyStore for RedisStore {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, StoreResult<Claim>> {
        Box::pin(async move {
            match self
                .batcher()
                .call(Kind::Claim, key, token, millis(lease))
                .await?
            {
                Answer::Claimed => Ok(Claim::Acquired),
                Answer::Done => Ok(Claim::Done),
                _ => Ok(Claim::Busy),
            }
        })
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        retention: Duration,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(async move {
            let answer = self
                .batcher()
                .call(Kind::Complete, key, token, millis(retention));
            Ok(answer.await? == Answer::Ours)
        })
    }

    fn release<'a>(&'a self, key: &'a str, token: &'a str) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(async move { Ok(self.run("a release", &RELEASE, key, token, None).await? == 1) })
    }

    fn renew<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(async move {
            let n = self
                .run("a renewal", &RENEW, key, token, Some(lease))
                .await?;
            Ok(n == 1)
        })
    }
}
