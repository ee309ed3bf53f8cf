-- Indexes for the relay's claim.
--
-- The claim looks for pending rows whose backoff has expired. Walking the
-- pending rows by id read every backed-off row (payload pages included)
-- before finding a due one; this index finds due rows directly and hands
-- them out oldest-due first, with no sort.
CREATE INDEX IF NOT EXISTS rabbitry_outbox_due
    ON rabbitry_outbox (next_attempt_at, id) WHERE status = 'pending';

-- Ordered mode: "is there an earlier unsent (pending or dead) row with this
-- key?" The previous index covered pending rows only, so the planner could
-- not use it for this question and scanned the table once per candidate row.
CREATE INDEX IF NOT EXISTS rabbitry_outbox_key_unsent
    ON rabbitry_outbox (partition_key, id)
    WHERE status IN ('pending', 'dead') AND partition_key IS NOT NULL;

DROP INDEX IF EXISTS rabbitry_outbox_partition;
