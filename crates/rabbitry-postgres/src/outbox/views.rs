//! What operators see and do: depth, why rows are pending, listings of
//! pending and dead rows, replay and purge of dead ones.

use std::time::Duration;

use sqlx::Row;

use super::bounded::{Bounded, call};
use super::rows::{OutboxRow, OutboxStats, PendingCause, RowFilter};
use super::{NOTIFY_CHANNEL, OutboxStore};
use crate::error::Result;

/// ` WHERE <rows with status $1 matching $2..$4> `, as a literal to
/// `concat!` into statements: they stay static text and the filter values
/// are bound parameters.
macro_rules! where_filter {
    () => {
        " WHERE status = $1
           AND ($2::text IS NULL OR exchange = $2)
           AND ($3::text IS NULL OR routing_key = $3)
           AND ($4::text IS NULL OR strpos(coalesce(last_error, ''), $4) > 0) "
    };
}

/// The columns [`OutboxRow::from_row`] reads.
macro_rules! row_columns {
    () => {
        "SELECT id, message_id, exchange, routing_key, partition_key, attempts, failures,
                last_error, last_error_kind, created_at, next_attempt_at, dead_at,
                octet_length(payload) AS size
         FROM rabbitry_outbox"
    };
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Binds the status and a [`RowFilter`] to `$1..$4` of a [`where_filter!`]
/// statement.
fn bind_filter<'q>(query: PgQuery<'q>, status: &'q str, filter: &'q RowFilter) -> PgQuery<'q> {
    query
        .bind(status)
        .bind(filter.exchange.as_deref())
        .bind(filter.routing_key.as_deref())
        .bind(filter.error_contains.as_deref())
}

impl OutboxStore {
    /// Counts pending and dead rows and the age of the oldest pending one.
    pub async fn stats(&self) -> Result<OutboxStats> {
        // Each part reads a partial index, never the table with its payloads:
        // metrics scrapes and a large backlog must not turn this into a scan.
        // The oldest pending row is the one with the lowest id.
        let row = call(&self.pool, self.limits.call_timeout, "reading outbox stats", async |c| {
            sqlx::query(
                "SELECT (SELECT count(*) FROM rabbitry_outbox WHERE status = 'pending') AS pending,
                        (SELECT count(*) FROM rabbitry_outbox WHERE status = 'dead') AS dead,
                        (SELECT EXTRACT(EPOCH FROM now() - created_at)::float8
                           FROM rabbitry_outbox WHERE status = 'pending' ORDER BY id LIMIT 1) AS oldest",
            )
            .fetch_one(c)
            .await
        })
        .await?;
        Ok(OutboxStats {
            pending: row.try_get::<i64, _>("pending")?,
            dead: row.try_get::<i64, _>("dead")?,
            oldest_pending_age: row
                .try_get::<Option<f64>, _>("oldest")?
                .map(|s| Duration::from_secs_f64(s.max(0.0))),
        })
    }

    /// Why rows are pending: pending rows grouped by the kind of their last
    /// failure, largest group first.
    pub async fn pending_causes(&self) -> Result<Vec<PendingCause>> {
        let rows = call(
            &self.pool,
            self.limits.call_timeout,
            "grouping pending rows",
            async |c| {
                sqlx::query(
                    "SELECT last_error_kind AS kind, count(*) AS n,
                        count(*) FILTER (WHERE next_attempt_at <= now()) AS due,
                        (array_agg(last_error ORDER BY id DESC))[1] AS example,
                        coalesce(max(failures), 0) AS max_failures
                 FROM rabbitry_outbox WHERE status = 'pending'
                 GROUP BY last_error_kind ORDER BY n DESC, kind",
                )
                .fetch_all(c)
                .await
            },
        )
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PendingCause {
                    kind: r.try_get("kind")?,
                    rows: r.try_get("n")?,
                    due: r.try_get("due")?,
                    example: r.try_get("example")?,
                    max_failures: r.try_get("max_failures")?,
                })
            })
            .collect()
    }

    /// Lists pending rows matching `filter`, oldest first.
    pub async fn pending_list(&self, filter: &RowFilter) -> Result<Vec<OutboxRow>> {
        self.list("pending", filter).await
    }

    /// Lists dead rows matching `filter`, oldest first.
    pub async fn dead_list(&self, filter: &RowFilter) -> Result<Vec<OutboxRow>> {
        self.list("dead", filter).await
    }

    async fn list(&self, status: &str, filter: &RowFilter) -> Result<Vec<OutboxRow>> {
        let rows = call(
            &self.pool,
            self.limits.call_timeout,
            "listing outbox rows",
            async |c| {
                bind_filter(
                    sqlx::query(concat!(
                        row_columns!(),
                        where_filter!(),
                        "ORDER BY id LIMIT $5"
                    )),
                    status,
                    filter,
                )
                .bind(filter.limit.unwrap_or(1000))
                .fetch_all(c)
                .await
            },
        )
        .await?;
        rows.iter().map(OutboxRow::from_row).collect()
    }

    /// Counts dead rows matching `filter` (its `limit` is ignored).
    pub async fn dead_count(&self, filter: &RowFilter) -> Result<i64> {
        let row = call(
            &self.pool,
            self.limits.call_timeout,
            "counting dead rows",
            async |c| {
                bind_filter(
                    sqlx::query(concat!(
                        "SELECT count(*) AS n FROM rabbitry_outbox",
                        where_filter!()
                    )),
                    "dead",
                    filter,
                )
                .fetch_one(c)
                .await
            },
        )
        .await?;
        Ok(row.try_get("n")?)
    }

    /// Puts dead rows matching `filter` back to pending, with fresh attempts,
    /// and wakes listening relays. Returns how many. A delayed message is
    /// still not sent before its due time (clamped to
    /// [`rabbitry_core::MAX_DUE_AT_MILLIS`], as `Message::due_at` reads it:
    /// `253402300799999` below).
    pub async fn dead_replay(&self, filter: &RowFilter) -> Result<u64> {
        let mut b =
            Bounded::acquire(&self.pool, self.limits.call_timeout, "replaying dead rows").await?;
        b.begin().await?;
        let done = b
            .step(async |c| {
                bind_filter(
                    sqlx::query(concat!(
                        "UPDATE rabbitry_outbox
                         SET status = 'pending', attempts = 0, failures = 0,
                             next_attempt_at = GREATEST(now(), CASE
                                 WHEN properties #>> '{headers,x-rabbitry-due-at,t}' = 'int'
                                 THEN to_timestamp(LEAST(GREATEST(
                                     (properties #>> '{headers,x-rabbitry-due-at,v}')::float8,
                                     0), 253402300799999) / 1000)
                             END),
                             dead_at = NULL",
                        where_filter!()
                    )),
                    "dead",
                    filter,
                )
                .execute(c)
                .await
            })
            .await?
            .rows_affected();
        b.commit().await?;
        // After the commit, on its own: a NOTIFY inside the transaction
        // would serialize its commit with every other notifier's.
        let _ = b
            .step(async |c| {
                sqlx::query("SELECT pg_notify($1, '')")
                    .bind(NOTIFY_CHANNEL)
                    .execute(c)
                    .await
            })
            .await;
        Ok(done)
    }

    /// Deletes dead rows matching `filter`. Returns how many.
    pub async fn dead_purge(&self, filter: &RowFilter) -> Result<u64> {
        let done = call(
            &self.pool,
            self.limits.call_timeout,
            "purging dead rows",
            async |c| {
                bind_filter(
                    sqlx::query(concat!("DELETE FROM rabbitry_outbox", where_filter!())),
                    "dead",
                    filter,
                )
                .execute(c)
                .await
            },
        )
        .await?;
        Ok(done.rows_affected())
    }
}
