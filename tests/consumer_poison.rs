//! The error queue and the poison-message guard against the real broker:
//! replaying failures, and messages delivered too often without a decision
//! (quorum queues count them, rabbitry counts them on classic queues).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rabbitry::{
    Broker, Consumer, Delivery, ErrorQueue, HandlerError, Message, Publisher, Queue, RetryPolicy,
    Topology, headers,
};
use rabbitry_testkit::{eventually, queue_depth};
use tokio_util::sync::CancellationToken;

use common::{header_text as header, publish_n, spawn_consumer as spawn};

async fn stop(shutdown: CancellationToken, task: tokio::task::JoinHandle<rabbitry::Result<()>>) {
    common::stop_consumer(shutdown, task).await;
}

#[tokio::test]
async fn replay_from_the_error_queue_delivers_back_to_the_work_queue() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "cons-replay").await;
    let publisher = Publisher::builder(broker.clone())
        .build()
        .expect("publisher");
    let msg = Message::bytes("", &queue, "order 9");
    let id = msg.id().to_owned();
    assert!(
        publisher
            .publish(msg)
            .await
            .expect("publish")
            .is_confirmed()
    );

    let healthy = Arc::new(AtomicUsize::new(0));
    let consumer = Consumer::builder(broker.clone(), &queue)
        .retry(RetryPolicy::none())
        .build()
        .expect("consumer");
    let ok = healthy.clone();
    let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let s = seen.clone();
    let (shutdown, task) = spawn(&consumer, move |d: Delivery| {
        let n = {
            let mut seen = s.lock().expect("lock");
            let n = seen.entry(d.id().to_owned()).or_default();
            *n += 1;
            *n
        };
        let ok = ok.clone();
        async move {
            if n == 1 {
                return Err(HandlerError::permanent("bug in the handler"));
            }
            ok.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    });
    let dlq = format!("{queue}.dlq");
    assert!(
        eventually(Duration::from_secs(10), || async {
            queue_depth(&dlq).await == Some(1)
        })
        .await
    );

    let errors = ErrorQueue::new(broker.clone(), &dlq);
    let listed = errors.list(10).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].message_id, id);
    assert_eq!(listed[0].exception.as_deref(), Some("bug in the handler"));
    assert_eq!(
        listed[0].original_routing_key.as_deref(),
        Some(queue.as_str())
    );
    assert_eq!(queue_depth(&dlq).await, Some(1), "listing does not remove");

    let report = errors.replay(&publisher, None).await.expect("replay");
    assert_eq!((report.replayed, report.skipped), (1, 0));
    assert!(
        eventually(Duration::from_secs(10), || async {
            healthy.load(Ordering::SeqCst) == 1
        })
        .await
    );
    stop(shutdown, task).await;
    assert_eq!(
        seen.lock().expect("lock").get(&id),
        Some(&2),
        "the same message, handled again"
    );
    assert_eq!(queue_depth(&dlq).await, Some(0));
}

#[tokio::test]
async fn a_message_redelivered_too_often_is_dead_lettered_without_running_the_handler() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "cons-poison").await;
    publish_n(&broker, &queue, 1).await;
    // Two deliveries that ended without a decision.
    crash_once(&broker, &queue).await;
    crash_once(&broker, &queue).await;
    assert_guard_trips(&broker, &queue).await;
}

/// A classic queue with its dead-letter pair; returns its name and cleanup.
async fn classic_queue(broker: &Broker, prefix: &str) -> (String, rabbitry_testkit::BrokerCleanup) {
    let queue = rabbitry_testkit::unique(prefix);
    let mut cleanup = rabbitry_testkit::BrokerCleanup::new();
    cleanup.queue(&queue);
    for q in RetryPolicy::default().retry_queues(&queue) {
        cleanup.queue(q);
    }
    broker
        .declare(&Topology::new().queue(Queue::classic(&queue)))
        .await
        .expect("declare");
    (queue, cleanup)
}

/// Gets the one message in `queue` and requeues it, as a consumer that
/// crashed mid-handler would (the broker marks the next delivery redelivered).
async fn crash_once(broker: &Broker, queue: &str) {
    use rabbitry::lapin::options::{BasicGetOptions, BasicNackOptions};
    let ch = broker
        .open_channel(rabbitry::Role::Consume)
        .await
        .expect("channel");
    let got = ch
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .expect("get")
        .expect("a message");
    got.delivery
        .acker
        .nack(BasicNackOptions {
            multiple: false,
            requeue: true,
        })
        .await
        .expect("nack");
}

#[tokio::test]
async fn on_a_classic_queue_redeliveries_are_counted_in_a_header_and_trip_the_guard() {
    let broker = common::broker().await;
    let publisher = Publisher::builder(broker.clone())
        .build()
        .expect("publisher");

    // Redelivered once, below the limit: the handler runs once, on a copy
    // that carries the count.
    let (queue, _c1) = classic_queue(&broker, "cons-classic-count").await;
    let msg = Message::bytes("", &queue, "once");
    assert!(
        publisher
            .publish(msg.clone())
            .await
            .expect("publish")
            .is_confirmed()
    );
    crash_once(&broker, &queue).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let consumer = Consumer::builder(broker.clone(), &queue)
        .max_redeliveries(3)
        .build()
        .expect("consumer");
    let s = seen.clone();
    let (shutdown, task) = spawn(&consumer, move |d: Delivery| {
        s.lock()
            .expect("lock")
            .push((d.id().to_owned(), d.delivery_count()));
        async { Ok(()) }
    });
    assert!(
        eventually(Duration::from_secs(10), || async {
            !seen.lock().expect("lock").is_empty()
        })
        .await
    );
    stop(shutdown, task).await;
    assert_eq!(*seen.lock().expect("lock"), vec![(msg.id().to_owned(), 1)]);
    assert_eq!(queue_depth(&queue).await, Some(0));

    // Already counted once and redelivered again: at the limit of 2, it is
    // dead-lettered without running the handler.
    let (queue, _c2) = classic_queue(&broker, "cons-classic-poison").await;
    // The headers rabbitry writes when it counts a redelivery on this queue.
    let msg = Message::bytes("", &queue, "poison")
        .header(rabbitry::REDELIVERIES_HEADER, 1i64)
        .header(rabbitry::COUNTED_IN_HEADER, queue.as_str());
    assert!(
        publisher
            .publish(msg)
            .await
            .expect("publish")
            .is_confirmed()
    );
    crash_once(&broker, &queue).await;
    assert_guard_trips(&broker, &queue).await;
}

/// Runs a consumer with `max_redeliveries(2)` on `queue`, whose one message
/// was already delivered twice without a decision: it must go to the error
/// queue without the handler running.
async fn assert_guard_trips(broker: &Broker, queue: &str) {
    let calls = Arc::new(AtomicUsize::new(0));
    let consumer = Consumer::builder(broker.clone(), queue)
        .max_redeliveries(2)
        .build()
        .expect("consumer");
    let c = calls.clone();
    let (shutdown, task) = spawn(&consumer, move |_d: Delivery| {
        c.fetch_add(1, Ordering::SeqCst);
        async { Ok(()) }
    });
    let dead = rabbitry_testkit::collect(&format!("{queue}.dlq"), 1, Duration::from_secs(10)).await;
    stop(shutdown, task).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the handler never ran");
    assert!(header(&dead[0], headers::EXCEPTION_MESSAGE).contains("poison-message guard"));
}
