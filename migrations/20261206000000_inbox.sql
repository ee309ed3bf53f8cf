-- rabbitry's inbox: which messages a consumer group has already handled.
--
-- A handler whose effects are writes to this database inserts its message's
-- row in the same transaction as those writes (INSERT ... ON CONFLICT DO
-- NOTHING): the row and the effects commit together or not at all, so a
-- redelivered message finds its row and is skipped. No payload is kept.
CREATE TABLE IF NOT EXISTS rabbitry_inbox (
    consumer     TEXT        NOT NULL,
    message_key  TEXT        NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_key)
);

-- The cleanup deletes the oldest rows in batches.
CREATE INDEX IF NOT EXISTS rabbitry_inbox_processed_at
    ON rabbitry_inbox (processed_at);
