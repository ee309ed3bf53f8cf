//! Row types returned to callers and operators.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::PgRow;

use crate::error::Result;

/// Outbox depth, for dashboards and `rabbitry-relay status`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OutboxStats {
    /// Rows waiting to be published.
    pub pending: i64,
    /// Rows parked as dead.
    pub dead: i64,
    /// Age of the oldest pending row.
    pub oldest_pending_age: Option<Duration>,
}

/// Which rows an operator command acts on. Empty means all.
#[derive(Clone, Debug, Default)]
pub struct RowFilter {
    /// Only rows for this exchange.
    pub exchange: Option<String>,
    /// Only rows with this routing key.
    pub routing_key: Option<String>,
    /// Only rows whose last error contains this text.
    pub error_contains: Option<String>,
    /// At most this many rows (listing only). Default: 1000.
    pub limit: Option<i64>,
}

/// The filter of the dead-row commands (the name it had first).
pub type DeadFilter = RowFilter;

/// A row of the outbox, as operators see it (never its payload).
#[derive(Clone, Debug, serde::Serialize)]
#[non_exhaustive]
pub struct OutboxRow {
    /// Row id.
    pub id: i64,
    /// The message id.
    pub message_id: String,
    /// Target exchange.
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// Partition key, if any.
    pub partition_key: Option<String>,
    /// Failed attempts caused by the message itself (these count toward
    /// the relay's `max_attempts`).
    pub attempts: i32,
    /// Every failed try, broker outages included (these drive the backoff).
    pub failures: i32,
    /// The last failure.
    pub last_error: Option<String>,
    /// A short name for the last failure (`connection_lost`, `unroutable`, …).
    pub last_error_kind: Option<String>,
    /// When the row was written.
    pub created_at: DateTime<Utc>,
    /// When the relay tries it next (pending rows).
    pub next_attempt_at: DateTime<Utc>,
    /// When it was parked (dead rows).
    pub dead_at: Option<DateTime<Utc>>,
    /// Payload size in bytes.
    pub size: i32,
}

/// A row parked as dead (the name it had first).
pub type DeadRow = OutboxRow;

impl OutboxRow {
    /// Reads the columns the `row_columns!` macro lists.
    pub(crate) fn from_row(row: &PgRow) -> Result<Self> {
        Ok(Self {
            id: row.try_get("id")?,
            message_id: row.try_get("message_id")?,
            exchange: row.try_get("exchange")?,
            routing_key: row.try_get("routing_key")?,
            partition_key: row.try_get("partition_key")?,
            attempts: row.try_get("attempts")?,
            failures: row.try_get("failures")?,
            last_error: row.try_get("last_error")?,
            last_error_kind: row.try_get("last_error_kind")?,
            created_at: row.try_get("created_at")?,
            next_attempt_at: row.try_get("next_attempt_at")?,
            dead_at: row.try_get("dead_at")?,
            size: row.try_get("size")?,
        })
    }
}

/// Why rows are pending: one group per kind of last failure.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct PendingCause {
    /// The kind of the last failure (`connection_lost`, `unroutable`, …);
    /// `None` for rows not tried yet.
    pub kind: Option<String>,
    /// Rows in the group.
    pub rows: i64,
    /// How many of them are due now (their backoff has expired).
    pub due: i64,
    /// The most recent error text of the group, as an example.
    pub example: Option<String>,
    /// The most failed tries of a row in the group.
    pub max_failures: i32,
}
