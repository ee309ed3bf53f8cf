//! Closing the broker handle: the last step of a service's shutdown.

use super::{Broker, ConnectionState};

impl Broker {
    /// Closes both connections: the last step of a service's shutdown.
    ///
    /// Every long-running part has one shape: `run(.., shutdown)` until a
    /// [`CancellationToken`](tokio_util::sync::CancellationToken) is cancelled, or `spawn(.., shutdown)`, whose
    /// handle returns `Result<()>` ([`Consumer`](crate::Consumer), the
    /// relay); a [`Publisher`](crate::Publisher) has
    /// [`flush`](crate::Publisher::flush) and
    /// [`close`](crate::Publisher::close). Stop a service in this order,
    /// each step bounded:
    ///
    /// 1. **consumers**: cancel their token, await their handles: handlers
    ///    finish within the shutdown timeout, every delivery is settled
    ///    (what a handler publishes goes out on a publisher still open);
    /// 2. **publishers**: `publisher.close(timeout)`: new publishes fail at
    ///    once with [`Error::Shutdown`](crate::Error::Shutdown), those under way settle (confirmed,
    ///    or deferred to the outbox);
    /// 3. **the relay**: cancel its token, await its handle: its batch in
    ///    hand finishes within its grace period, other rows wait for the
    ///    next start;
    /// 4. **the broker**: `broker.close()`.
    ///
    /// Safe with publishes still in flight all the same: the connections
    /// are closed (each within the operation timeout), so an awaited
    /// confirm, and a publish started afterwards, fail at once as
    /// [`Error::ConnectionLost`](crate::Error::ConnectionLost) (deferred to the outbox where there is
    /// one, as for a broker that is down). A consumer still running keeps
    /// trying to subscribe again until its token is cancelled.
    pub async fn close(&self) {
        self.inner.shutdown.cancel();
        let timeout = self.inner.config.operation_timeout;
        let mut idle = Vec::new();
        for pool in [&self.inner.publish, &self.inner.consume] {
            pool.manager().state.send_replace(ConnectionState::Closed);
            idle.extend(pool.retain(|_, _| false).removed);
            pool.close();
        }
        // Channels keep their connection open after the pool lets go of
        // it: close the connections themselves, so that nothing stays
        // waiting on them.
        futures_util::future::join_all(idle.iter().map(|conn| {
            tokio::time::timeout(timeout, conn.close(200, "broker handle closed".into()))
        }))
        .await;
    }
}
