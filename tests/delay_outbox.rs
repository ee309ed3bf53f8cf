//! A delayed message that cannot be published goes to the outbox with its
//! due time, and the relay does not send it before then.

mod common;
#[path = "delay_support/mod.rs"]
mod support;

use std::time::{Duration, Instant, SystemTime};

use rabbitry::postgres::{Relay, RelayConfig, RowFilter};
use rabbitry::{Delays, Message, PublishOutcome, Publisher};
use rabbitry_testkit::{FaultProxy, services, unique};
use support::{Arrivals, cascade_cleanup};

#[tokio::test]
async fn a_delayed_message_deferred_to_the_outbox_is_not_delivered_before_its_due_time() {
    let proxy = FaultProxy::start(services().amqp_addr()).await;
    let broker = common::broker_via(&proxy).await;
    let direct = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&direct, "delay-outbox").await;
    let (_db, store) = common::outbox().await;
    let prefix = unique("delay-outbox");
    let _cascade = cascade_cleanup(&prefix, 3);
    let publisher = Publisher::builder(broker.clone())
        .timeout(Duration::from_secs(2))
        .outbox(store.clone())
        .build()
        .expect("publisher");
    let delays = Delays::builder(publisher)
        .prefix(&prefix)
        .levels(3)
        .build()
        .await
        .expect("delays");
    let arrivals = Arrivals::watch(&direct, &queue).await;

    proxy.set_down(true);
    let delay = Duration::from_secs(4);
    let msg = Message::bytes("", &queue, "order 7 timed out");
    let id = msg.id().to_owned();
    let sent = Instant::now();
    let due = SystemTime::now() + delay;
    match delays
        .publish_after(msg, delay)
        .await
        .expect("deferred, not failed")
    {
        PublishOutcome::Deferred { .. } => {}
        other => panic!("the broker is down: expected Deferred, got {other:?}"),
    }
    let rows = store
        .pending_list(&RowFilter::default())
        .await
        .expect("rows");
    assert_eq!(rows.len(), 1);
    // The row keeps the message for its destination, due no earlier than
    // the message.
    assert_eq!(rows[0].routing_key, queue);
    assert_eq!(rows[0].exchange, "");
    assert!(
        SystemTime::from(rows[0].next_attempt_at) >= due - Duration::from_millis(1),
        "the row is due before the message"
    );

    // A relay that polls all the time sends it, but not before it is due.
    let relay = Relay::new(
        store.clone(),
        Publisher::builder(direct.clone())
            .build()
            .expect("publisher"),
        RelayConfig::default(),
    )
    .expect("relay");
    let mut claimed_early = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while arrivals.now().is_empty() && Instant::now() < deadline {
        let before = SystemTime::now();
        let report = relay.run_batch().await.expect("batch");
        if report.claimed > 0 && before < due - Duration::from_millis(1) {
            claimed_early += report.claimed;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        claimed_early, 0,
        "the relay claimed the row before it was due"
    );
    let got = arrivals.wait(1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1, "delivered once, after its due time");
    assert_eq!(got[0].id, id);
    assert!(got[0].at - sent >= delay, "early: {:?}", got[0].at - sent);
    assert!(got[0].wall >= got[0].due.expect("due header"));
    assert_eq!(store.stats().await.expect("stats").pending, 0);
    proxy.set_down(false);
}

#[tokio::test]
async fn an_enqueued_or_replayed_delayed_row_keeps_its_due_time() {
    let (_db, store) = common::outbox().await;
    let due = SystemTime::now() + Duration::from_secs(3_600);
    let due_ms = due
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch")
        .as_millis();
    let msg = Message::bytes("", "anywhere", "later").header(
        rabbitry::DUE_AT_HEADER,
        rabbitry::HeaderValue::Int(i64::try_from(due_ms).expect("fits")),
    );
    let id = store.enqueue(&msg).await.expect("enqueue");
    assert!(
        pending_due(&store, id).await >= due - Duration::from_millis(1),
        "enqueued due early"
    );

    // Parked as dead, then replayed by an operator: still not due before.
    sqlx::query("UPDATE rabbitry_outbox SET status = 'dead', dead_at = now() WHERE id = $1")
        .bind(id)
        .execute(store.pool())
        .await
        .expect("park");
    let replayed = store
        .dead_replay(&RowFilter::default())
        .await
        .expect("replay");
    assert_eq!(replayed, 1);
    assert!(
        pending_due(&store, id).await >= due - Duration::from_millis(1),
        "replayed due early"
    );
}

/// When the pending row `id` is due.
async fn pending_due(store: &rabbitry::postgres::OutboxStore, id: i64) -> SystemTime {
    let rows = store
        .pending_list(&RowFilter::default())
        .await
        .expect("rows");
    SystemTime::from(
        rows.iter()
            .find(|r| r.id == id)
            .expect("row")
            .next_attempt_at,
    )
}
