//! Headers other clients may send that rabbitry reads for its own
//! decisions, in shapes it does not expect: a forged `x-death` of every
//! wrong shape, `x-delivery-count` and rabbitry's own counters of the wrong
//! type or out of range, header values that are not UTF-8, tables nested
//! deep, thousands of headers. (A NaN or infinite float cannot come in:
//! RabbitMQ refuses the publish, 541, closing the publisher's connection.) The consumer never panics and settles each
//! message once: handled and acked, nothing left in the queue, nothing
//! dead-lettered; reading and replaying an error queue of such messages
//! loses none of them.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rabbitry::lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use rabbitry::lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use rabbitry::lapin::{BasicProperties, Connection, ConnectionProperties};
use rabbitry::{Consumer, Delivery, ErrorQueue, Publisher};
use rabbitry_testkit::{eventually, queue_depth, services};

fn table(entries: Vec<(&str, AMQPValue)>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(k), v);
    }
    t
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn array(values: Vec<AMQPValue>) -> AMQPValue {
    AMQPValue::FieldArray(FieldArray::from(values))
}

/// A table nested `depth` deep, tables and arrays in turn.
fn nested(depth: usize) -> AMQPValue {
    let mut value = text("bottom");
    for level in 0..depth {
        value = if level % 2 == 0 {
            AMQPValue::FieldTable(table(vec![("n", value), ("level", AMQPValue::LongInt(1))]))
        } else {
            array(vec![value, AMQPValue::Boolean(true)])
        };
    }
    value
}

/// `(name, headers)` for each hostile message.
fn hostile(queue: &str) -> Vec<(String, FieldTable)> {
    let death =
        |entries: Vec<(&str, AMQPValue)>| array(vec![AMQPValue::FieldTable(table(entries))]);
    let not_utf8 = AMQPValue::LongString(LongString::from(vec![0xff, 0xfe, 0x00, 0xc3]));
    let mut many = FieldTable::default();
    for i in 0..4000 {
        many.insert(ShortString::from(format!("h{i}")), AMQPValue::LongInt(i));
    }
    let cases: Vec<(&str, Vec<(&str, AMQPValue)>)> = vec![
        ("death-int", vec![("x-death", AMQPValue::LongLongInt(7))]),
        // The one well-formed record: an origin a replay can use.
        (
            "death-valid",
            vec![(
                "x-death",
                death(vec![
                    ("count", AMQPValue::LongLongInt(1)),
                    ("reason", text("rejected")),
                    ("queue", text(queue)),
                    ("exchange", text("")),
                    ("routing-keys", array(vec![text(queue)])),
                ]),
            )],
        ),
        ("death-text", vec![("x-death", text("rejected"))]),
        ("death-empty", vec![("x-death", array(vec![]))]),
        (
            "death-not-tables",
            vec![("x-death", array(vec![text("a"), AMQPValue::LongInt(1)]))],
        ),
        (
            "death-wrong-fields",
            vec![(
                "x-death",
                death(vec![
                    ("count", text("many")),
                    ("reason", AMQPValue::LongInt(3)),
                    ("queue", array(vec![])),
                    ("exchange", AMQPValue::Boolean(true)),
                    ("routing-keys", text(queue)),
                    ("time", text("yesterday")),
                ]),
            )],
        ),
        (
            "death-huge-count",
            vec![(
                "x-death",
                death(vec![
                    ("count", AMQPValue::LongLongInt(i64::MAX)),
                    ("reason", text("rejected")),
                    ("queue", text(queue)),
                ]),
            )],
        ),
        (
            "death-negative-count",
            vec![(
                "x-death",
                death(vec![
                    ("count", AMQPValue::LongLongInt(-5)),
                    ("queue", text(queue)),
                ]),
            )],
        ),
        (
            "death-1000-entries",
            vec![(
                "x-death",
                array(
                    (0..1000)
                        .map(|i| {
                            AMQPValue::FieldTable(table(vec![
                                ("count", AMQPValue::LongLongInt(i)),
                                ("queue", text(queue)),
                                ("reason", text("expired")),
                            ]))
                        })
                        .collect(),
                ),
            )],
        ),
        ("count-text", vec![("x-delivery-count", text("3"))]),
        (
            "count-negative",
            vec![("x-delivery-count", AMQPValue::LongLongInt(-1))],
        ),
        (
            "count-max",
            vec![("x-delivery-count", AMQPValue::LongLongInt(i64::MAX))],
        ),
        (
            "count-float",
            vec![("x-delivery-count", AMQPValue::Double(1e300))],
        ),
        (
            "count-table",
            vec![(
                "x-delivery-count",
                AMQPValue::FieldTable(FieldTable::default()),
            )],
        ),
        ("retries-text", vec![("x-rabbitry-retries", text("lots"))]),
        (
            "retries-negative",
            vec![("x-rabbitry-retries", AMQPValue::LongLongInt(-3))],
        ),
        (
            "redeliveries-text",
            vec![("x-rabbitry-redeliveries", not_utf8.clone())],
        ),
        (
            "counted-in-int",
            vec![("x-rabbitry-counted-in", AMQPValue::LongInt(9))],
        ),
        ("due-at-text", vec![("x-rabbitry-due-at", text("tomorrow"))]),
        (
            "due-at-far",
            vec![("x-rabbitry-due-at", AMQPValue::Timestamp(u64::MAX))],
        ),
        (
            "partition-key-int",
            vec![("x-partition-key", AMQPValue::LongInt(42))],
        ),
        (
            "not-utf8-values",
            vec![
                ("x-partition-key", not_utf8.clone()),
                ("traceparent", not_utf8.clone()),
                ("x-original-exchange", not_utf8.clone()),
                ("x-exception-message", not_utf8.clone()),
            ],
        ),
        (
            "traceparent-garbage",
            vec![("traceparent", text("00-zz-!!-ff"))],
        ),
        ("nested-64", vec![("deep", nested(64))]),
        ("nested-death", vec![("x-death", array(vec![nested(40)]))]),
    ];
    let mut out: Vec<(String, FieldTable)> = cases
        .into_iter()
        .map(|(name, entries)| (name.to_owned(), table(entries)))
        .collect();
    out.push(("4000-headers".into(), many));
    out
}

/// Publishes each hostile message (body `{}`, message id its name) to
/// `queue` with confirms, as another client would; their death records
/// name `origin`.
async fn publish_hostile(queue: &str, origin: &str) -> Vec<String> {
    let conn = Connection::connect(services().amqp_url(), ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = conn.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let mut names = Vec::new();
    for (name, headers) in hostile(origin) {
        let properties = BasicProperties::default()
            .with_message_id(name.as_str().into())
            .with_content_type("application/json".into())
            .with_headers(headers);
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                b"{}",
                properties,
            )
            .await
            .unwrap_or_else(|e| panic!("publish {name}: {e}"))
            .await
            .unwrap_or_else(|e| panic!("confirm {name}: {e}"));
        assert!(confirm.is_ack(), "{name}: {confirm:?}");
        names.push(name);
    }
    let _ = conn.close(200, "sent".into()).await;
    names
}

#[tokio::test]
async fn a_consumer_handles_each_message_with_hostile_headers_exactly_once() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "hostile-headers").await;
    let names = publish_hostile(&queue, &queue).await;

    let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let consumer = Consumer::builder(broker.clone(), &queue)
        .build()
        .expect("consumer");
    let s = seen.clone();
    let (shutdown, task) = common::spawn_consumer(&consumer, move |d: Delivery| {
        // Everything a handler may ask of a delivery, on every message.
        let summary = format!(
            "{} {} {} {} {:?} {}",
            d.attempt(),
            d.retries(),
            d.delivery_count(),
            d.redelivered(),
            d.key(),
            d.headers().len(),
        );
        *s.lock()
            .expect("lock")
            .entry(d.id().to_owned())
            .or_default() += 1;
        async move {
            assert!(!summary.is_empty());
            Ok(())
        }
    });
    let all = eventually(Duration::from_secs(30), || async {
        seen.lock().expect("lock").len() == names.len()
    })
    .await;
    // A redelivery would show up after the first pass: give it a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    common::stop_consumer(shutdown, task).await;
    let seen = seen.lock().expect("lock").clone();
    assert!(all, "not every message was handled: {seen:?}");
    for name in &names {
        assert_eq!(seen.get(name), Some(&1), "{name} handled once: {seen:?}");
    }
    assert_eq!(
        queue_depth(&queue).await,
        Some(0),
        "every message was acked"
    );
    assert_eq!(
        queue_depth(&format!("{queue}.dlq")).await,
        Some(0),
        "none was dead-lettered"
    );
    assert_eq!(
        consumer.metrics().failed_attempts,
        0,
        "{:?}",
        consumer.metrics()
    );
}

#[tokio::test]
async fn an_error_queue_of_messages_with_hostile_headers_lists_and_replays_without_loss() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "hostile-dlq").await;
    let dlq = format!("{queue}.dlq");
    let names = publish_hostile(&dlq, &queue).await;

    let errors = ErrorQueue::new(broker.clone(), &dlq);
    let listed = errors.list(names.len() + 10).await.expect("list");
    assert_eq!(listed.len(), names.len(), "every message is listed");
    assert_eq!(
        queue_depth(&dlq).await,
        Some(names.len() as u32),
        "listing takes nothing"
    );

    let publisher = Publisher::builder(broker.clone())
        .build()
        .expect("publisher");
    let report = errors.replay(&publisher, None).await.expect("replay");
    // Only a death record naming an exchange and a routing key is an
    // origin; every other message stays where it is. None is lost.
    let back = queue_depth(&queue).await.unwrap_or(0) as usize;
    let left = queue_depth(&dlq).await.unwrap_or(0) as usize;
    assert_eq!(report.replayed, back, "{report:?}");
    assert!(
        report.replayed >= 1,
        "the well-formed origin is replayed: {report:?}"
    );
    assert_eq!(report.replayed + report.skipped, names.len(), "{report:?}");
    assert_eq!(back + left, names.len(), "none lost: {report:?}");
}
