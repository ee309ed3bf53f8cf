//! The relay's side of the table: claim due rows, settle what happened.
//!
//! Both run inside the batch's transaction: the claim's row locks (`FOR
//! UPDATE SKIP LOCKED`) are what keep other relays off the rows, and they go
//! away with the transaction, whether it commits, rolls back, or its session
//! dies. A worker that died, or whose connection went half-open, therefore
//! never keeps rows claimed for longer than the server takes to end its
//! session (`idle_in_transaction_session_timeout`, TCP keepalive).

use std::time::Duration;

use rabbitry_core::Message;
use sqlx::{PgConnection, Row};

use super::OutboxStore;
use super::decode::decode;
use crate::error::{Error, Result};

/// A row claimed for publishing.
#[derive(Debug)]
pub(crate) struct ClaimedRow {
    pub(crate) id: i64,
    /// Every failed try so far, outages included: drives the backoff.
    pub(crate) failures: i32,
    pub(crate) message: Message,
}

/// How one claimed row ended.
#[derive(Debug)]
pub(crate) enum Settlement {
    Published(i64),
    Failed {
        id: i64,
        /// The error, as text.
        error: String,
        /// Its short name (`connection_lost`, `unroutable`, …).
        kind: &'static str,
        /// Whether it counts toward `max_attempts` (the message's fault,
        /// not the broker's unavailability).
        counts: bool,
        retry_in: Duration,
    },
}

/// The claim: `$1` the batch size, `$2` ordered mode.
///
/// The due index (next_attempt_at, id) WHERE pending serves both the filter
/// and the order, so the scan stops after `$1` rows and never reads
/// backed-off ones. The key check is an index probe on (partition_key, id)
/// WHERE pending or dead; its predicate is repeated word for word so that
/// the planner can use that partial index.
pub(crate) const CLAIM_SQL: &str = "SELECT id, exchange, routing_key, payload, properties, failures
     FROM rabbitry_outbox o
     WHERE status = 'pending' AND next_attempt_at <= now()
       AND (NOT $2 OR partition_key IS NULL OR NOT EXISTS (
             SELECT 1 FROM rabbitry_outbox e
             WHERE e.partition_key = o.partition_key
               AND e.status IN ('pending', 'dead') AND e.partition_key IS NOT NULL
               AND e.id < o.id))
     ORDER BY next_attempt_at, id
     LIMIT $1
     FOR UPDATE SKIP LOCKED";

impl OutboxStore {
    /// Claims up to `limit` due rows in the transaction on `conn`, skipping
    /// rows other relays hold, the earliest due first. With `ordered`, a row
    /// is claimed only if no earlier unsent (pending or dead) row has the
    /// same partition key.
    ///
    /// A row that cannot become a publishable message is parked as dead at
    /// once (in the same transaction) instead of failing the batch. Returns
    /// the claimed rows and how many were parked that way.
    pub(crate) async fn claim(
        &self,
        conn: &mut PgConnection,
        limit: i64,
        ordered: bool,
    ) -> Result<(Vec<ClaimedRow>, u64)> {
        let rows = sqlx::query(CLAIM_SQL)
            .bind(limit)
            .bind(ordered)
            .fetch_all(&mut *conn)
            .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        let mut parked = 0;
        for row in &rows {
            let id: i64 = row.try_get("id")?;
            match decode(row) {
                Ok(message) => claimed.push(ClaimedRow {
                    id,
                    failures: row.try_get("failures")?,
                    message,
                }),
                Err(why) => {
                    let reason = Error::CorruptRow { id, reason: why }.to_string();
                    tracing::error!(outbox_id = id, %reason, "parking an unpublishable outbox row as dead");
                    sqlx::query(
                        "UPDATE rabbitry_outbox
                         SET status = 'dead', dead_at = now(), last_error = $2, last_error_kind = 'corrupt'
                         WHERE id = $1",
                    )
                    .bind(id)
                    .bind(reason)
                    .execute(&mut *conn)
                    .await?;
                    parked += 1;
                }
            }
        }
        Ok((claimed, parked))
    }

    /// Deletes published rows and backs off (or parks) failed ones, in the
    /// claiming transaction. Only failures that count move a row toward
    /// `max_attempts`; every failure lengthens its backoff. Returns how
    /// many rows were parked as dead.
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
        let (mut ids, mut errors, mut kinds, mut delays, mut counts) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for s in settled {
            if let Settlement::Failed {
                id,
                error,
                kind,
                counts: c,
                retry_in,
            } = s
            {
                ids.push(*id);
                errors.push(error.clone());
                kinds.push(*kind);
                delays.push(i64::try_from(retry_in.as_millis()).unwrap_or(i64::MAX));
                counts.push(*c);
            }
        }
        if ids.is_empty() {
            return Ok(0);
        }
        let dead = sqlx::query(
            "UPDATE rabbitry_outbox o
             SET attempts = o.attempts + f.counts::int,
                 failures = o.failures + 1,
                 last_error = f.error,
                 last_error_kind = f.kind,
                 next_attempt_at = now() + f.delay_ms * interval '1 millisecond',
                 status = CASE WHEN f.counts AND o.attempts + 1 >= $6 THEN 'dead' ELSE 'pending' END,
                 dead_at = CASE WHEN f.counts AND o.attempts + 1 >= $6 THEN now() ELSE NULL END
             FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::bool[])
                  AS f(id, error, kind, delay_ms, counts)
             WHERE o.id = f.id
             RETURNING o.status",
        )
        .bind(&ids)
        .bind(&errors)
        .bind(&kinds)
        .bind(&delays)
        .bind(&counts)
        .bind(max_attempts)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .filter(|r| r.try_get::<String, _>("status").is_ok_and(|s| s == "dead"))
        .count();
        Ok(dead as u64)
    }
}
