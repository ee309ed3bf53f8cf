-- No NOTIFY inside the application's transactions.
--
-- A transaction that ran NOTIFY takes a cluster-wide lock at commit, so the
-- statement trigger made every business transaction that enqueued a
-- message commit one at a time. Relays now poll (an index probe, a few
-- times a second by default) and still LISTEN for explicit wake-ups sent
-- outside those transactions (`OutboxStore::wake`, dead-row replay).
DROP TRIGGER IF EXISTS rabbitry_outbox_notify ON rabbitry_outbox;
DROP FUNCTION IF EXISTS rabbitry_outbox_notify();
