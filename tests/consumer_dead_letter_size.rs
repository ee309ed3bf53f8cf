//! Whatever the broker delivered can be dead-lettered: neither a large body
//! nor a handler error that quotes one keeps a message cycling between the
//! queue and a failed republish.

mod common;

use std::time::Duration;

use rabbitry::lapin::types::AMQPValue;
use rabbitry::{Consumer, Delivery, HandlerError, Message, Publisher};
use tokio_util::sync::CancellationToken;

async fn dead_letter_one(message: Message, error: String) -> rabbitry::lapin::message::Delivery {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "dl-size").await;
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
    let dead = rabbitry_testkit::collect(&format!("{queue}.dlq"), 1, Duration::from_secs(60)).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("consumer stops")
        .expect("join")
        .expect("run ok");
    assert_eq!(dead.len(), 1, "the message reached the error queue");
    assert_eq!(
        consumer.metrics().requeued,
        0,
        "no failed republish sent it round again"
    );
    dead.into_iter().next().expect("one")
}

#[tokio::test]
async fn a_body_over_the_publishers_default_limit_is_dead_lettered() {
    let body = vec![7u8; 17 * 1024 * 1024];
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
