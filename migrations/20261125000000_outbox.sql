-- rabbitry's transactional outbox: messages waiting to be published.
--
-- A row is written when a publish fails (the publisher defers it) or when an
-- application enqueues a message inside its own transaction. The relay claims
-- due rows with FOR UPDATE SKIP LOCKED, publishes them with confirms, and
-- deletes the confirmed ones. A row that fails too often is parked as 'dead':
-- kept, visible and replayable.
CREATE TABLE IF NOT EXISTS rabbitry_outbox (
    id              BIGSERIAL PRIMARY KEY,
    message_id      TEXT        NOT NULL,
    exchange        TEXT        NOT NULL,
    routing_key     TEXT        NOT NULL,
    -- the exact payload bytes
    payload         BYTEA       NOT NULL,
    -- every AMQP property and header, typed (see rabbitry's MessageProperties)
    properties      JSONB       NOT NULL,
    partition_key   TEXT,
    status          TEXT        NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'dead')),
    attempts        INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error      TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    dead_at         TIMESTAMPTZ
);

-- The relay's claim walks pending rows in id order and stops after one
-- batch, with no sort (a sort would read every pending row, payload and all).
CREATE INDEX IF NOT EXISTS rabbitry_outbox_pending
    ON rabbitry_outbox (id) WHERE status = 'pending';

-- Per-key ordering: "is there an earlier pending row with this key?"
CREATE INDEX IF NOT EXISTS rabbitry_outbox_partition
    ON rabbitry_outbox (partition_key, id)
    WHERE status = 'pending' AND partition_key IS NOT NULL;

-- Operator views of parked rows.
CREATE INDEX IF NOT EXISTS rabbitry_outbox_dead
    ON rabbitry_outbox (dead_at, id) WHERE status = 'dead';

-- Wake relays when work arrives. A statement trigger fires once per INSERT,
-- at commit, whoever inserts (rabbitry or another program).
CREATE OR REPLACE FUNCTION rabbitry_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('rabbitry_outbox', '');
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS rabbitry_outbox_notify ON rabbitry_outbox;
CREATE TRIGGER rabbitry_outbox_notify
    AFTER INSERT ON rabbitry_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION rabbitry_outbox_notify();
