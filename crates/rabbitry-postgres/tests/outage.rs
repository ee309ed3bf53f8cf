//! Broker outages do not use up attempts: rows deferred or enqueued during
//! an outage longer than `max_attempts` backoffs stay pending, and are all
//! delivered once the broker is back. A deferred row starts with a backoff.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use rabbitry_core::{Message, Outbox, Publisher};
use rabbitry_postgres::{Backoff, OutboxStore, Relay, RelayConfig, RowFilter};
use rabbitry_testkit::{FaultProxy, collect, eventually, message_ids, services};
use tokio_util::sync::CancellationToken;

const MAX_ATTEMPTS: i32 = 2;

#[tokio::test]
async fn an_outage_longer_than_max_attempts_backoffs_parks_nothing_and_loses_nothing() {
    let (_db, store) = support::database().await;
    let direct = support::broker().await;
    let (queue, _cleanup) = support::queue(&direct, "pg-outage").await;
    let proxy = FaultProxy::start(services().amqp_addr()).await;
    proxy.set_down(true);
    let broker = support::proxied_broker(&proxy);

    let mut sent = HashSet::new();
    for i in 0..20 {
        let msg = Message::bytes("", &queue, format!("m{i}"));
        sent.insert(msg.id().to_owned());
        store.enqueue(&msg).await.expect("enqueue");
    }
    let relay = Relay::new(
        store.clone(),
        Publisher::builder(broker)
            .timeout(Duration::from_millis(500))
            .build()
            .expect("publisher"),
        RelayConfig::default()
            .max_attempts(MAX_ATTEMPTS)
            .poll_interval(Duration::from_millis(20))
            .backoff(Backoff::new(
                Duration::from_millis(10),
                Duration::from_millis(50),
            )),
    )
    .expect("relay");
    let shutdown = CancellationToken::new();
    let task = relay.spawn(shutdown.clone());

    // Every row fails well past max_attempts while the broker is away.
    let tried_enough = || async {
        let rows = store
            .pending_list(&RowFilter::default())
            .await
            .unwrap_or_default();
        rows.len() == 20 && rows.iter().all(|r| r.failures > MAX_ATTEMPTS + 2)
    };
    assert!(
        eventually(Duration::from_secs(60), tried_enough).await,
        "rows were retried through the outage"
    );
    let stats = store.stats().await.expect("stats");
    assert_eq!(
        (stats.pending, stats.dead),
        (20, 0),
        "no row parked for an outage"
    );
    let rows = store
        .pending_list(&RowFilter::default())
        .await
        .expect("list");
    assert!(
        rows.iter().all(|r| r.attempts == 0),
        "outages use up no attempts"
    );

    proxy.set_down(false);
    let got = collect(&queue, 20, Duration::from_secs(60)).await;
    let ids: HashSet<String> = message_ids(&got).into_iter().collect();
    assert_eq!(ids, sent, "every row delivered after the outage");
    assert!(
        eventually(Duration::from_secs(10), || async {
            store
                .stats()
                .await
                .is_ok_and(|s| (s.pending, s.dead) == (0, 0))
        })
        .await
    );
    shutdown.cancel();
    task.await.expect("join").expect("relay stops cleanly");
}

#[tokio::test]
async fn a_failure_caused_by_the_message_still_parks_it_after_max_attempts() {
    let (_db, store) = support::database().await;
    let broker = support::broker().await;
    // Unroutable: the default exchange with no such queue.
    store
        .enqueue(&Message::bytes(
            "",
            rabbitry_testkit::unique("no-such-queue"),
            "x",
        ))
        .await
        .expect("enqueue");
    let relay = Relay::new(
        store.clone(),
        Publisher::builder(broker).build().expect("publisher"),
        RelayConfig::default()
            .max_attempts(MAX_ATTEMPTS)
            .backoff(Backoff::new(
                Duration::from_millis(1),
                Duration::from_millis(1),
            )),
    )
    .expect("relay");
    assert!(
        eventually(Duration::from_secs(20), || async {
            let _ = relay.run_batch().await;
            store.stats().await.is_ok_and(|s| s.dead == 1)
        })
        .await,
        "an unroutable row is parked after max_attempts"
    );
    let dead = store.dead_list(&RowFilter::default()).await.expect("list");
    assert_eq!(dead[0].attempts, MAX_ATTEMPTS);
    assert_eq!(dead[0].last_error_kind.as_deref(), Some("unroutable"));
}

#[tokio::test]
async fn a_deferred_row_waits_for_its_first_backoff() {
    let db = rabbitry_testkit::TestDatabase::create().await;
    let store = OutboxStore::builder()
        .defer_delay(Duration::from_secs(600))
        .connect(db.url())
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    let cause = rabbitry_core::Error::ConnectionLost {
        operation: "basic.publish",
        reason: "test".into(),
    };
    store
        .defer(&Message::bytes("", "q", "x"), &cause)
        .await
        .expect("defer");

    let rows = store
        .pending_list(&RowFilter::default())
        .await
        .expect("list");
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert!(row.next_attempt_at > row.created_at, "{row:?}");
    assert_eq!(
        (row.attempts, row.failures),
        (0, 1),
        "an outage is no attempt"
    );
    assert_eq!(row.last_error_kind.as_deref(), Some("connection_lost"));

    let relay = Relay::new(
        store.clone(),
        Publisher::builder(support::broker().await)
            .build()
            .expect("publisher"),
        RelayConfig::default(),
    )
    .expect("relay");
    let report = relay.run_batch().await.expect("batch");
    assert_eq!(report.claimed, 0, "not due yet");
}
