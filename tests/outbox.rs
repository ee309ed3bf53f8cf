//! The transactional outbox: enqueue with business writes.

mod common;

use std::time::Duration;

use rabbitry::Message;
use rabbitry::Publisher;
use rabbitry::postgres::{Relay, RelayConfig};

async fn relay(broker: &rabbitry::Broker, store: &rabbitry::postgres::OutboxStore) -> Relay {
    Relay::new(
        store.clone(),
        Publisher::builder(broker.clone())
            .build()
            .expect("publisher"),
        RelayConfig::default(),
    )
    .expect("relay")
}

#[tokio::test]
async fn a_rolled_back_enqueue_leaves_nothing_and_publishes_nothing() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "tx-rollback").await;
    let (_db, store) = common::outbox().await;
    sqlx::query("CREATE TABLE orders (id BIGINT PRIMARY KEY)")
        .execute(store.pool())
        .await
        .expect("business table");

    let mut tx = store.pool().begin().await.expect("begin");
    sqlx::query("INSERT INTO orders (id) VALUES (1)")
        .execute(&mut *tx)
        .await
        .expect("business write");
    store
        .enqueue_in(&mut tx, &Message::bytes("", &queue, "order 1"))
        .await
        .expect("enqueue");
    tx.rollback().await.expect("rollback");

    assert_eq!(store.stats().await.expect("stats").pending, 0);
    let report = relay(&broker, &store)
        .await
        .run_batch()
        .await
        .expect("batch");
    assert_eq!(report.claimed, 0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(broker.queue_stats(&queue).await.expect("stats").messages, 0);
}

#[tokio::test]
async fn a_committed_enqueue_is_delivered_and_removed() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "tx-commit").await;
    let (_db, store) = common::outbox().await;
    sqlx::query("CREATE TABLE orders (id BIGINT PRIMARY KEY)")
        .execute(store.pool())
        .await
        .expect("business table");

    let msg = Message::json("", &queue, &serde_json::json!({"id": 2}))
        .expect("json")
        .header("tenant", "acme");
    let mut tx = store.pool().begin().await.expect("begin");
    sqlx::query("INSERT INTO orders (id) VALUES (2)")
        .execute(&mut *tx)
        .await
        .expect("business write");
    store.enqueue_in(&mut tx, &msg).await.expect("enqueue");
    tx.commit().await.expect("commit");

    let report = relay(&broker, &store)
        .await
        .run_batch()
        .await
        .expect("batch");
    assert_eq!((report.claimed, report.published), (1, 1));
    let got = common::collect(&queue, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, msg.payload());
    let props = &got[0].properties;
    assert_eq!(
        props.message_id().as_ref().map(|s| s.as_str()),
        Some(msg.id())
    );
    let tenant = props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("tenant").cloned());
    assert!(tenant.is_some(), "headers survive the outbox");
    assert_eq!(store.stats().await.expect("stats").pending, 0);
}

#[tokio::test]
async fn an_unmigrated_database_says_which_command_fixes_it() {
    let db = rabbitry_testkit::TestDatabase::create().await;
    let store = rabbitry::postgres::OutboxStore::connect(db.url())
        .await
        .expect("connect");
    let err = store.stats().await.expect_err("no table");
    assert!(
        matches!(err, rabbitry::postgres::Error::NotMigrated),
        "{err:?}"
    );
    assert!(err.to_string().contains("rabbitry-relay migrate"));
}

#[tokio::test]
async fn a_corrupt_row_is_parked_as_dead_and_does_not_stop_the_others() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "tx-corrupt").await;
    let (_db, store) = common::outbox().await;
    sqlx::query(
        "INSERT INTO rabbitry_outbox (message_id, exchange, routing_key, payload, properties)
         VALUES ('broken', '', $1, 'x', '{\"not\": \"properties\"}')",
    )
    .bind(&queue)
    .execute(store.pool())
    .await
    .expect("insert a corrupt row");
    let dead = one_batch_parks_the_bad_row_and_delivers_a_good_one(&broker, &store, &queue).await;
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("corrupt"),
        "{dead:?}"
    );
}

#[tokio::test]
async fn in_ordered_mode_a_dead_row_holds_its_key_until_it_is_purged() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "tx-order-dead").await;
    let (_db, store) = common::outbox().await;
    let doomed = Message::bytes(rabbitry_testkit::unique("no-such-exchange"), "rk", "first")
        .partition_key("k");
    let second = Message::bytes("", &queue, "second").partition_key("k");
    store.enqueue(&doomed).await.expect("enqueue");
    store.enqueue(&second).await.expect("enqueue");
    let relay = Relay::new(
        store.clone(),
        Publisher::builder(broker.clone())
            .build()
            .expect("publisher"),
        RelayConfig::default().ordered(true).max_attempts(1),
    )
    .expect("relay");

    let report = relay.run_batch().await.expect("batch");
    assert_eq!(
        (report.claimed, report.dead),
        (1, 1),
        "only the head of the key"
    );
    let report = relay.run_batch().await.expect("batch");
    assert_eq!(report.claimed, 0, "the dead row still holds key k");
    assert_eq!(rabbitry_testkit::queue_depth(&queue).await, Some(0));

    assert_eq!(
        store.dead_purge(&Default::default()).await.expect("purge"),
        1
    );
    let report = relay.run_batch().await.expect("batch");
    assert_eq!(report.published, 1);
    let got = common::collect(&queue, 1, Duration::from_secs(5)).await;
    assert_eq!(
        rabbitry_testkit::message_ids(&got),
        vec![second.id().to_owned()]
    );
}

#[tokio::test]
async fn a_row_that_cannot_be_published_is_parked_and_the_relay_keeps_delivering() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "tx-unpublishable").await;
    let (_db, store) = common::outbox().await;
    // A correlation id above AMQP's 255-byte short-string limit, as another
    // program (or an older version) might have stored it.
    let bad = store
        .enqueue(&Message::bytes("", &queue, "bad"))
        .await
        .expect("enqueue");
    sqlx::query(
        "UPDATE rabbitry_outbox
         SET properties = jsonb_set(properties, '{correlation_id}', to_jsonb(repeat('c', 300)))
         WHERE id = $1",
    )
    .bind(bad)
    .execute(store.pool())
    .await
    .expect("corrupt the row");
    let dead = one_batch_parks_the_bad_row_and_delivers_a_good_one(&broker, &store, &queue).await;
    let why = dead[0].last_error.as_deref().unwrap_or("");
    assert!(
        why.contains("correlation id") && why.contains("255"),
        "{why}"
    );
}

#[tokio::test]
async fn enqueueing_sends_no_notification_inside_the_application_transaction() {
    let (_db, store) = common::outbox().await;
    // A NOTIFY in the enqueuing transaction would serialize every such
    // transaction's commit behind Postgres's global notify lock.
    let triggers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_trigger
         WHERE tgrelid = 'rabbitry_outbox'::regclass AND NOT tgisinternal",
    )
    .fetch_one(store.pool())
    .await
    .expect("triggers");
    assert_eq!(triggers, 0);
}

#[tokio::test]
async fn wake_reaches_a_listening_relay_before_its_next_poll() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "tx-wake").await;
    let (_db, store) = common::outbox().await;
    let poll = Duration::from_secs(120);
    let relay = Relay::new(
        store.clone(),
        Publisher::builder(broker.clone())
            .build()
            .expect("publisher"),
        RelayConfig::default().poll_interval(poll).concurrency(1),
    )
    .expect("relay");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = relay.spawn(shutdown.clone());
    // Wait until the relay's listener is in place and its first poll done.
    assert!(
        common::eventually(Duration::from_secs(20), || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
            )
            .fetch_one(store.pool())
            .await
            .is_ok_and(|n| n == 1)
        })
        .await,
        "the relay listens"
    );

    let msg = Message::bytes("", &queue, "woken");
    let mut tx = store.pool().begin().await.expect("begin");
    store.enqueue_in(&mut tx, &msg).await.expect("enqueue");
    tx.commit().await.expect("commit");
    store.wake().await;

    // Well before the next poll.
    let got = common::collect(&queue, 1, Duration::from_secs(20)).await;
    assert_eq!(
        rabbitry_testkit::message_ids(&got),
        vec![msg.id().to_owned()]
    );
    shutdown.cancel();
    task.await.expect("join").expect("relay stops");
}

#[tokio::test]
async fn a_parked_row_s_error_does_not_repeat_its_stored_values() {
    let broker = common::broker().await;
    let (_db, store) = common::outbox().await;
    sqlx::query(
        "INSERT INTO rabbitry_outbox (message_id, exchange, routing_key, payload, properties)
         VALUES ('m', '', 'q', 'x', '{\"message_id\": \"m\", \"timestamp\": \"s3cret-token\", \"persistent\": true}')",
    )
    .execute(store.pool())
    .await
    .expect("insert a corrupt row");
    let report = relay(&broker, &store)
        .await
        .run_batch()
        .await
        .expect("batch");
    assert_eq!(report.dead, 1);
    let dead = store
        .dead_list(&Default::default())
        .await
        .expect("dead list");
    let why = dead[0].last_error.as_deref().unwrap_or("");
    assert!(why.contains("invalid type"), "{why}");
    assert!(!why.contains("s3cret"), "{why}");
}

/// Enqueues a good message beside the bad row already stored, runs one
/// relay batch, and checks that the good one was delivered and the bad one
/// parked; returns the dead rows.
async fn one_batch_parks_the_bad_row_and_delivers_a_good_one(
    broker: &rabbitry::Broker,
    store: &rabbitry::postgres::OutboxStore,
    queue: &str,
) -> Vec<rabbitry::postgres::OutboxRow> {
    let good = Message::bytes("", queue, "fine");
    store.enqueue(&good).await.expect("enqueue");
    let report = relay(broker, store).await.run_batch().await.expect("batch");
    assert_eq!((report.published, report.dead), (1, 1));
    let got = common::collect(queue, 1, Duration::from_secs(5)).await;
    assert_eq!(
        rabbitry_testkit::message_ids(&got),
        vec![good.id().to_owned()]
    );
    store
        .dead_list(&Default::default())
        .await
        .expect("dead list")
}
