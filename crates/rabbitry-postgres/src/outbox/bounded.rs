//! Postgres calls with a deadline.
//!
//! A call that times out leaves its connection mid-conversation. Handed back
//! to the pool, sqlx would ping it before reuse, and on a half-open
//! connection that ping hangs as long as the query did, holding a pool
//! slot. So a connection whose call timed out is detached from the pool and
//! dropped, which closes its socket at once; the server rolls back whatever
//! it held when it notices (at once if the network works, else by its
//! keepalive or `idle_in_transaction_session_timeout`).

use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::Postgres;
use sqlx::{PgConnection, PgPool};
use tokio::time::{Instant, timeout_at};

use crate::error::{Error, Result};

/// A connection and the deadline of the call it serves.
///
/// A transaction is opened with [`begin`](Self::begin) (a plain `BEGIN`), so
/// that a timed-out step can throw the connection away; if a `Bounded` is
/// dropped inside a transaction (a batch abandoned at shutdown), the
/// connection is thrown away too rather than returned to the pool with the
/// transaction open.
pub(crate) struct Bounded {
    conn: Option<PoolConnection<Postgres>>,
    deadline: Instant,
    after: Duration,
    operation: &'static str,
    in_transaction: bool,
}

impl Bounded {
    /// Acquires a connection within `limit`, which then bounds every step
    /// run through [`step`](Self::step) too.
    pub(crate) async fn acquire(
        pool: &PgPool,
        limit: Duration,
        operation: &'static str,
    ) -> Result<Self> {
        let deadline = Instant::now() + limit;
        let conn = match timeout_at(deadline, pool.acquire()).await {
            Ok(conn) => conn?,
            Err(_) => {
                return Err(Error::TimedOut {
                    operation,
                    after: limit,
                });
            }
        };
        Ok(Self {
            conn: Some(conn),
            deadline,
            after: limit,
            operation,
            in_transaction: false,
        })
    }

    /// Starts a fresh deadline of `limit` from now, for the next steps.
    pub(crate) fn renew(&mut self, limit: Duration, operation: &'static str) {
        self.deadline = Instant::now() + limit;
        self.after = limit;
        self.operation = operation;
    }

    /// Runs `work` on the connection until the deadline. On expiry the
    /// connection is discarded (see the module docs) and the call fails with
    /// [`Error::TimedOut`]; so does every later step.
    pub(crate) async fn step<T, E>(
        &mut self,
        work: impl AsyncFnOnce(&mut PgConnection) -> Result<T, E>,
    ) -> Result<T>
    where
        Error: From<E>,
    {
        let (deadline, after, operation) = (self.deadline, self.after, self.operation);
        let timed_out = Error::TimedOut { operation, after };
        let Some(conn) = self.conn.as_deref_mut() else {
            return Err(timed_out);
        };
        match timeout_at(deadline, work(conn)).await {
            Ok(result) => Ok(result?),
            Err(_) => {
                self.discard();
                Err(timed_out)
            }
        }
    }

    /// `BEGIN`, as a step.
    pub(crate) async fn begin(&mut self) -> Result<()> {
        self.in_transaction = true;
        self.step(async |c| sqlx::query("BEGIN").execute(c).await)
            .await
            .map(drop)
    }

    /// `COMMIT`, as a step.
    pub(crate) async fn commit(&mut self) -> Result<()> {
        self.step(async |c| sqlx::query("COMMIT").execute(c).await)
            .await?;
        self.in_transaction = false;
        Ok(())
    }

    /// Drops the connection without handing it back to the pool.
    pub(crate) fn discard(&mut self) {
        self.in_transaction = false;
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}

impl Drop for Bounded {
    fn drop(&mut self) {
        if self.in_transaction {
            self.discard();
        }
    }
}

/// Runs one statement-sized call on a connection of its own, bounded by
/// `limit` (acquire included).
pub(crate) async fn call<T, E>(
    pool: &PgPool,
    limit: Duration,
    operation: &'static str,
    work: impl AsyncFnOnce(&mut PgConnection) -> Result<T, E>,
) -> Result<T>
where
    Error: From<E>,
{
    Bounded::acquire(pool, limit, operation)
        .await?
        .step(work)
        .await
}
