//! The outbox table: enqueue (alone or inside the application's
//! transaction), the publisher's fallback, claim and settle for the relay,
//! and the operator views.

mod bounded;
mod claim;
#[cfg(test)]
mod claim_plan;
mod decode;
mod keys;
mod rows;
mod settings;
mod views;

use std::sync::Arc;
use std::time::Duration;

use rabbitry_core::{BoxFuture, Message};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};

pub(crate) use self::bounded::Bounded;
use self::bounded::call;
pub(crate) use self::claim::Settlement;
pub use self::rows::{DeadFilter, DeadRow, OutboxRow, OutboxStats, PendingCause, RowFilter};
use self::settings::Limits;
pub use self::settings::OutboxStoreBuilder;
use crate::error::{Error, Result};
use crate::failure::classify;

/// The NOTIFY channel relays listen on for [`OutboxStore::wake`].
pub const NOTIFY_CHANNEL: &str = "rabbitry_outbox";

/// The Postgres outbox. Cheap to clone (it wraps a connection pool).
///
/// ```no_run
/// # async fn run(publisher_broker: rabbitry_core::Broker) -> Result<(), Box<dyn std::error::Error>> {
/// use rabbitry_core::{Message, Publisher};
/// use rabbitry_postgres::OutboxStore;
///
/// let store = OutboxStore::connect("postgres://app@db/app").await?;
/// store.migrate().await?;
///
/// // 1. As the publisher's fallback: a failed publish is stored, not lost.
/// let publisher = Publisher::builder(publisher_broker).outbox(store.clone()).build()?;
///
/// // 2. Transactional: the message commits or rolls back with the business write.
/// let mut tx = store.pool().begin().await?;
/// sqlx::query("INSERT INTO orders (id) VALUES ($1)").bind(7_i64).execute(&mut *tx).await?;
/// store.enqueue_in(&mut tx, &Message::json("orders", "order.created", &serde_json::json!({"id": 7}))?).await?;
/// tx.commit().await?;
/// store.wake().await; // optional: relays poll anyway (every 200 ms by default)
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct OutboxStore {
    pool: PgPool,
    limits: Arc<Limits>,
}

impl OutboxStore {
    /// Settings for the pool and the store's bounds.
    pub fn builder() -> OutboxStoreBuilder {
        OutboxStoreBuilder::default()
    }

    /// Connects with the defaults of [`OutboxStoreBuilder`] (10 connections,
    /// every call bounded). The URL's password never appears in errors.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::builder().connect(url).await
    }

    /// Like [`connect`](Self::connect), but connects on first use, so that a
    /// worker can start while Postgres is down.
    pub fn connect_lazy(url: &str) -> Result<Self> {
        Self::builder().connect_lazy(url)
    }

    /// Wraps an existing pool (the application's own), with the default
    /// client-side bounds. The pool's session settings stay the
    /// application's: see [`OutboxStoreBuilder::session_options`].
    pub fn new(pool: PgPool) -> Self {
        Self::builder().with_pool(pool)
    }

    /// The pool, to begin transactions that enqueue with business writes.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The client-side bound of each call (see
    /// [`OutboxStoreBuilder::call_timeout`]).
    pub fn call_timeout(&self) -> Duration {
        self.limits.call_timeout
    }

    /// Applies the outbox's migrations (idempotent), recording them in their
    /// own history table, `rabbitry_outbox_migrations`, beside the
    /// application's `_sqlx_migrations`. Bounded by
    /// [`OutboxStoreBuilder::migrate_timeout`], waiting for a concurrent
    /// migrator included. To run them from the application's migrator
    /// instead, see [`migrations`](crate::migrations).
    pub async fn migrate(&self) -> Result<()> {
        crate::migrate::run(&self.pool, self.limits.migrate_timeout).await
    }

    /// Fails with [`Error::NotMigrated`] if the outbox table is missing or
    /// older than this version of rabbitry (a column it needs is missing).
    pub async fn check_migrated(&self) -> Result<()> {
        let checked = call(
            &self.pool,
            self.limits.call_timeout,
            "checking the outbox table",
            async |c| {
                sqlx::query("SELECT failures, last_error_kind FROM rabbitry_outbox LIMIT 0")
                    .execute(c)
                    .await
            },
        )
        .await;
        match checked {
            Ok(_) => Ok(()),
            // 42703: undefined_column.
            Err(Error::Database(e))
                if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("42703") =>
            {
                Err(Error::NotMigrated)
            }
            Err(e) => Err(e),
        }
    }

    /// Stores a message for the relay to publish, outside any transaction.
    /// A delayed message (one with [`rabbitry_core::DUE_AT_HEADER`]) is not
    /// published before its due time.
    pub async fn enqueue(&self, message: &Message) -> Result<i64> {
        call(
            &self.pool,
            self.limits.call_timeout,
            "enqueueing a message",
            async |c| insert(c, message, None).await,
        )
        .await
    }

    /// Stores a message inside the caller's transaction: it is published
    /// after the transaction commits, and never if it rolls back. Pass
    /// `&mut tx` for a `sqlx::Transaction<'_, Postgres>`.
    ///
    /// It sends no notification (that would serialize the commits of every
    /// transaction that enqueues): relays find the row by polling, or at
    /// once after [`wake`](Self::wake). This call runs on the caller's
    /// connection, so its bound is the session's `statement_timeout` (set on
    /// this store's own pool).
    pub async fn enqueue_in(&self, conn: &mut PgConnection, message: &Message) -> Result<i64> {
        insert(conn, message, None).await
    }

    /// Wakes listening relays now instead of at their next poll. Call it
    /// after committing a transaction that enqueued, when latency below the
    /// relay's poll interval matters. Best effort and bounded: a failure is
    /// logged, since the relay's poll finds the rows anyway.
    pub async fn wake(&self) {
        let woke = call(
            &self.pool,
            self.limits.call_timeout,
            "waking relays",
            async |c| {
                sqlx::query("SELECT pg_notify($1, '')")
                    .bind(NOTIFY_CHANNEL)
                    .execute(c)
                    .await
            },
        )
        .await;
        if let Err(error) = woke {
            tracing::debug!(%error, "outbox wake-up not sent; relays will poll");
        }
    }
}

/// What a new row records about its past.
struct Deferral<'a> {
    error: &'a rabbitry_core::Error,
    delay: Duration,
}

async fn insert(
    conn: &mut PgConnection,
    message: &Message,
    deferral: Option<Deferral<'_>>,
) -> Result<i64> {
    // A message the broker would refuse is refused here, before it is
    // stored: the caller learns it now, not a relay later.
    message.validate()?;
    let (error, kind, counts, delay_ms, failures) = match &deferral {
        Some(d) => {
            let (kind, counts) = classify(d.error);
            let ms = i64::try_from(d.delay.as_millis()).unwrap_or(i64::MAX);
            (
                Some(d.error.to_string()),
                Some(kind),
                i32::from(counts),
                ms,
                1,
            )
        }
        None => (None, None, 0, 0, 0),
    };
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO rabbitry_outbox (message_id, exchange, routing_key, payload, properties, partition_key,
                                      last_error, last_error_kind, attempts, failures, next_attempt_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
                 now() + GREATEST($11, COALESCE($12, 0)) * interval '1 millisecond')
         RETURNING id",
    )
    .bind(message.id())
    .bind(message.exchange_name())
    .bind(message.routing_key())
    .bind(message.payload())
    .bind(Json(message.properties()))
    .bind(message.key())
    .bind(error)
    .bind(kind)
    .bind(counts)
    .bind(failures)
    .bind(delay_ms)
    .bind(remaining_ms(message, std::time::SystemTime::now()))
    .fetch_one(conn)
    .await?;
    Ok(id)
}

/// How long until a delayed message is due, by this application's clock,
/// in whole ms rounded up (0 when it is due already): the row is not
/// claimed before the database's `now()` plus that. Sent as a duration,
/// not as the due time itself, so that a database clock behind the
/// application's cannot make it early. None for other messages.
fn remaining_ms(message: &Message, now: std::time::SystemTime) -> Option<i64> {
    let left = message.due_at()?.duration_since(now).unwrap_or_default();
    let ms = left.as_millis() + u128::from(!left.subsec_nanos().is_multiple_of(1_000_000));
    Some(i64::try_from(ms).unwrap_or(i64::MAX))
}

impl rabbitry_core::Outbox for OutboxStore {
    /// Stores the message within the store's `defer_timeout`; the row
    /// becomes due after `defer_delay` (with jitter), since the broker just
    /// failed, and not before the message's own due time if it is a
    /// delayed message. A failure caused by the message itself counts as its first
    /// attempt; an outage does not.
    fn defer<'a>(
        &'a self,
        message: &'a Message,
        cause: &'a rabbitry_core::Error,
    ) -> BoxFuture<'a, Result<i64, Box<dyn std::error::Error + Send + Sync>>> {
        Box::pin(async move {
            let delay =
                rabbitry_core::Backoff::new(self.limits.defer_delay, self.limits.defer_delay)
                    .delay(0);
            let deferral = Deferral {
                error: cause,
                delay,
            };
            let id = call(
                &self.pool,
                self.limits.defer_timeout,
                "storing a deferred message",
                async |c| insert(c, message, Some(deferral)).await,
            )
            .await
            .map_err(|e: Error| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            Ok(id)
        })
    }

    fn holds_key<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<bool, Box<dyn std::error::Error + Send + Sync>>> {
        Box::pin(async move {
            OutboxStore::holds_key(self, key)
                .await
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use rabbitry_core::{DUE_AT_HEADER, MAX_DUE_AT_MILLIS};

    use super::*;

    #[test]
    fn a_row_waits_the_time_left_by_the_applications_clock_never_less() {
        let now = UNIX_EPOCH + Duration::from_millis(1_000_000);
        let at = |ms: i64| Message::bytes("", "q", "x").header(DUE_AT_HEADER, ms);
        assert_eq!(remaining_ms(&at(1_004_000), now), Some(4_000));
        assert_eq!(remaining_ms(&at(999_000), now), Some(0), "due already");
        assert_eq!(
            remaining_ms(&at(1_000_001), now - Duration::from_nanos(1)),
            Some(2),
            "rounded up"
        );
        assert_eq!(remaining_ms(&Message::bytes("", "q", "x"), now), None);
        // A hostile header is clamped: the interval stays in range.
        let far = remaining_ms(&at(i64::MAX), SystemTime::now()).expect("due");
        assert!(far <= MAX_DUE_AT_MILLIS, "{far}");
    }
}
