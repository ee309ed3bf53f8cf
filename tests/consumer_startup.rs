//! A consumer that cannot start says so: a queue that does not exist is an
//! error from `run`, not a consumer retrying forever under a typo (and
//! declaring retry queues named after the typo).

mod common;

use std::time::Duration;

use rabbitry::{Consumer, ConsumerState, Delivery, Error, RetryPolicy};
use rabbitry_testkit::{queue_depth, unique};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn consuming_from_a_queue_that_does_not_exist_fails_at_once() {
    let broker = common::broker().await;
    let typo = unique("no-such-queue");
    let consumer = Consumer::builder(broker, &typo).build().expect("consumer");
    let run = consumer.run(|_d: Delivery| async { Ok(()) }, CancellationToken::new());
    let err = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("run returns instead of retrying forever")
        .expect_err("the queue does not exist");
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(err.to_string().contains(&typo), "{err}");
    assert_eq!(consumer.state(), ConsumerState::Stopped);
    for retry_queue in RetryPolicy::default().retry_queues(&typo) {
        assert_eq!(
            queue_depth(&retry_queue).await,
            None,
            "no orphan {retry_queue}"
        );
    }
}
