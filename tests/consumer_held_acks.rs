//! A delivery whose handler does not finish must not stall the deliveries
//! behind it. Acks coalesce into `multiple=true` over the finished prefix, and
//! acks held behind an unfinished delivery still count against the prefetch:
//! without sending them on their own, a consumer with prefetch 4 stops after
//! three more deliveries. Against the real broker.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rabbitry::{Consumer, Delivery};
use tokio::sync::Notify;

#[tokio::test]
async fn deliveries_behind_a_handler_that_never_finishes_are_handled_and_acked() {
    const FAST: usize = 200;
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "held-acks").await;
    // Message "0" arrives first; its handler waits until the test lets it go.
    common::publish_n(&broker, &queue, FAST + 1).await;

    let release = Arc::new(Notify::new());
    let handled = Arc::new(AtomicUsize::new(0));
    let consumer = Consumer::builder(broker.clone(), &queue)
        .prefetch(4)
        .concurrency(4)
        .build()
        .expect("consumer");
    let (shutdown, task) = common::spawn_consumer(&consumer, {
        let (release, handled) = (release.clone(), handled.clone());
        move |d: Delivery| {
            let (release, handled) = (release.clone(), handled.clone());
            async move {
                if d.payload() == b"0" {
                    tokio::time::timeout(Duration::from_secs(120), release.notified())
                        .await
                        .map_err(|_| rabbitry::HandlerError::retryable("never released"))?;
                }
                handled.fetch_add(1, Ordering::SeqCst);
                Ok::<(), rabbitry::HandlerError>(())
            }
        }
    });

    let all_fast = common::eventually(Duration::from_secs(60), || {
        let n = handled.load(Ordering::SeqCst);
        async move { n == FAST }
    })
    .await;
    assert!(
        all_fast,
        "only {} of {FAST} deliveries behind the unfinished one were handled",
        handled.load(Ordering::SeqCst)
    );
    assert_eq!(
        consumer.metrics().succeeded,
        FAST as u64,
        "head still running"
    );

    release.notify_one();
    let c = consumer.clone();
    assert!(
        common::eventually(Duration::from_secs(30), || {
            let done = c.metrics().succeeded == FAST as u64 + 1;
            async move { done }
        })
        .await,
        "the head finished"
    );
    common::stop_consumer(shutdown, task).await;
    // Every ack reached the broker: nothing comes back when the channel closes.
    assert_eq!(rabbitry_testkit::queue_depth(&queue).await, Some(0));
    assert_eq!(consumer.metrics().redelivered, 0);
}
