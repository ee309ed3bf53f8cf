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

/// Which dead rows an operator command acts on. Empty means all.
#[derive(Clone, Debug, Default)]
pub struct DeadFilter {
    /// Only rows for this exchange.
    pub exchange: Option<String>,
    /// Only rows with this routing key.
    pub routing_key: Option<String>,
    /// Only rows whose last error contains this text.
    pub error_contains: Option<String>,
    /// At most this many rows (listing only). Default: 1000.
    pub limit: Option<i64>,
}

/// A row parked as dead.
#[derive(Clone, Debug, serde::Serialize)]
#[non_exhaustive]
pub struct DeadRow {
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
    /// Attempts made.
    pub attempts: i32,
    /// The last failure.
    pub last_error: Option<String>,
    /// When the row was written.
    pub created_at: DateTime<Utc>,
    /// When it was parked.
    pub dead_at: Option<DateTime<Utc>>,
    /// Payload size in bytes.
    pub size: i32,
}

impl DeadRow {
    pub(crate) fn from_row(row: &PgRow) -> Result<Self> {
        Ok(Self {
            id: row.try_get("id")?,
            message_id: row.try_get("message_id")?,
            exchange: row.try_get("exchange")?,
            routing_key: row.try_get("routing_key")?,
            partition_key: row.try_get("partition_key")?,
            attempts: row.try_get("attempts")?,
            last_error: row.try_get("last_error")?,
            created_at: row.try_get("created_at")?,
            dead_at: row.try_get("dead_at")?,
            size: row.try_get("size")?,
        })
    }
}
