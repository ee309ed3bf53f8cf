//! The error-queue copy: whatever the broker delivered can be dead-lettered
//! (neither a large body nor a handler error that quotes one keeps a message
//! cycling between the queue and a failed republish), and the copy stays in
//! the error queue until someone deals with it.

mod common;

use std::time::Duration;

use rabbitry::lapin::BasicProperties;
use rabbitry::lapin::types::{AMQPValue, DecimalValue, FieldTable, LongString};
use rabbitry::{Consumer, Delivery, HandlerError, Message, Publisher};
use tokio_util::sync::CancellationToken;

/// What goes into the work queue: a message sent by rabbitry, or raw
/// properties and body sent by another client.
enum Sent {
    Rabbitry(Message),
    Foreign(BasicProperties, Vec<u8>),
}

async fn dead_letter_one(message: Message, error: String) -> rabbitry::lapin::message::Delivery {
    dead_letter_and_wait(Sent::Rabbitry(message), error, Duration::ZERO).await
}

/// Dead-letters what was sent through a consumer whose handler fails with
/// `error`, waits `linger` with the copy in the error queue, then reads it.
async fn dead_letter_and_wait(
    sent: Sent,
    error: String,
    linger: Duration,
) -> rabbitry::lapin::message::Delivery {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "dl-copy").await;
    match sent {
        Sent::Rabbitry(message) => {
            let message = Message::from_parts(
                "",
                queue.as_str(),
                message.payload().to_vec(),
                message.properties().clone(),
            );
            Publisher::builder(broker.clone())
                .max_message_size(64 * 1024 * 1024)
                .build()
                .expect("publisher")
                .send(message)
                .await
                .expect("the broker takes it");
        }
        Sent::Foreign(properties, body) => {
            common::publish_foreign(&queue, properties, &body).await;
        }
    }
    let consumer = Consumer::builder(broker.clone(), &queue)
        .build()
        .expect("consumer");
    let shutdown = CancellationToken::new();
    let task = {
        let (consumer, shutdown) = (consumer.clone(), shutdown.clone());
        tokio::spawn(async move {
            consumer
                .run(
                    move |_d: Delivery| {
                        let error = error.clone();
                        async move { Err(HandlerError::permanent(error)) }
                    },
                    shutdown,
                )
                .await
        })
    };
    let copied = rabbitry_testkit::eventually(Duration::from_secs(60), || async {
        consumer.metrics().dead_lettered == 1
    })
    .await;
    assert!(copied, "the consumer dead-lettered the message");
    tokio::time::sleep(linger).await;
    let dead = rabbitry_testkit::collect(&format!("{queue}.dlq"), 1, Duration::from_secs(10)).await;
    common::stop_consumer(shutdown, task).await;
    assert_eq!(dead.len(), 1, "the message reached the error queue");
    assert_eq!(
        consumer.metrics().requeued,
        0,
        "no failed republish sent it round again"
    );
    dead.into_iter().next().expect("one")
}

/// 17 MiB, over the publisher's default limit (16 MiB): another client may
/// send it to RabbitMQ 3.x, which takes up to 128 MiB by default. RabbitMQ
/// 4.0 refuses it (its default `max_message_size` is 16 MiB), so no such
/// message reaches a queue there.
#[tokio::test]
async fn a_body_over_the_publishers_default_limit_is_dead_lettered() {
    let body = vec![7u8; 17 * 1024 * 1024];
    let broker = common::broker().await;
    let version = broker.server_version().expect("connected: version known");
    if version.at_least(4, 0) {
        let (queue, _cleanup) = common::work_queue(&broker, "dl-copy-big").await;
        // The broker closes the channel (406); rabbitry reports the confirm
        // as lost with it.
        let refused = Publisher::builder(broker.clone())
            .max_message_size(64 * 1024 * 1024)
            .build()
            .expect("publisher")
            .send(Message::bytes("", queue.as_str(), body))
            .await;
        assert!(refused.is_err(), "RabbitMQ {version} took 17 MiB");
        eprintln!("SKIPPED on RabbitMQ {version}: it refuses bodies over 16 MiB");
        return;
    }
    let dead = dead_letter_one(Message::bytes("", "", body.clone()), "bad".into()).await;
    assert_eq!(dead.data.len(), body.len(), "the body is kept whole");
}

#[tokio::test]
async fn an_error_quoting_a_huge_body_is_cut_and_the_message_dead_lettered() {
    let dead = dead_letter_one(Message::bytes("", "", "x"), "e".repeat(300 * 1024)).await;
    let headers = dead.properties.headers().as_ref().expect("headers");
    let Some(AMQPValue::LongString(text)) = headers.inner().get("x-exception-message") else {
        panic!("no x-exception-message");
    };
    assert!(text.as_bytes().len() <= 4096, "{}", text.as_bytes().len());
}

#[tokio::test]
async fn the_copy_is_persistent_and_does_not_expire_out_of_the_error_queue() {
    let message = Message::bytes("", "", "x")
        .persistent(false)
        .expiration(Duration::from_secs(3));
    let dead = dead_letter_and_wait(
        Sent::Rabbitry(message),
        "bad".into(),
        Duration::from_secs(4),
    )
    .await;
    assert_eq!(*dead.properties.delivery_mode(), Some(2), "persistent");
    assert_eq!(
        *dead.properties.expiration(),
        None,
        "no TTL in the error queue"
    );
    let headers = dead.properties.headers().as_ref().expect("headers");
    assert!(
        matches!(
            headers.inner().get("x-original-expiration"),
            Some(AMQPValue::LongString(v)) if v.as_bytes() == b"3000"
        ),
        "the TTL is recorded: {headers:?}"
    );
    assert!(
        headers.inner().contains_key("x-exception-message"),
        "our copy"
    );
}

/// Another client's message with no properties but typed headers: the copy
/// invents no id or timestamp, and every header keeps its AMQP type.
#[tokio::test]
async fn a_foreign_message_is_copied_faithfully() {
    let mut table = FieldTable::default();
    table.insert("i8".into(), AMQPValue::ShortShortInt(-8));
    table.insert("u16".into(), AMQPValue::ShortUInt(16));
    table.insert("i32".into(), AMQPValue::LongInt(-32));
    table.insert("f32".into(), AMQPValue::Float(0.5));
    table.insert(
        "price".into(),
        AMQPValue::DecimalValue(DecimalValue {
            scale: 2,
            value: 12345,
        }),
    );
    table.insert("note".into(), AMQPValue::LongString(LongString::from("n")));
    let properties = BasicProperties::default()
        .with_headers(table.clone())
        .with_user_id("guest".into())
        .with_cluster_id("eu-1".into());
    let dead = dead_letter_and_wait(
        Sent::Foreign(properties, b"foreign".to_vec()),
        "bad".into(),
        Duration::ZERO,
    )
    .await;
    assert_eq!(dead.data, b"foreign");
    let p = &dead.properties;
    assert_eq!(*p.message_id(), None, "no invented id");
    assert_eq!(*p.timestamp(), None, "no invented timestamp");
    assert_eq!(*p.delivery_mode(), Some(2), "persistent");
    let headers = p.headers().as_ref().expect("headers").inner();
    for (name, value) in table.inner() {
        assert_eq!(headers.get(name), Some(value), "header {name}");
    }
    // A republish cannot carry another connection's user-id: kept as headers.
    let text = |name: &str| match headers.get(name) {
        Some(AMQPValue::LongString(s)) => Some(s.to_string()),
        _ => None,
    };
    assert_eq!(text("x-original-user-id").as_deref(), Some("guest"));
    assert_eq!(text("x-original-cluster-id").as_deref(), Some("eu-1"));
}
