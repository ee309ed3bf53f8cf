//! The publishing promise under the conditions users have: a message is
//! confirmed, stored in the outbox, or returned as an error, never silently
//! anything else; with many messages in flight over several channels, with
//! hostile input, and with an outbox that stops answering.

mod common;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rabbitry::{
    BoxFuture, Consumer, Error, Message, Outbox, PublishOutcome, Publisher, Queue, Topology,
};
use rabbitry_testkit::unique;

/// Publishes `n` messages pipelined over 4 channels (window 1000, 4000 in
/// flight), those for which `unroutable(i)` holds to a routing key nobody
/// binds, and checks that each result names its own fate.
async fn publish_mixed(n: usize, unroutable: fn(usize) -> bool) {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "promise-returns").await;
    let nowhere = unique("promise-unbound");
    let publisher = Publisher::builder(broker.clone())
        .channels(4)
        .window(1000)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("publisher");

    let messages: Vec<(bool, Message)> = (0..n)
        .map(|i| {
            let routable = !unroutable(i);
            let key = if routable { &queue } else { &nowhere };
            (routable, Message::bytes("", key, format!("m{i}")))
        })
        .collect();
    let returned = messages.iter().filter(|(routable, _)| !routable).count();
    let results: Vec<(bool, String, rabbitry::Result<()>)> =
        futures_util::stream::iter(messages.into_iter().map(|(routable, message)| {
            let publisher = publisher.clone();
            async move {
                let id = message.id().to_owned();
                (routable, id, publisher.send(message).await)
            }
        }))
        .buffer_unordered(4000)
        .collect()
        .await;

    let mut unroutable_confirmed = 0;
    let mut routable_returned = 0;
    let mut other_failures = Vec::new();
    for (routable, id, result) in &results {
        match (routable, result) {
            (true, Ok(())) => {}
            (false, Err(Error::Unroutable { message_id, .. })) => {
                assert_eq!(message_id, id, "the error names its own message");
            }
            (false, Ok(())) => unroutable_confirmed += 1,
            (true, Err(Error::Unroutable { .. })) => routable_returned += 1,
            (_, Err(e)) => other_failures.push(e.to_string()),
        }
    }
    assert_eq!(
        unroutable_confirmed, 0,
        "unroutable messages reported confirmed"
    );
    assert_eq!(
        routable_returned, 0,
        "routable messages reported unroutable"
    );
    assert!(
        other_failures.is_empty(),
        "{:?}",
        &other_failures[..other_failures.len().min(5)]
    );
    let routed = n - returned;
    let arrived = common::eventually(Duration::from_secs(30), || async {
        broker
            .queue_stats(&queue)
            .await
            .is_ok_and(|s| s.messages == routed as u32)
    })
    .await;
    assert!(arrived, "every routable message is in the queue");
    let m = publisher.metrics();
    assert_eq!(
        (m.confirmed, m.unroutable),
        (routed as u64, returned as u64)
    );
}

/// 20,000 messages, every 10th unroutable: lapin attaches a `basic.return`
/// to whichever confirm resolves next, so without matching by message id
/// some unroutable messages came back confirmed and as many routable ones
/// came back unroutable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returns_are_matched_to_their_own_message_under_pipelined_load() {
    publish_mixed(20_000, |i| i % 10 == 0).await;
}

/// Runs of consecutive unroutable messages: several returns wait at once,
/// and a `multiple` ack's confirms are resolved in hash order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_returns_are_matched_to_their_own_messages() {
    publish_mixed(20_000, |i| (i / 7) % 3 == 0).await;
}

/// Every AMQP short string a caller can set: lapin panics on one over 255
/// bytes; rabbitry says which field is wrong and sends nothing.
#[tokio::test]
async fn an_overlong_name_or_id_is_a_clear_error_not_a_panic() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "promise-long").await;
    let (_db, store) = common::outbox().await;
    let publisher = Publisher::builder(broker.clone())
        .outbox(store.clone())
        .build()
        .expect("publisher");
    let long = "c".repeat(300);
    let cases = [
        (
            "correlation id",
            Message::bytes("", &queue, "x").correlation_id(long.as_str()),
        ),
        (
            "header name",
            Message::bytes("", &queue, "x").header(long.as_str(), 1i64),
        ),
        ("routing key", Message::bytes("", long.as_str(), "x")),
        (
            "message id",
            Message::bytes("", &queue, "x").message_id(long.as_str()),
        ),
    ];
    for (field, message) in cases {
        assert!(
            message.validate().is_err(),
            "{field}: validate() says so too"
        );
        let err = publisher
            .publish(message)
            .await
            .expect_err("not publishable");
        assert!(
            matches!(err, Error::InvalidMessage { .. }),
            "{field}: {err:?}"
        );
        assert!(!err.is_retryable(), "{field}: a resend cannot fix it");
        assert!(
            !err.to_string().contains(&long),
            "{field}: the value is not echoed"
        );
    }
    let err = store
        .enqueue(&Message::bytes("", &queue, "x").correlation_id(long.as_str()))
        .await
        .expect_err("the outbox refuses it too");
    assert!(err.to_string().contains("correlation id"), "{err}");
    assert_eq!(
        store.stats().await.expect("stats").pending,
        0,
        "nothing deferred or stored"
    );

    let err = broker
        .declare(&Topology::new().queue(Queue::new(long.as_str())))
        .await
        .expect_err("queue name too long");
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    // 253 bytes is a valid name, but its dead-letter queue `<name>.dlq` is not.
    let err = Topology::new()
        .queue(Queue::new("q".repeat(253)))
        .validate()
        .expect_err("derived name too long");
    assert!(err.to_string().contains("bytes"), "{err}");
    let err = Consumer::builder(broker.clone(), long.as_str())
        .build()
        .expect_err("consumer queue name too long");
    assert!(matches!(err, Error::Config(_)), "{err:?}");

    let outcome = publisher
        .publish(Message::bytes("", &queue, "fine"))
        .await
        .expect("the publisher still works");
    assert!(outcome.is_confirmed());
}

/// A header larger than the negotiated frame size makes the broker close the
/// whole connection (501 FRAME_ERROR): it must fail alone, before sending.
#[tokio::test]
async fn an_oversized_header_fails_alone_while_200_publishes_in_flight_confirm() {
    let verdict = common::one_bad_among_200("promise-big-header", |queue| {
        Message::bytes("", queue, "big").header("blob", "h".repeat(300 * 1024))
    })
    .await;
    assert!(
        matches!(&verdict, Err(Error::TooLarge { what, .. }) if what.contains("headers")),
        "{verdict:?}"
    );
}

/// With an outbox configured, a typo (no queue bound, no such exchange) is
/// returned to the caller, not retried for minutes; deferring it is opt-in.
#[tokio::test]
async fn unroutable_and_missing_exchange_are_errors_unless_deferral_is_asked_for() {
    let broker = common::broker().await;
    let (_db, store) = common::outbox().await;
    let strict = Publisher::builder(broker.clone())
        .outbox(store.clone())
        .build()
        .expect("publisher");
    let err = strict
        .publish(Message::bytes("amq.direct", unique("nobody-bound"), "x"))
        .await
        .expect_err("unroutable");
    assert!(matches!(err, Error::Unroutable { .. }), "{err:?}");
    let err = strict
        .publish(Message::bytes(unique("no-such-exchange"), "rk", "x"))
        .await
        .expect_err("missing exchange");
    assert!(matches!(err, Error::Broker { code: 404, .. }), "{err:?}");
    assert_eq!(store.stats().await.expect("stats").pending, 0);

    let patient = Publisher::builder(broker)
        .outbox(store.clone())
        .defer_unroutable(true)
        .build()
        .expect("publisher");
    let outcome = patient
        .publish(Message::bytes("amq.direct", unique("not-yet-bound"), "x"))
        .await
        .expect("deferred");
    assert!(
        matches!(
            outcome,
            PublishOutcome::Deferred {
                cause: Error::Unroutable { .. },
                ..
            }
        ),
        "{outcome:?}"
    );
    assert_eq!(store.stats().await.expect("stats").pending, 1);
}

/// An outbox that never answers (a database behind a half-open connection).
struct SilentOutbox;

impl Outbox for SilentOutbox {
    fn defer<'a>(
        &'a self,
        _: &'a Message,
        _: &'a Error,
    ) -> BoxFuture<'a, Result<i64, Box<dyn std::error::Error + Send + Sync>>> {
        Box::pin(std::future::pending())
    }
}

/// The broker refuses connections and the outbox hangs: `publish` still
/// returns, within its documented bound, with an error naming both.
#[tokio::test]
async fn a_publish_returns_within_its_bound_when_the_outbox_hangs() {
    let port = common::closed_port();
    let broker = common::unreachable_broker(port);
    let publisher = Publisher::builder(broker)
        .timeout(Duration::from_secs(1))
        .outbox_timeout(Duration::from_secs(1))
        .outbox(SilentOutbox)
        .build()
        .expect("publisher");
    let started = Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        publisher.publish(Message::bytes("", "q", "x")),
    )
    .await
    .expect("publish returned")
    .expect_err("neither sent nor stored");
    let took = started.elapsed();
    assert!(matches!(err, Error::OutboxFailed { .. }), "{err:?}");
    // timeout (1 s) + outbox_timeout (1 s), with slack for a loaded machine.
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert!(err.to_string().contains("outbox"), "{err}");
}
