//! The publisher's channels: many more publishes than the windows hold,
//! and channels replaced after their connection failed.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rabbitry::{Message, Publisher};
use rabbitry_testkit::{FaultProxy, services};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_more_publishes_than_the_windows_hold_are_each_confirmed_once() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "pub-windows").await;
    // 2 channels x 3 in flight, 600 publishes at once: nearly all of them
    // wait for room in a window.
    let publisher = Publisher::builder(broker.clone())
        .channels(2)
        .window(3)
        .build()
        .expect("publisher");
    const N: usize = 600;
    let messages: Vec<Message> = (0..N)
        .map(|i| Message::bytes("", &queue, format!("m{i}")))
        .collect();
    let sent: HashSet<String> = messages.iter().map(|m| m.id().to_owned()).collect();
    let results: Vec<_> = futures_util::stream::iter(messages)
        .map(|m| publisher.send(m))
        .buffer_unordered(N)
        .collect()
        .await;
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "every publish confirmed: {failed:?}");
    assert_eq!(publisher.metrics().confirmed, N as u64);

    let got = common::collect(&queue, N as u32, Duration::from_secs(30)).await;
    let ids: HashSet<String> = rabbitry_testkit::message_ids(&got).into_iter().collect();
    assert_eq!(got.len(), N, "each message exactly once");
    assert_eq!(ids, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_connection_drops_publishes_go_through_fresh_channels() {
    let proxy = FaultProxy::start(services().amqp_addr()).await;
    let broker = common::broker_via(&proxy).await;
    let direct = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&direct, "pub-fresh").await;
    let publisher = Publisher::builder(broker.clone())
        .channels(3)
        .window(10)
        .timeout(Duration::from_secs(2))
        .build()
        .expect("publisher");
    let burst = |tag: &'static str| {
        let (publisher, queue) = (publisher.clone(), queue.clone());
        async move {
            let sends =
                (0..60).map(|i| publisher.send(Message::bytes("", &queue, format!("{tag}{i}"))));
            futures_util::future::join_all(sends).await
        }
    };
    // Every channel in use, then the connection cut under them.
    assert!(burst("a").await.iter().all(Result::is_ok));
    proxy.set_down(true);
    let during = burst("b").await;
    assert!(
        during
            .iter()
            .all(|r| r.as_ref().is_err_and(|e| e.is_retryable())),
        "nothing confirmed while the broker is unreachable"
    );
    proxy.set_down(false);

    // The failed channels are replaced on use: a burst goes through again.
    let start = Instant::now();
    let recovered = loop {
        let results = burst("c").await;
        if results.iter().all(Result::is_ok) {
            break true;
        }
        if start.elapsed() > Duration::from_secs(30) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(recovered, "publishes confirmed again within 30 s");
}
