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
    let Outage {
        proxy,
        direct,
        queue,
        store,
        delays,
        arrivals,
        _guards,
    } = Outage::start("delay-outbox").await;

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
    let claimed_early = relay_until_arrived(&store, &direct, (&arrivals, 1), due).await;
    assert_eq!(
        claimed_early, 0,
        "the relay claimed the row before it was due"
    );
    let got = arrivals.wait(1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1, "delivered once, after its due time");
    assert_eq!(got[0].id, id);
    let slack = support::early_allowance(delay);
    assert!(
        got[0].at - sent + slack >= delay,
        "early: {:?}",
        got[0].at - sent
    );
    assert!(got[0].wall + slack >= got[0].due.expect("due header"));
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
    park_and_replay(&store, id).await;
    assert!(
        pending_due(&store, id).await >= due - Duration::from_millis(1),
        "replayed due early"
    );

    // A hostile due header is clamped, at enqueue and at replay, instead of
    // failing the timestamp conversion for every row matched.
    let hostile = Message::bytes("", "anywhere", "never").header(
        rabbitry::DUE_AT_HEADER,
        rabbitry::HeaderValue::Int(i64::MAX),
    );
    let hostile_id = store
        .enqueue(&hostile)
        .await
        .expect("enqueue a hostile due");
    park_and_replay(&store, hostile_id).await;
    assert!(pending_due(&store, hostile_id).await > due);
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

/// Runs relay batches until `n` messages arrived (20 s at most); returns
/// how many rows were claimed before `due`.
async fn relay_until_arrived(
    store: &rabbitry::postgres::OutboxStore,
    direct: &rabbitry::Broker,
    (arrivals, n): (&Arrivals, usize),
    due: SystemTime,
) -> usize {
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
    while arrivals.now().len() < n && Instant::now() < deadline {
        let before = SystemTime::now();
        let report = relay.run_batch().await.expect("batch");
        if report.claimed > 0 && before < due - Duration::from_millis(1) {
            claimed_early += report.claimed;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    claimed_early
}

/// The route was declared while the broker was up; then the broker goes
/// away. The next delayed message to the same destination is deferred with
/// its due time, and the relay does not send it early.
#[tokio::test]
async fn a_delayed_message_is_deferred_when_the_broker_goes_down_after_its_route_was_declared() {
    let Outage {
        proxy,
        direct,
        queue,
        store,
        delays,
        arrivals,
        _guards,
    } = Outage::start("delay-outbox-later").await;
    let first = delays
        .publish_after(Message::bytes("", &queue, "first"), Duration::from_secs(1))
        .await
        .expect("publish");
    assert!(first.is_confirmed(), "{first:?}");
    let got = arrivals.wait(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "the first one arrives through the cascade");

    proxy.set_down(true);
    let delay = Duration::from_secs(4);
    let msg = Message::bytes("", &queue, "second");
    let id = msg.id().to_owned();
    let sent = Instant::now();
    let due = SystemTime::now() + delay;
    let outcome = tokio::time::timeout(Duration::from_secs(15), delays.publish_after(msg, delay))
        .await
        .expect("bounded")
        .expect("deferred, not failed");
    assert!(
        matches!(outcome, PublishOutcome::Deferred { .. }),
        "the broker is down: expected Deferred, got {outcome:?}"
    );
    let rows = store
        .pending_list(&RowFilter::default())
        .await
        .expect("rows");
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].exchange.as_str(), rows[0].routing_key.as_str()),
        ("", queue.as_str())
    );
    assert!(SystemTime::from(rows[0].next_attempt_at) >= due - Duration::from_millis(1));

    let claimed_early = relay_until_arrived(&store, &direct, (&arrivals, 2), due).await;
    assert_eq!(
        claimed_early, 0,
        "the relay claimed the row before it was due"
    );
    let got = arrivals.wait(2, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 2, "delivered once, after its due time");
    assert_eq!(got[1].id, id);
    let slack = support::early_allowance(delay);
    assert!(
        got[1].at - sent + slack >= delay,
        "early: {:?}",
        got[1].at - sent
    );
    proxy.set_down(false);
}

/// A cascade of 3 levels over a broker reached through `proxy`, whose
/// publisher defers to `store`; `direct` reaches the broker without it.
struct Outage {
    proxy: FaultProxy,
    direct: rabbitry::Broker,
    queue: String,
    store: rabbitry::postgres::OutboxStore,
    delays: Delays,
    arrivals: Arrivals,
    _guards: Box<dyn std::any::Any>,
}

impl Outage {
    async fn start(label: &str) -> Self {
        let proxy = FaultProxy::start(services().amqp_addr()).await;
        let broker = common::broker_via(&proxy).await;
        let direct = common::broker().await;
        let (queue, cleanup) = common::work_queue(&direct, label).await;
        let (db, store) = common::outbox().await;
        let prefix = unique(label);
        let cascade = cascade_cleanup(&prefix, 3);
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
        Self {
            proxy,
            direct,
            queue,
            store,
            delays,
            arrivals,
            _guards: Box::new((cleanup, db, cascade)),
        }
    }
}

/// Parks row `id` as dead, then replays the dead rows: exactly that one.
async fn park_and_replay(store: &rabbitry::postgres::OutboxStore, id: i64) {
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
}
