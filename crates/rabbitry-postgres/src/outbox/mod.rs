//! The outbox table: enqueue (alone or inside the application's
//! transaction), claim, settle, and the operator views of dead rows.

mod rows;

use std::time::Duration;

use rabbitry_core::{BoxFuture, Message, MessageProperties};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool, Row};

pub use self::rows::{DeadFilter, DeadRow, OutboxStats};
use crate::error::{Error, Result};

/// The NOTIFY channel relays listen on.
pub const NOTIFY_CHANNEL: &str = "rabbitry_outbox";

/// `$head WHERE <dead rows matching $1..$3> $tail`, as one literal: the
/// statement stays static text and the filter values are bound parameters.
macro_rules! dead_rows {
    ($head:literal, $tail:literal) => {
        concat!(
            $head,
            " WHERE status = 'dead'
               AND ($1::text IS NULL OR exchange = $1)
               AND ($2::text IS NULL OR routing_key = $2)
               AND ($3::text IS NULL OR strpos(coalesce(last_error, ''), $3) > 0) ",
            $tail
        )
    };
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Binds a [`DeadFilter`] to `$1..$3` of a [`dead_rows!`] statement.
fn bind_filter<'q>(query: PgQuery<'q>, filter: &'q DeadFilter) -> PgQuery<'q> {
    query
        .bind(filter.exchange.as_deref())
        .bind(filter.routing_key.as_deref())
        .bind(filter.error_contains.as_deref())
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

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
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct OutboxStore {
    pool: PgPool,
}

/// A row claimed for publishing.
#[derive(Debug)]
pub(crate) struct ClaimedRow {
    pub(crate) id: i64,
    pub(crate) attempts: i32,
    pub(crate) message: Message,
}

/// How one claimed row ended.
#[derive(Debug)]
pub(crate) enum Settlement {
    Published(i64),
    Failed {
        id: i64,
        error: String,
        retry_in: Duration,
    },
}

impl OutboxStore {
    /// Connects with a small pool (10 connections, 5 s acquire timeout).
    /// The URL's password never appears in errors.
    pub async fn connect(url: &str) -> Result<Self> {
        let (options, pool) = pool_settings(url)?;
        Ok(Self {
            pool: pool.connect_with(options).await?,
        })
    }

    /// Like [`connect`](Self::connect), but connects on first use, so that a
    /// worker can start while Postgres is down.
    pub fn connect_lazy(url: &str) -> Result<Self> {
        let (options, pool) = pool_settings(url)?;
        Ok(Self {
            pool: pool.connect_lazy_with(options),
        })
    }

    /// Wraps an existing pool (the application's own).
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The pool, to begin transactions that enqueue with business writes.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the migrations in `migrations/` (idempotent).
    pub async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// Fails with [`Error::NotMigrated`] if the outbox table is missing.
    pub async fn check_migrated(&self) -> Result<()> {
        sqlx::query("SELECT 1 FROM rabbitry_outbox LIMIT 0")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Stores a message for the relay to publish, outside any transaction.
    pub async fn enqueue(&self, message: &Message) -> Result<i64> {
        let mut conn = self.pool.acquire().await?;
        insert(&mut conn, message, None).await
    }

    /// Stores a message inside the caller's transaction: it is published
    /// after the transaction commits, and never if it rolls back. Pass
    /// `&mut tx` for a `sqlx::Transaction<'_, Postgres>`.
    pub async fn enqueue_in(&self, conn: &mut PgConnection, message: &Message) -> Result<i64> {
        insert(conn, message, None).await
    }

    /// Counts pending and dead rows and the age of the oldest pending one.
    pub async fn stats(&self) -> Result<OutboxStats> {
        // Each part reads a partial index, never the table with its payloads:
        // metrics scrapes and a large backlog must not turn this into a scan.
        // The oldest pending row is the one with the lowest id.
        let row = sqlx::query(
            "SELECT (SELECT count(*) FROM rabbitry_outbox WHERE status = 'pending') AS pending,
                    (SELECT count(*) FROM rabbitry_outbox WHERE status = 'dead') AS dead,
                    (SELECT EXTRACT(EPOCH FROM now() - created_at)::float8
                       FROM rabbitry_outbox WHERE status = 'pending' ORDER BY id LIMIT 1) AS oldest",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(OutboxStats {
            pending: row.try_get::<i64, _>("pending")?,
            dead: row.try_get::<i64, _>("dead")?,
            oldest_pending_age: row
                .try_get::<Option<f64>, _>("oldest")?
                .map(|s| Duration::from_secs_f64(s.max(0.0))),
        })
    }

    /// Lists dead rows matching `filter`, oldest first.
    pub async fn dead_list(&self, filter: &DeadFilter) -> Result<Vec<DeadRow>> {
        let rows = bind_filter(
            sqlx::query(dead_rows!(
                "SELECT id, message_id, exchange, routing_key, partition_key, attempts, last_error,
                        created_at, dead_at, octet_length(payload) AS size
                 FROM rabbitry_outbox",
                "ORDER BY id LIMIT $4"
            )),
            filter,
        )
        .bind(filter.limit.unwrap_or(1000))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(DeadRow::from_row).collect()
    }

    /// Counts dead rows matching `filter` (its `limit` is ignored).
    pub async fn dead_count(&self, filter: &DeadFilter) -> Result<i64> {
        let row = bind_filter(
            sqlx::query(dead_rows!("SELECT count(*) AS n FROM rabbitry_outbox", "")),
            filter,
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("n")?)
    }

    /// Puts dead rows matching `filter` back to pending, with fresh attempts.
    /// Returns how many.
    pub async fn dead_replay(&self, filter: &DeadFilter) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let done = bind_filter(
            sqlx::query(dead_rows!(
                "UPDATE rabbitry_outbox
                 SET status = 'pending', attempts = 0, next_attempt_at = now(), dead_at = NULL",
                ""
            )),
            filter,
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(NOTIFY_CHANNEL)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done)
    }

    /// Deletes dead rows matching `filter`. Returns how many.
    pub async fn dead_purge(&self, filter: &DeadFilter) -> Result<u64> {
        Ok(bind_filter(
            sqlx::query(dead_rows!("DELETE FROM rabbitry_outbox", "")),
            filter,
        )
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Claims up to `limit` due rows in the transaction `conn`, skipping rows
    /// other relays hold. With `ordered`, a row is claimed only if no earlier
    /// pending row has the same partition key.
    ///
    /// A row whose stored properties cannot be decoded is parked as dead at
    /// once (in the same transaction) instead of failing the batch: one
    /// corrupt row must not stop the relay. Returns the claimed rows and how
    /// many were parked that way.
    pub(crate) async fn claim(
        &self,
        conn: &mut PgConnection,
        limit: i64,
        ordered: bool,
    ) -> Result<(Vec<ClaimedRow>, u64)> {
        // Ordered: a dead row still holds its key, until an operator replays
        // or purges it; otherwise later rows would overtake it.
        let rows = sqlx::query(
            "SELECT id, exchange, routing_key, payload, properties, attempts
             FROM rabbitry_outbox o
             WHERE status = 'pending' AND next_attempt_at <= now()
               AND (NOT $2 OR partition_key IS NULL OR NOT EXISTS (
                     SELECT 1 FROM rabbitry_outbox e
                     WHERE e.partition_key = o.partition_key
                       AND e.status IN ('pending', 'dead') AND e.id < o.id))
             ORDER BY id
             LIMIT $1
             FOR UPDATE SKIP LOCKED",
        )
        .bind(limit)
        .bind(ordered)
        .fetch_all(&mut *conn)
        .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        let mut parked = 0;
        for row in &rows {
            let id: i64 = row.try_get("id")?;
            let properties: Json<MessageProperties> = match row.try_get("properties") {
                Ok(p) => p,
                Err(e) => {
                    let reason = Error::CorruptRow {
                        id,
                        reason: e.to_string(),
                    }
                    .to_string();
                    tracing::error!(outbox_id = id, %reason, "parking a corrupt outbox row as dead");
                    sqlx::query(
                        "UPDATE rabbitry_outbox SET status = 'dead', dead_at = now(), last_error = $2 WHERE id = $1",
                    )
                    .bind(id)
                    .bind(reason)
                    .execute(&mut *conn)
                    .await?;
                    parked += 1;
                    continue;
                }
            };
            claimed.push(ClaimedRow {
                id,
                attempts: row.try_get("attempts")?,
                message: Message::from_parts(
                    row.try_get::<String, _>("exchange")?,
                    row.try_get::<String, _>("routing_key")?,
                    row.try_get::<Vec<u8>, _>("payload")?,
                    properties.0,
                ),
            });
        }
        Ok((claimed, parked))
    }

    /// Deletes published rows and backs off (or parks) failed ones, in the
    /// claiming transaction. Returns how many rows were parked as dead.
    pub(crate) async fn settle(
        &self,
        conn: &mut PgConnection,
        settled: &[Settlement],
        max_attempts: i32,
    ) -> Result<u64> {
        let published: Vec<i64> = settled
            .iter()
            .filter_map(|s| match s {
                Settlement::Published(id) => Some(*id),
                Settlement::Failed { .. } => None,
            })
            .collect();
        if !published.is_empty() {
            sqlx::query("DELETE FROM rabbitry_outbox WHERE id = ANY($1)")
                .bind(&published)
                .execute(&mut *conn)
                .await?;
        }
        let (mut ids, mut errors, mut delays) = (Vec::new(), Vec::new(), Vec::new());
        for s in settled {
            if let Settlement::Failed {
                id,
                error,
                retry_in,
            } = s
            {
                ids.push(*id);
                errors.push(error.clone());
                delays.push(i64::try_from(retry_in.as_millis()).unwrap_or(i64::MAX));
            }
        }
        if ids.is_empty() {
            return Ok(0);
        }
        let dead = sqlx::query(
            "UPDATE rabbitry_outbox o
             SET attempts = o.attempts + 1,
                 last_error = f.error,
                 next_attempt_at = now() + f.delay_ms * interval '1 millisecond',
                 status = CASE WHEN o.attempts + 1 >= $4 THEN 'dead' ELSE 'pending' END,
                 dead_at = CASE WHEN o.attempts + 1 >= $4 THEN now() ELSE NULL END
             FROM UNNEST($1::bigint[], $2::text[], $3::bigint[]) AS f(id, error, delay_ms)
             WHERE o.id = f.id
             RETURNING o.status",
        )
        .bind(&ids)
        .bind(&errors)
        .bind(&delays)
        .bind(max_attempts)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .filter(|r| r.try_get::<String, _>("status").is_ok_and(|s| s == "dead"))
        .count();
        Ok(dead as u64)
    }
}

/// Parses the URL (the error never repeats it: it may hold a password) and
/// sizes the pool: 10 connections, 5 s acquire timeout.
fn pool_settings(url: &str) -> Result<(PgConnectOptions, PgPoolOptions)> {
    let options: PgConnectOptions = url
        .parse()
        .map_err(|_| Error::Config("DATABASE_URL is not a valid postgres:// URL".into()))?;
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .acquire_timeout(Duration::from_secs(5));
    Ok((options, pool))
}

async fn insert(
    conn: &mut PgConnection,
    message: &Message,
    last_error: Option<&str>,
) -> Result<i64> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO rabbitry_outbox (message_id, exchange, routing_key, payload, properties, partition_key, last_error)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         RETURNING id",
    )
    .bind(message.id())
    .bind(message.exchange_name())
    .bind(message.routing_key())
    .bind(message.payload())
    .bind(Json(message.properties()))
    .bind(message.key())
    .bind(last_error)
    .fetch_one(conn)
    .await?;
    Ok(id)
}

impl rabbitry_core::Outbox for OutboxStore {
    fn defer<'a>(
        &'a self,
        message: &'a Message,
        cause: &'a rabbitry_core::Error,
    ) -> BoxFuture<'a, Result<i64, Box<dyn std::error::Error + Send + Sync>>> {
        Box::pin(async move {
            let mut conn = self.pool.acquire().await.map_err(Error::from)?;
            Ok(insert(&mut conn, message, Some(&cause.to_string())).await?)
        })
    }
}
