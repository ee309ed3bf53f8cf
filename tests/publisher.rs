//! The reliable publisher: confirms, unroutable and nacked messages,
//! deferral to the outbox and delivery by the resend loop.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use rabbitry::postgres::{Backoff, Relay, RelayConfig};
use rabbitry::{Error, Message, Overflow, PublishOutcome, Publisher, Queue, Topology};
use rabbitry_testkit::{BrokerCleanup, FaultProxy, services, unique};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_confirmed_publish_arrives_once_with_its_properties() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "pub-once").await;
    let publisher = Publisher::builder(broker.clone())
        .build()
        .expect("publisher");

    let msg = Message::json("", &queue, &serde_json::json!({"order": 7}))
        .expect("json")
        .correlation_id("corr-1")
        .partition_key("customer-42");
    let id = msg.id().to_owned();
    let outcome = publisher.publish(msg).await.expect("publish");
    assert!(outcome.is_confirmed(), "{outcome:?}");

    let got = common::collect(&queue, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1, "exactly one copy");
    let props = &got[0].properties;
    assert_eq!(
        props.message_id().as_ref().map(|s| s.as_str()),
        Some(id.as_str())
    );
    assert_eq!(*props.delivery_mode(), Some(2), "persistent");
    assert_eq!(
        props.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(
        props.correlation_id().as_ref().map(|s| s.as_str()),
        Some("corr-1")
    );
    assert!(props.timestamp().is_some() && props.app_id().is_some());
    let headers = props.headers().as_ref().expect("headers");
    assert!(headers.inner().contains_key("traceparent"));
    assert!(headers.inner().contains_key("x-partition-key"));
    assert_eq!(got[0].data, br#"{"order":7}"#);
    assert_eq!(publisher.metrics().confirmed, 1);
}

#[tokio::test]
async fn an_unroutable_mandatory_publish_is_a_failure_not_a_success() {
    let broker = common::broker().await;
    let publisher = Publisher::builder(broker).build().expect("publisher");
    let err = publisher
        .publish(Message::bytes("amq.direct", unique("nobody-bound"), "x"))
        .await
        .expect_err("no queue is bound");
    assert!(matches!(err, Error::Unroutable { .. }), "{err:?}");
    assert!(err.to_string().contains("unroutable"));
    let m = publisher.metrics();
    assert_eq!((m.confirmed, m.unroutable), (0, 1));
}

#[tokio::test]
async fn a_nack_from_a_full_queue_is_reported() {
    let broker = common::broker().await;
    let queue = unique("pub-full");
    let mut cleanup = BrokerCleanup::new();
    cleanup.queue(&queue);
    broker
        .declare(
            &Topology::new().queue(
                Queue::classic(&queue)
                    .max_length(1)
                    .overflow(Overflow::RejectPublish),
            ),
        )
        .await
        .expect("declare");
    let publisher = Publisher::builder(broker).build().expect("publisher");
    let first = publisher
        .publish(Message::bytes("", &queue, "first"))
        .await
        .expect("first fits");
    assert!(first.is_confirmed());
    let err = publisher
        .publish(Message::bytes("", &queue, "second"))
        .await
        .expect_err("queue is full");
    assert!(matches!(err, Error::Nacked { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert_eq!(publisher.metrics().nacked, 1);
}

/// Pins a RabbitMQ 3.10 behaviour: a quorum queue applies `reject-publish`
/// once it is *over* the limit, so with `x-max-length=1` the second message
/// is still accepted and the third is nacked. Classic queues reject the
/// second at once.
#[tokio::test]
async fn a_full_quorum_queue_nacks_one_message_late() {
    let broker = common::broker().await;
    let queue = unique("pub-full-qq");
    let mut cleanup = BrokerCleanup::new();
    cleanup.queue(&queue);
    broker
        .declare(
            &Topology::new().queue(
                Queue::new(&queue)
                    .max_length(1)
                    .overflow(Overflow::RejectPublish),
            ),
        )
        .await
        .expect("declare");
    let publisher = Publisher::builder(broker).build().expect("publisher");
    let mut outcomes = Vec::new();
    for i in 0..4 {
        outcomes.push(
            publisher
                .publish(Message::bytes("", &queue, format!("{i}")))
                .await
                .is_ok(),
        );
    }
    let first_nack = outcomes
        .iter()
        .position(|ok| !ok)
        .expect("a nack eventually");
    assert_eq!(first_nack, 2, "{outcomes:?}");
    assert!(publisher.metrics().nacked >= 1);
}

#[tokio::test]
async fn a_message_over_the_size_limit_is_refused_and_not_deferred() {
    let broker = common::broker().await;
    let (_db, store) = common::outbox().await;
    let publisher = Publisher::builder(broker)
        .max_message_size(16)
        .outbox(store.clone())
        .build()
        .expect("publisher");
    let err = publisher
        .publish(Message::bytes("", "anywhere", vec![0u8; 17]))
        .await
        .expect_err("too large");
    assert!(
        matches!(
            err,
            Error::TooLarge {
                size: 17,
                max: 16,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        store.stats().await.expect("stats").pending,
        0,
        "no resend can fix it"
    );
}

#[tokio::test]
async fn a_missing_exchange_fails_that_message_only() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "pub-404").await;
    let publisher = Publisher::builder(broker.clone())
        .channels(1)
        .build()
        .expect("publisher");
    let good: Vec<_> = (0..20)
        .map(|i| Message::bytes("", &queue, format!("{i}")))
        .collect();
    let mut batch = good.clone();
    batch.insert(10, Message::bytes(unique("no-such-exchange"), "rk", "bad"));
    let results = publisher.send_all(&batch).await;
    let failed: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
    assert_eq!(failed.len(), 1, "{results:?}");
    assert!(
        matches!(results[10], Err(Error::Broker { code: 404, .. })),
        "{:?}",
        results[10]
    );
    assert_eq!(
        common::collect(&queue, 20, Duration::from_secs(5))
            .await
            .len(),
        20
    );
}

#[tokio::test]
async fn publishes_during_an_outage_are_deferred_then_delivered_by_the_resend_loop() {
    let proxy = FaultProxy::start(services().amqp_addr()).await;
    let broker = common::broker_via(&proxy).await;
    let direct = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&direct, "pub-outage").await;
    let (_db, store) = common::outbox().await;
    let publisher = Publisher::builder(broker.clone())
        .timeout(Duration::from_secs(2))
        .outbox(store.clone())
        .build()
        .expect("publisher");

    proxy.set_down(true);
    const N: usize = 25;
    let mut sent = HashSet::new();
    for i in 0..N {
        let msg = Message::bytes("", &queue, format!("m{i}"));
        sent.insert(msg.id().to_owned());
        match publisher.publish(msg).await.expect("deferred, not lost") {
            PublishOutcome::Deferred { cause, .. } => assert!(cause.is_retryable(), "{cause:?}"),
            other => panic!("broker is down, yet {other:?}"),
        }
    }
    assert_eq!(store.stats().await.expect("stats").pending, N as i64);
    assert_eq!(publisher.metrics().deferred, N as u64);

    proxy.set_down(false);
    let relay = Relay::new(
        store.clone(),
        Publisher::builder(broker.clone())
            .timeout(Duration::from_secs(2))
            .build()
            .expect("relay publisher"),
        RelayConfig::default()
            .poll_interval(Duration::from_millis(100))
            .backoff(Backoff::new(
                Duration::from_millis(50),
                Duration::from_millis(500),
            )),
    )
    .expect("relay");
    let shutdown = CancellationToken::new();
    let task = relay.spawn(shutdown.clone());

    let got = common::collect(&queue, N as u32, Duration::from_secs(60)).await;
    shutdown.cancel();
    task.await.expect("join").expect("relay ran");
    let ids: HashSet<String> = rabbitry_testkit::message_ids(&got).into_iter().collect();
    assert_eq!(
        got.len(),
        N,
        "every deferred message delivered exactly once"
    );
    assert_eq!(ids, sent, "the same messages, ids kept");
    assert_eq!(
        store.stats().await.expect("stats").pending,
        0,
        "outbox drained"
    );
}

#[tokio::test]
async fn when_the_outbox_is_down_too_the_error_names_both_failures() {
    let port = common::closed_port();
    let broker = common::unreachable_broker(port);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(1))
        .connect_lazy(&format!("postgres://postgres@127.0.0.1:{port}/postgres"))
        .expect("lazy pool");
    let publisher = Publisher::builder(broker)
        .outbox(rabbitry::postgres::OutboxStore::new(pool))
        .build()
        .expect("publisher");
    let err = publisher
        .publish(Message::bytes("", "q", "x"))
        .await
        .expect_err("nothing is up");
    assert!(matches!(err, Error::OutboxFailed { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("publish failed") && text.contains("outbox write failed"),
        "{text}"
    );
}
