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

use rabbitry::{Broker, Consumer, ConsumerMetrics, Delivery, HandlerError, Queue, Topology};
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
    let messages = (0..before)
        .map(|i| (valid(format!("before-{i}")), &b"{}"[..]))
        .chain([(bad.clone(), bad_body)])
        .chain((0..VALID).map(|i| (valid(format!("valid-{i}")), &b"{}"[..])));
    for (properties, body) in messages {
        client
            .publish("", queue, &properties, body)
            .await
            .expect("the broker takes it");
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
#[derive(Clone, Debug, Default)]
struct Seen {
    counts: HashMap<String, usize>,
    order: Vec<String>,
}

/// Runs a consumer whose handler (one at a time, so that the order is the
/// queue's) counts each message id and succeeds, until `done` (given the
/// counts and the depth of `<queue>.dlq`) holds or `limit` passes; returns
/// whether `done` held, what it saw and the metrics.
async fn consume_counting(
    queue: &str,
    error_exchange: Option<&str>,
    limit: Duration,
    done: impl Fn(&HashMap<String, usize>, usize) -> bool,
) -> (bool, Seen, ConsumerMetrics) {
    let broker = common::broker().await;
    let mut builder = Consumer::builder(broker, queue).concurrency(1);
    if let Some(exchange) = error_exchange {
        builder = builder.error_exchange(exchange);
    }
    let consumer = builder.build().expect("consumer");
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
    let dlq = format!("{queue}.dlq");
    let reached = eventually(limit, || async {
        let dead = queue_depth(&dlq).await.unwrap_or(0) as usize;
        let seen = seen.lock().expect("lock").counts.clone();
        done(&seen, dead)
    })
    .await;
    common::stop_consumer(shutdown, task).await;
    let seen = seen.lock().expect("lock").clone();
    (reached, seen, consumer.metrics())
}

/// Declares `queue` (with its dead-letter pair); the guard deletes them and
/// the retry queues a consumer declares.
async fn declare(queue: Queue) -> BrokerCleanup {
    let mut cleanup = BrokerCleanup::new();
    cleanup.queue(queue.name());
    for retry_queue in rabbitry::RetryPolicy::default().retry_queues(queue.name()) {
        cleanup.queue(retry_queue);
    }
    let broker = common::broker().await;
    let topology = Topology::new().queue(queue);
    broker.declare(&topology).await.expect("declare");
    cleanup
}

/// Declares `queue`, publishes `before` valid messages, `bad`, and then
/// [`VALID`] valid messages into it, consumes, and returns the bad message as read raw
/// from `<queue>.dlq`, after checking that it is rabbitry's copy (failure
/// headers, kind `decode`) with the body byte for byte.
///
/// With `before` 0 the bad message is first, so every valid message comes
/// after it on the wire: none of them can have been handled before the bad
/// one broke anything, so each must be handled exactly once (not merely at
/// least once), in the order published, and none may reach the error queue.
async fn costs_only_itself(spec: Queue, before: usize, bad: RawProperties) -> RawMessage {
    let name = spec.name().to_owned();
    let (queue, _cleanup) = (name.as_str(), declare(spec).await);
    let dlq = format!("{queue}.dlq");
    publish_around_bad(queue, before, &bad, b"the bad one").await;

    let all = before + VALID;
    let (reached, seen, metrics) =
        consume_counting(queue, None, DEAD_LETTER_BOUND, |seen, dead| {
            seen.len() == all && dead >= 1
        })
        .await;
    let counts = &seen.counts;
    assert!(
        reached,
        "every valid message is handled and the unparseable one reached {dlq} within {DEAD_LETTER_BOUND:?}: handled {} of {all} ({counts:?}), {metrics:?}",
        counts.len()
    );
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
    let ids: Vec<_> = dead.iter().map(|m| &m.properties.message_id).collect();
    let only = "only the unparseable message is dead-lettered, no valid one";
    assert_eq!(dead.len(), 1, "{only}: {ids:?}");
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
    let dead = costs_only_itself(Queue::new(unique("foreign-frames")), 0, bad).await;
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
    let dead = costs_only_itself(Queue::new(unique("foreign-frames")), 0, bad).await;
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
    let dead = costs_only_itself(Queue::new(unique("foreign-frames")), 5, bad).await;
    assert_eq!(dead.properties.message_id, Some(id));
}

/// Classic queues have no `x-delivery-limit` (RabbitMQ 3.10), so the
/// broker cannot be the one to take the message away: the rule holds there
/// too.
#[tokio::test]
async fn on_a_classic_queue_too_a_header_name_that_is_not_utf8_costs_only_itself() {
    let name = b"bad-\xc3\x28".to_vec();
    let bad = RawProperties {
        headers: Some(vec![(name.clone(), RawValue::I32(7))]),
        ..RawProperties::default()
    };
    let queue = Queue::classic(unique("foreign-frames-classic"));
    let dead = costs_only_itself(queue, 0, bad).await;
    let headers = dead.properties.headers.expect("headers");
    assert_eq!(raw_header(&headers, &name), Some(&RawValue::I32(7)));
}

/// A copy the broker will not take (the error exchange routes it nowhere)
/// leaves the message in its queue; the delivery limit then dead-letters
/// it. That backstop costs more: the valid messages in its window come back
/// as often, so some may be dead-lettered too. None is lost.
#[tokio::test]
async fn a_message_the_rescue_cannot_move_is_never_lost() {
    let queue = unique("foreign-unmovable");
    let _cleanup = declare(Queue::new(&queue).delivery_limit(3)).await;
    let bad = RawProperties {
        message_id: Some(b"bad-\xff".to_vec()),
        ..RawProperties::default()
    };
    publish_around_bad(&queue, 0, &bad, b"the bad one").await;
    let dlq = format!("{queue}.dlq");
    let (reached, seen, metrics) = consume_counting(
        &queue,
        Some("amq.direct"),
        DEAD_LETTER_BOUND,
        |seen, dead| seen.len() + dead > VALID,
    )
    .await;
    assert!(reached, "{:?}, {metrics:?}", seen.counts);
    // A valid message may be handled and dead-lettered too, so `done` can
    // hold before the bad one (given back last) is in: read until it is.
    let mut dead = Vec::new();
    for _ in 0..50 {
        dead.extend(read_raw(&dlq).await);
        if dead
            .iter()
            .any(|m| m.properties.message_id == bad.message_id)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dead_ids: Vec<_> = dead.iter().map(|m| &m.properties.message_id).collect();
    let bad_copy = dead
        .iter()
        .find(|m| m.properties.message_id == bad.message_id)
        .unwrap_or_else(|| panic!("the bad message is in {dlq}: {dead_ids:?}"));
    assert_eq!(bad_copy.body, b"the bad one", "byte for byte");
    for i in 0..VALID {
        let id = format!("valid-{i}");
        let handled = seen.counts.contains_key(&id);
        let in_dlq = dead_ids.contains(&&Some(id.clone().into_bytes()));
        assert!(handled || in_dlq, "{id} handled or in {dlq}: {seen:?}");
    }
}

/// Runs a default consumer of `queue` with `handler` until `<queue>.dlq`
/// holds a message or `limit` passes; returns whether it did, and the
/// metrics.
async fn run_until_dead_lettered(
    broker: &Broker,
    queue: &str,
    handler: impl rabbitry::Handler,
    limit: Duration,
) -> (bool, ConsumerMetrics) {
    let consumer = Consumer::builder(broker.clone(), queue)
        .build()
        .expect("consumer");
    let shutdown = CancellationToken::new();
    let task = {
        let (consumer, shutdown) = (consumer.clone(), shutdown.clone());
        tokio::spawn(async move { consumer.run(handler, shutdown).await })
    };
    let dlq = format!("{queue}.dlq");
    let reached = eventually(limit, || async {
        queue_depth(&dlq).await.unwrap_or(0) >= 1
    })
    .await;
    common::stop_consumer(shutdown, task).await;
    (reached, consumer.metrics())
}

#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct Order {
    id: u64,
}

/// A huge body the JSON handler cannot decode: dead-lettered whole, once,
/// with no requeue loop (each round of which would move it twice). 50 MiB
/// on RabbitMQ 3.x (which takes up to 128 MiB by default); 16 MiB, the most
/// RabbitMQ 4.0 takes by default (`max_message_size`), on 4.x.
#[tokio::test]
async fn a_huge_body_the_handler_cannot_decode_is_dead_lettered_once() {
    let broker = common::broker().await;
    let rabbitmq4 = broker.server_version().is_some_and(|v| v.at_least(4, 0));
    let size: usize = if rabbitmq4 { 16 } else { 50 } * 1024 * 1024;
    let (queue, _cleanup) = common::work_queue(&broker, "foreign-huge").await;
    let dlq = format!("{queue}.dlq");
    let body = vec![0xffu8; size];
    let mut client = RawClient::connect_test_broker().await.expect("raw connect");
    client.timeout(Duration::from_secs(60));
    client
        .publish("", &queue, &RawProperties::default(), &body)
        .await
        .expect("the broker takes it");
    client.close().await.expect("raw close");

    let handler = rabbitry::consumer_json(|_order: Order, _d: Delivery| async { Ok(()) });
    let limit = Duration::from_secs(120);
    let (reached, metrics) = run_until_dead_lettered(&broker, &queue, handler, limit).await;
    assert!(reached, "the message reached {dlq}: {metrics:?}");
    assert_eq!(metrics.dead_lettered, 1, "{metrics:?}");
    assert!(metrics.requeued <= 1, "no requeue loop: {metrics:?}");
    let dead = read_raw(&dlq).await;
    assert_eq!(dead.len(), 1, "one copy");
    assert_eq!(dead[0].body.len(), size, "the body is kept whole");
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

    let handler = |_d: Delivery| async { Err(HandlerError::permanent("refused")) };
    let limit = Duration::from_secs(30);
    let (reached, metrics) = run_until_dead_lettered(&broker, &queue, handler, limit).await;
    assert!(reached, "the copy reached {dlq}: {metrics:?}");
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
