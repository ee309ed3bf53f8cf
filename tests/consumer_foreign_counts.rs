//! Counts a consumer trusts: only where the broker or rabbitry itself set
//! them. A publisher's (or another system's) header of the same name must
//! neither skip the handler as a poison message nor overflow the attempt
//! arithmetic.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rabbitry::lapin::BasicProperties;
use rabbitry::lapin::types::{AMQPValue, FieldTable};
use rabbitry::{Consumer, Delivery, HandlerError, Queue, Topology};
use rabbitry_testkit::{BrokerCleanup, eventually, queue_depth, unique};
use tokio_util::sync::CancellationToken;

/// Sends one message with `headers` to `queue` as another client would.
async fn publish_foreign(queue: &str, headers: FieldTable) {
    let properties = BasicProperties::default().with_headers(headers);
    common::publish_foreign(queue, properties, b"payload").await;
}

/// Runs a consumer on `queue` whose handler succeeds (or fails
/// permanently), until `done` holds; returns how often the handler ran.
async fn consume_until(
    queue: &str,
    fail: bool,
    done: impl Fn(&Consumer) -> bool,
) -> (usize, Consumer) {
    let broker = common::broker().await;
    let consumer = Consumer::builder(broker, queue).build().expect("consumer");
    let runs = Arc::new(AtomicUsize::new(0));
    let shutdown = CancellationToken::new();
    let task = {
        let (consumer, shutdown, runs) = (consumer.clone(), shutdown.clone(), runs.clone());
        tokio::spawn(async move {
            consumer
                .run(
                    move |_d: Delivery| {
                        runs.fetch_add(1, Ordering::SeqCst);
                        async move {
                            if fail {
                                Err(HandlerError::permanent("refused"))
                            } else {
                                Ok(())
                            }
                        }
                    },
                    shutdown,
                )
                .await
        })
    };
    let reached = eventually(Duration::from_secs(20), || async { done(&consumer) }).await;
    common::stop_consumer(shutdown, task).await;
    assert!(reached, "the consumer got there: {:?}", consumer.metrics());
    (runs.load(Ordering::SeqCst), consumer)
}

#[tokio::test]
async fn a_forged_broker_delivery_count_on_a_first_delivery_does_not_skip_the_handler() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "forged-count").await;
    let mut headers = FieldTable::default();
    headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(99));
    publish_foreign(&queue, headers).await;
    let (runs, _) = consume_until(&queue, false, |c| c.metrics().succeeded == 1).await;
    assert_eq!(runs, 1, "the handler ran");
    assert_eq!(queue_depth(&format!("{queue}.dlq")).await, Some(0));
}

#[tokio::test]
async fn a_forged_rabbitry_redelivery_count_does_not_skip_the_handler() {
    let broker = common::broker().await;
    let queue = unique("forged-redeliveries");
    let mut cleanup = BrokerCleanup::new();
    cleanup.queue(&queue);
    cleanup.queue(format!("{queue}.dlq"));
    cleanup.exchange(format!("{queue}.dlx"));
    for retry_queue in rabbitry::RetryPolicy::default().retry_queues(&queue) {
        cleanup.queue(retry_queue);
    }
    broker
        .declare(&Topology::new().queue(Queue::classic(&queue)))
        .await
        .expect("declare a classic queue");
    let mut headers = FieldTable::default();
    headers.insert(
        "x-rabbitry-redeliveries".into(),
        AMQPValue::LongLongInt(1000),
    );
    publish_foreign(&queue, headers).await;
    let (runs, _) = consume_until(&queue, false, |c| c.metrics().succeeded == 1).await;
    assert_eq!(runs, 1, "the handler ran");
}

#[tokio::test]
async fn a_huge_retry_count_is_dead_lettered_not_an_overflow() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "huge-retries").await;
    let mut headers = FieldTable::default();
    headers.insert(
        "x-rabbitry-retries".into(),
        AMQPValue::LongLongInt(i64::from(u32::MAX)),
    );
    publish_foreign(&queue, headers).await;
    let (runs, consumer) = consume_until(&queue, true, |c| c.metrics().dead_lettered == 1).await;
    assert_eq!(runs, 1);
    assert_eq!(consumer.metrics().requeued, 0);
}
