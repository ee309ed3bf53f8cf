//! Whether a partition key has messages waiting in the outbox, so that a
//! keyed publish can queue behind them instead of overtaking them.

use super::OutboxStore;
use super::bounded::call;
use crate::error::Result;

/// Its predicate repeats the (partition_key, id) partial index's word for
/// word, so that the lookup is one index probe.
const HOLDS_KEY_SQL: &str = "SELECT EXISTS (
       SELECT 1 FROM rabbitry_outbox
       WHERE partition_key = $1
         AND status IN ('pending', 'dead') AND partition_key IS NOT NULL)";

impl OutboxStore {
    /// Whether a message with partition key `key` is pending or dead here:
    /// an ordered relay sends no later message of that key before it, and
    /// [`Publisher::publish_in_order`](rabbitry_core::Publisher::publish_in_order)
    /// defers rather than overtakes it. Bounded by the call timeout.
    pub async fn holds_key(&self, key: &str) -> Result<bool> {
        call(
            &self.pool,
            self.limits.call_timeout,
            "looking up a partition key",
            async |c| {
                sqlx::query_scalar::<_, bool>(HOLDS_KEY_SQL)
                    .bind(key)
                    .fetch_one(c)
                    .await
            },
        )
        .await
    }
}
