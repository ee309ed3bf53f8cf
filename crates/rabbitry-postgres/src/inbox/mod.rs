//! The Postgres inbox: exactly-once effects for handlers that write to the
//! same database.
//!
//! The handler's first statement inserts `(consumer, message key)` with
//! `ON CONFLICT DO NOTHING`, in the transaction that then holds its writes.
//! A duplicate finds the row (committed by the first run) and is skipped; a
//! duplicate racing a run still in progress waits on the row's lock, then
//! sees it committed (skip) or rolled back (run). There is no lease to
//! expire and no second store that can forget.
//!
//! - `tx`: [`InboxTx`], the transaction;
//! - here: [`Inbox`] (begin, cleanup, migrate).

mod tx;

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::time::timeout;

pub use self::tx::InboxTx;
use crate::error::{Error, Result};

/// The inbox table, created by the crate's migrations.
pub const INBOX_TABLE: &str = "rabbitry_inbox";

/// The inbox over a pool. Cheap to clone.
///
/// ```no_run
/// # async fn run(inbox: rabbitry_postgres::Inbox, d: rabbitry_core::Delivery) -> rabbitry_core::HandlerResult {
/// // In a handler: the order row and the inbox row commit together.
/// let Some(mut tx) = inbox.begin("billing", d.id()).await? else {
///     return Ok(()); // handled before: ack without doing it again
/// };
/// sqlx::query("INSERT INTO invoices (order_id) VALUES ($1)")
///     .bind(42_i64)
///     .execute(tx.conn())
///     .await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Inbox {
    pool: PgPool,
    limit: Duration,
}

impl Inbox {
    /// Connects (10 connections at most) with every call bounded by 10 s.
    /// The URL's password never appears in errors.
    pub async fn connect(url: &str) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await?;
        Ok(Self::with_pool(pool))
    }

    /// Over the application's own pool, so that the inbox row and the
    /// handler's writes can share a transaction. Calls bounded by 10 s.
    pub fn with_pool(pool: PgPool) -> Self {
        Self {
            pool,
            limit: Duration::from_secs(10),
        }
    }

    /// The bound of each call, and of each statement inside an
    /// [`InboxTx`] (its `statement_timeout` and `lock_timeout`). Default: 10 s.
    #[must_use]
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.limit = limit;
        self
    }

    /// Applies rabbitry's migrations (the outbox's and the inbox's).
    pub async fn migrate(&self) -> Result<()> {
        crate::migrate::run(&self.pool, Duration::from_secs(60)).await
    }

    /// Begins the transaction of `consumer`'s run of the message `key`
    /// (its message id, or a business key), with its inbox row inserted.
    /// `None`: the message was handled before; do nothing and ack.
    ///
    /// While another run of the same key is in its transaction, this waits
    /// for it (at most the inbox's bound, then a retryable error).
    pub async fn begin(&self, consumer: &str, key: &str) -> Result<Option<InboxTx>> {
        if key.is_empty() {
            return Err(Error::Config(
                "the inbox needs a message key: the message has no message id".into(),
            ));
        }
        let timed_out = |operation| Error::TimedOut {
            operation,
            after: self.limit,
        };
        let conn = timeout(self.limit, self.pool.acquire())
            .await
            .map_err(|_| timed_out("acquiring an inbox connection"))??;
        // From here the transaction's guard closes the connection on any
        // early return, which rolls it back.
        let mut tx = InboxTx::new(conn, self.limit);
        // One round trip for the three: a simple query of our own text (the
        // bound is an integer of ours, never a caller's string).
        let begin = format!(
            "BEGIN; SET LOCAL statement_timeout = {ms}; SET LOCAL lock_timeout = {ms}",
            ms = self.limit.as_millis().clamp(1, i32::MAX as u128)
        );
        let inserted = timeout(self.limit, async {
            sqlx::raw_sql(sqlx::AssertSqlSafe(begin)).execute(tx.conn()).await?;
            sqlx::query(
                "INSERT INTO rabbitry_inbox (consumer, message_key) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(consumer)
            .bind(key)
            .execute(tx.conn())
            .await
            .map(|r| r.rows_affected())
        })
        .await
        .map_err(|_| timed_out("inserting an inbox row"))?
        .map_err(Error::from)?;
        if inserted == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        Ok(Some(tx))
    }

    /// Whether `consumer` has handled `key` (a committed row).
    pub async fn contains(&self, consumer: &str, key: &str) -> Result<bool> {
        let query = sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM rabbitry_inbox WHERE consumer = $1 AND message_key = $2)",
        )
        .bind(consumer)
        .bind(key)
        .fetch_one(&self.pool);
        timeout(self.limit, query)
            .await
            .map_err(|_| Error::TimedOut {
                operation: "reading the inbox",
                after: self.limit,
            })?
            .map_err(Error::from)
    }

    /// Deletes rows older than `older_than`, `batch` rows per statement
    /// (each short, each bounded), until none is left. Returns how many.
    /// Run it from a periodic task; keep `older_than` longer than any
    /// message can take to come again (redeliveries, delayed retries, the
    /// outbox's resends).
    pub async fn cleanup(&self, older_than: Duration, batch: u32) -> Result<u64> {
        let batch = i64::from(batch.max(1));
        let mut total = 0;
        loop {
            let delete = sqlx::query(
                "DELETE FROM rabbitry_inbox WHERE ctid IN (
                     SELECT ctid FROM rabbitry_inbox
                     WHERE processed_at < now() - make_interval(secs => $1)
                     ORDER BY processed_at LIMIT $2)",
            )
            .bind(older_than.as_secs_f64())
            .bind(batch)
            .execute(&self.pool);
            let deleted = timeout(self.limit, delete)
                .await
                .map_err(|_| Error::TimedOut {
                    operation: "deleting old inbox rows",
                    after: self.limit,
                })??
                .rows_affected();
            total += deleted;
            if deleted < u64::try_from(batch).unwrap_or(u64::MAX) {
                return Ok(total);
            }
        }
    }
}
