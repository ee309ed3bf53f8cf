-- Outages do not use up attempts.
--
-- `attempts` now counts only failures caused by the message itself (nacked,
-- unroutable, too large, refused by its exchange); it is what `max_attempts`
-- is compared with. `failures` counts every failed try, outages included,
-- and drives the backoff. `last_error_kind` is a short, stable name for the
-- last failure (`connection_lost`, `unroutable`, ...), so operators can group
-- pending rows by cause.
ALTER TABLE rabbitry_outbox
    ADD COLUMN IF NOT EXISTS failures        INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS last_error_kind TEXT;

UPDATE rabbitry_outbox SET failures = attempts WHERE failures < attempts;
