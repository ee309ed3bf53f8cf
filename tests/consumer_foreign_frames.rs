//! The consumer survives what production sends it: messages other clients
//! can publish but lapin cannot parse (a header name or a message id that is
//! not UTF-8), a body far larger than anything the handler expects, and a
//! message with no properties at all.
//!
//! The messages are built byte by byte with
//! [`RawClient`](rabbitry_testkit::RawClient), because lapin refuses to
//! build them, and the error queue is read back with it too, because lapin
//! refuses to parse them.
//!
//! The rule pinned here: one message nobody can parse costs that message
//! (it ends in `<queue>.dlq`, unchanged), never the messages around it.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rabbitry::{Consumer, ConsumerMetrics, Delivery, HandlerError, Queue, Topology};
use rabbitry_testkit::{
    BrokerCleanup, RawClient, RawMessage, RawProperties, RawValue, eventually, queue_depth,
    raw_header, unique,
};
use tokio_util::sync::CancellationToken;

/// How long the bad message may take to reach the error queue. Generous: a
/// fix may let the broker dead-letter it after a few delivery attempts.
const DEAD_LETTER_BOUND: Duration = Duration::from_secs(60);

const VALID: usize = 20;

/// Publishes `before` valid messages with ids `before-0`…, then `bad` with
/// `bad_body`, then [`VALID`] valid messages with ids `valid-0`…, all
/// straight into `queue`.
async fn publish_around_bad(queue: &str, before: usize, bad: &RawProperties, bad_body: &[u8]) {
    let mut client = RawClient::connect_test_broker().await.expect("raw connect");
    let valid = |id: String| RawProperties {
        message_id: Some(id.into_bytes()),
        delivery_mode: Some(2),
        ..RawProperties::default()
    };
    for i in 0..before {
        client
            .publish("", queue, &valid(format!("before-{i}")), b"{}")
            .await
            .expect("the broker takes a valid message");
    }
    client
        .publish("", queue, bad, bad_body)
        .await
        .expect("the broker takes the bad message");
    for i in 0..VALID {
        client
            .publish("", queue, &valid(format!("valid-{i}")), b"{}")
            .await
            .expect("the broker takes a valid message");
    }
    client.close().await.expect("raw close");
}

/// Every message still in `queue`, read raw (and removed).
async fn read_raw(queue: &str) -> Vec<RawMessage> {
    let mut client = RawClient::connect_test_broker().await.expect("raw connect");
    let mut out = Vec::new();
    while let Some(message) = client.get(queue).await.expect("basic.get") {
        out.push(message);
    }
    client.close().await.expect("raw close");
    out
}

/// What a counting consumer saw: how often each id was handled, and the
/// ids in the order they were handled.
#[derive(Clone, Default)]
struct Seen {
    counts: HashMap<String, usize>,
    order: Vec<String>,
}

/// Runs a consumer whose handler (one at a time, so that the order is the
/// queue's) counts each message id and succeeds, until `done` holds or
/// `limit` passes; returns whether `done` held, what it saw and the metrics.
async fn consume_counting(
    queue: &str,
    limit: Duration,
    done: impl Fn(&HashMap<String, usize>, &ConsumerMetrics) -> bool,
) -> (bool, Seen, ConsumerMetrics) {
    let broker = common::broker().await;
    let consumer = Consumer::builder(broker, queue)
        .concurrency(1)
        .build()
        .expect("consumer");
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let shutdown = CancellationToken::new();
    let task = {
        let (consumer, shutdown, seen) = (consumer.clone(), shutdown.clone(), seen.clone());
        tokio::spawn(async move {
            consumer
                .run(
                    move |d: Delivery| {
                        let mut seen = seen.lock().expect("lock");
                        *seen.counts.entry(d.id().to_owned()).or_default() += 1;
                        seen.order.push(d.id().to_owned());
                        async { Ok(()) }
                    },
                    shutdown,
                )
                .await
        })
    };
    let reached = eventually(limit, || async {
        let seen = seen.lock().expect("lock").counts.clone();
        done(&seen, &consumer.metrics())
    })
    .await;
    common::stop_consumer(shutdown, task).await;
    let seen = seen.lock().expect("lock").clone();
    (reached, seen, consumer.metrics())
}

/// [`costs_only_itself`] on a default (quorum) work queue.
async fn one_unparseable_message_costs_only_itself(
    before: usize,
    bad: RawProperties,
) -> RawMessage {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "foreign-frames").await;
    costs_only_itself(&queue, before, bad).await
}

/// Publishes `before` valid messages, `bad`, and then [`VALID`] valid
/// messages into `queue`, consumes, and returns the bad message as read raw
/// from `<queue>.dlq`, after checking that it is rabbitry's copy (failure
/// headers, kind `decode`) with the body byte for byte.
///
/// With `before` 0 the bad message is first, so every valid message comes
/// after it on the wire: none of them can have been handled before the bad
/// one broke anything, so each must be handled exactly once (not merely at
/// least once), in the order published, and none may reach the error queue.
async fn costs_only_itself(queue: &str, before: usize, bad: RawProperties) -> RawMessage {
    let dlq = format!("{queue}.dlq");
    publish_around_bad(queue, before, &bad, b"the bad one").await;

    let all = before + VALID;
    let (reached, seen, metrics) =
        consume_counting(queue, DEAD_LETTER_BOUND, |seen, _| seen.len() == all).await;
    let dead_lettered = eventually(Duration::from_secs(10), || async {
        queue_depth(&dlq).await.unwrap_or(0) >= 1
    })
    .await;
    let counts = &seen.counts;
    assert!(
        reached,
        "every valid message is handled within {DEAD_LETTER_BOUND:?}: handled {} of {all} ({counts:?}), {metrics:?}",
        counts.len()
    );
    assert!(dead_lettered, "the unparseable message reached {dlq}");
    for i in 0..before {
        let handled = counts.get(&format!("before-{i}")).copied().unwrap_or(0);
        assert!(handled >= 1, "before-{i} handled at least once: {counts:?}");
    }
    for i in 0..VALID {
        let handled = counts.get(&format!("valid-{i}")).copied().unwrap_or(0);
        match before {
            0 => assert_eq!(handled, 1, "valid-{i} handled exactly once: {counts:?}"),
            _ => assert!(handled >= 1, "valid-{i} handled at least once: {counts:?}"),
        }
    }
    if before == 0 {
        let published: Vec<String> = (0..VALID).map(|i| format!("valid-{i}")).collect();
        assert_eq!(seen.order, published, "handled in the order published");
    }
    let dead = read_raw(&dlq).await;
    assert_eq!(
        dead.len(),
        1,
        "only the unparseable message is dead-lettered, no valid one: {:?}",
        dead.iter()
            .map(|m| m.properties.message_id.clone())
            .collect::<Vec<_>>()
    );
    let dead = dead.into_iter().next().expect("one");
    assert_eq!(dead.body, b"the bad one", "the body is kept byte for byte");
    let headers = dead.properties.headers.clone().unwrap_or_default();
    let text = |s: &str| Some(RawValue::LongString(s.as_bytes().to_vec()));
    assert_eq!(
        raw_header(&headers, b"x-exception-kind").cloned(),
        text("decode"),
        "rabbitry's copy, marked as a message that cannot be decoded: {:?}",
        dead.properties
    );
    assert_eq!(
        raw_header(&headers, b"x-original-queue").cloned(),
        text(queue)
    );
    assert_eq!(dead.properties.delivery_mode, Some(2), "persistent");
    dead
}

#[tokio::test]
async fn a_header_name_that_is_not_utf8_is_dead_lettered_and_the_rest_handled() {
    let name = b"bad-\xc3\x28".to_vec();
    let bad = RawProperties {
        headers: Some(vec![(name.clone(), RawValue::LongString(b"v".to_vec()))]),
        ..RawProperties::default()
    };
    let dead = one_unparseable_message_costs_only_itself(0, bad).await;
    let headers = dead.properties.headers.expect("headers");
    assert_eq!(
        raw_header(&headers, &name),
        Some(&RawValue::LongString(b"v".to_vec())),
        "the header is kept, name and value, byte for byte"
    );
}

#[tokio::test]
async fn a_message_id_that_is_not_utf8_is_dead_lettered_and_the_rest_handled() {
    let id = b"id-\xff\xfe".to_vec();
    let bad = RawProperties {
        message_id: Some(id.clone()),
        ..RawProperties::default()
    };
    let dead = one_unparseable_message_costs_only_itself(0, bad).await;
    assert_eq!(
        dead.properties.message_id,
        Some(id),
        "the id is kept byte for byte"
    );
}

/// Valid messages before the bad one in the same prefetch window: lapin
/// hands them to the handler before it reaches the bad one and dies, so
/// their acks may be lost with the connection and the broker delivers them
/// again. Each is handled at least once (duplicates are possible there, as
/// after any lost connection); only the bad one reaches the error queue.
#[tokio::test]
async fn valid_messages_before_the_bad_one_are_handled_and_only_it_is_dead_lettered() {
    let id = b"id-\xc3\x28".to_vec();
    let bad = RawProperties {
        message_id: Some(id.clone()),
        headers: Some(vec![(
            b"nested".to_vec(),
            RawValue::Table(vec![(b"\xff".to_vec(), RawValue::Void)]),
        )]),
        ..RawProperties::default()
    };
    let dead = one_unparseable_message_costs_only_itself(5, bad).await;
    assert_eq!(dead.properties.message_id, Some(id));
}

/// Classic queues have no `x-delivery-limit` (RabbitMQ 3.10), so the
/// broker cannot be the one to take the message away: the rule holds there
/// too.
#[tokio::test]
async fn on_a_classic_queue_too_a_header_name_that_is_not_utf8_costs_only_itself() {
    let broker = common::broker().await;
    let queue = unique("foreign-frames-classic");
    let mut cleanup = BrokerCleanup::new();
    cleanup.queue(&queue);
    for retry_queue in rabbitry::RetryPolicy::default().retry_queues(&queue) {
        cleanup.queue(retry_queue);
    }
    broker
        .declare(&Topology::new().queue(Queue::classic(&queue)))
        .await
        .expect("declare a classic queue");
    let name = b"bad-\xc3\x28".to_vec();
    let bad = RawProperties {
        headers: Some(vec![(name.clone(), RawValue::I32(7))]),
        ..RawProperties::default()
    };
    let dead = costs_only_itself(&queue, 0, bad).await;
    let headers = dead.properties.headers.expect("headers");
    assert_eq!(raw_header(&headers, &name), Some(&RawValue::I32(7)));
}

#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct Order {
    id: u64,
}

/// 50 MiB the JSON handler cannot decode: dead-lettered whole, once, with
/// no requeue loop (each round of which would move 50 MiB twice).
#[tokio::test]
async fn a_50_mib_body_the_handler_cannot_decode_is_dead_lettered_once() {
    const SIZE: usize = 50 * 1024 * 1024;
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "foreign-huge").await;
    let dlq = format!("{queue}.dlq");
    let body = vec![0xffu8; SIZE];
    let mut client = RawClient::connect_test_broker().await.expect("raw connect");
    client.timeout(Duration::from_secs(60));
    client
        .publish("", &queue, &RawProperties::default(), &body)
        .await
        .expect("the broker takes 50 MiB");
    client.close().await.expect("raw close");

    let consumer = Consumer::builder(broker.clone(), &queue)
        .build()
        .expect("consumer");
    let shutdown = CancellationToken::new();
    let task = {
        let (consumer, shutdown) = (consumer.clone(), shutdown.clone());
        tokio::spawn(async move {
            consumer
                .run(
                    rabbitry::consumer_json(|_order: Order, _d: Delivery| async { Ok(()) }),
                    shutdown,
                )
                .await
        })
    };
    let reached = eventually(Duration::from_secs(120), || async {
        queue_depth(&dlq).await.unwrap_or(0) >= 1
    })
    .await;
    common::stop_consumer(shutdown, task).await;
    let metrics = consumer.metrics();
    assert!(reached, "the message reached {dlq}: {metrics:?}");
    assert_eq!(metrics.dead_lettered, 1, "{metrics:?}");
    assert!(metrics.requeued <= 1, "no requeue loop: {metrics:?}");
    let dead = read_raw(&dlq).await;
    assert_eq!(dead.len(), 1, "one copy");
    assert_eq!(dead[0].body.len(), SIZE, "the body is kept whole");
    assert!(dead[0].body == body, "the body is kept byte for byte");
}

/// A message with property flags 0 (no id, no timestamp, no headers, no
/// delivery mode): the error-queue copy invents neither id nor timestamp,
/// is persistent, and keeps the body byte for byte.
#[tokio::test]
async fn a_message_with_no_properties_is_copied_to_the_error_queue_faithfully() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "foreign-bare").await;
    let dlq = format!("{queue}.dlq");
    let body = b"\x00\x9f\x92\x96 not utf-8".to_vec();
    let mut client = RawClient::connect_test_broker().await.expect("raw connect");
    client
        .publish("", &queue, &RawProperties::default(), &body)
        .await
        .expect("the broker takes it");
    client.close().await.expect("raw close");

    let consumer = Consumer::builder(broker.clone(), &queue)
        .build()
        .expect("consumer");
    let shutdown = CancellationToken::new();
    let task = {
        let (consumer, shutdown) = (consumer.clone(), shutdown.clone());
        tokio::spawn(async move {
            consumer
                .run(
                    |_d: Delivery| async { Err(HandlerError::permanent("refused")) },
                    shutdown,
                )
                .await
        })
    };
    let reached = eventually(Duration::from_secs(30), || async {
        queue_depth(&dlq).await.unwrap_or(0) >= 1
    })
    .await;
    common::stop_consumer(shutdown, task).await;
    assert!(reached, "the copy reached {dlq}: {:?}", consumer.metrics());
    let dead = read_raw(&dlq).await;
    assert_eq!(dead.len(), 1, "one copy");
    let copy = &dead[0];
    assert_eq!(copy.body, body, "the body is kept byte for byte");
    assert_eq!(copy.properties.message_id, None, "no invented id");
    assert_eq!(copy.properties.timestamp, None, "no invented timestamp");
    assert_eq!(copy.properties.delivery_mode, Some(2), "persistent");
    let headers = copy.properties.headers.clone().unwrap_or_default();
    assert!(
        raw_header(&headers, b"x-exception-message").is_some(),
        "rabbitry's copy, with the failure headers: {:?}",
        copy.properties
    );
}
