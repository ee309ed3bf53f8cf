//! One shutdown shape, against the real broker: a publisher closed with
//! 500 publishes in flight settles every one of them (confirmed, none lost,
//! none left pending) and refuses new ones at once, on every clone; a
//! flush or close that a silent broker never answers gives up within its
//! bound; a broker closed under publishes in flight fails them (and later
//! ones) instead of hanging; a spawned consumer stops cleanly when its
//! token is cancelled.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use rabbitry::{CancellationToken, Consumer, Delivery, Error, Message, Publisher};
use rabbitry_testkit::{FaultProxy, services};

/// Polls every future once, so that each publish has started (counted in)
/// before anything else happens; returns them, still running, as one.
fn started<F: std::future::Future>(
    futures: Vec<F>,
) -> std::pin::Pin<Box<futures_util::future::JoinAll<F>>> {
    let mut all = Box::pin(futures_util::future::join_all(futures));
    assert!((&mut all).now_or_never().is_none(), "still in flight");
    all
}

#[tokio::test]
async fn close_settles_every_publish_in_flight_and_refuses_new_ones() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "pub-close").await;
    let publisher = Publisher::builder(broker.clone())
        .build()
        .expect("publisher");
    let clone = publisher.clone();

    let publishes: Vec<_> = (0..500)
        .map(|i| {
            let p = publisher.clone();
            let m = Message::bytes("", &queue, format!("m{i}"));
            async move { p.publish(m).await }
        })
        .collect();
    let in_flight = started(publishes);
    let (results, closed) = tokio::join!(in_flight, publisher.close(Duration::from_secs(5)));
    closed.expect("every publish settled within the bound");
    let not_confirmed: Vec<_> = results
        .iter()
        .filter(|r| !matches!(r, Ok(o) if o.is_confirmed()))
        .map(|r| format!("{r:?}"))
        .collect();
    assert!(not_confirmed.is_empty(), "{not_confirmed:?}");
    assert_eq!(publisher.metrics().confirmed, 500);

    // Closed: refused at once, nothing sent, on the clone too.
    assert!(publisher.is_closed() && clone.is_closed());
    let refused = publisher
        .publish(Message::bytes("", &queue, "late"))
        .now_or_never()
        .expect("refused without waiting");
    assert!(matches!(refused, Err(Error::Shutdown)), "{refused:?}");
    let refused = clone
        .send(Message::bytes("", &queue, "late"))
        .now_or_never()
        .expect("refused without waiting");
    assert!(matches!(refused, Err(Error::Shutdown)), "{refused:?}");
    let refused = clone
        .send_all(&[Message::bytes("", &queue, "late")])
        .now_or_never()
        .expect("refused without waiting");
    assert!(matches!(refused[..], [Err(Error::Shutdown)]), "{refused:?}");
    // Again, from a clone: nothing left to wait for.
    tokio::time::timeout(Duration::from_secs(5), clone.close(Duration::from_secs(1)))
        .await
        .expect("a second close returns")
        .expect("nothing pending");

    let arrived = common::collect(&queue, 500, Duration::from_secs(20)).await;
    assert_eq!(arrived.len(), 500, "nothing lost, nothing late");
    broker.close().await;
}

#[tokio::test]
async fn flush_and_close_with_an_unanswered_confirm_give_up_within_their_bound() {
    let proxy = FaultProxy::start(services().amqp_addr()).await;
    let broker = common::broker_via(&proxy).await;
    let (queue, _cleanup) = common::work_queue(&broker, "pub-flush").await;
    let publisher = Publisher::builder(broker.clone())
        .channels(1)
        .timeout(Duration::from_secs(4))
        .build()
        .expect("publisher");
    publisher
        .send(Message::bytes("", &queue, "warm"))
        .await
        .expect("the channel is open and confirmed once");
    publisher
        .flush(Duration::from_secs(1))
        .await
        .expect("nothing in flight");

    proxy.set_blackhole(true);
    let unanswered = tokio::spawn({
        let p = publisher.clone();
        let m = Message::bytes("", &queue, "into the void");
        async move { p.send(m).await }
    });
    // Let the publish start.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let bound = Duration::from_millis(500);
    let began = Instant::now();
    let flushed = publisher.flush(bound).await;
    let took = began.elapsed();
    assert!(
        matches!(flushed, Err(Error::FlushTimedOut { pending: 1, timeout }) if timeout == bound),
        "{flushed:?}"
    );
    assert!(flushed.as_ref().is_err_and(Error::is_retryable));
    assert!(took < bound * 4, "gave up after {took:?}");

    // Closing gives up as well: bounded, though the broker answers nothing.
    let began = Instant::now();
    let closed = publisher.close(bound).await;
    let took = began.elapsed();
    assert!(
        matches!(closed, Err(Error::FlushTimedOut { pending: 1, .. })),
        "{closed:?}"
    );
    assert!(
        took < bound + Duration::from_secs(3),
        "closed after {took:?}"
    );

    // The publish itself ends within its own timeout; nothing stays pending.
    let sent = tokio::time::timeout(Duration::from_secs(15), unanswered)
        .await
        .expect("the publish ends")
        .expect("join");
    assert!(sent.is_err(), "no confirm came: {sent:?}");
    publisher
        .flush(Duration::from_secs(1))
        .await
        .expect("nothing left in flight");
    proxy.set_blackhole(false);
    broker.close().await;
}

#[tokio::test]
async fn closing_the_broker_under_publishes_in_flight_never_hangs_them() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "pub-broker-close").await;
    let publisher = Publisher::builder(broker.clone())
        .build()
        .expect("publisher");
    publisher
        .send(Message::bytes("", &queue, "warm"))
        .await
        .expect("channels open");

    let publishes: Vec<_> = (0..300)
        .map(|i| publisher.send(Message::bytes("", &queue, format!("m{i}"))))
        .collect();
    let in_flight = started(publishes);
    let (results, ()) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(in_flight, broker.close())
    })
    .await
    .expect("every publish ends, none hangs");
    for r in &results {
        assert!(
            matches!(r, Ok(()) | Err(Error::ConnectionLost { .. })),
            "{r:?}"
        );
    }
    // As for a broker that is down: failed at once, deferred where there
    // is an outbox.
    let after = tokio::time::timeout(
        Duration::from_secs(5),
        publisher.send(Message::bytes("", &queue, "after")),
    )
    .await
    .expect("fails without waiting");
    assert!(
        matches!(after, Err(Error::ConnectionLost { .. })),
        "{after:?}"
    );
}

#[tokio::test]
async fn a_spawned_consumer_stops_when_its_token_is_cancelled() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "consumer-spawn").await;
    common::publish_n(&broker, &queue, 20).await;
    let handled = Arc::new(AtomicUsize::new(0));
    let shutdown_timeout = Duration::from_secs(2);
    let consumer = Consumer::builder(broker.clone(), &queue)
        .concurrency(2)
        .shutdown_timeout(shutdown_timeout)
        .build()
        .expect("consumer");
    let shutdown = CancellationToken::new();
    let task = consumer.spawn(
        {
            let handled = handled.clone();
            move |_d: Delivery| {
                let handled = handled.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    handled.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            }
        },
        shutdown.clone(),
    );
    let h = handled.clone();
    assert!(
        common::eventually(Duration::from_secs(20), || {
            let h = h.clone();
            async move { h.load(Ordering::SeqCst) >= 2 }
        })
        .await,
        "the spawned consumer handles deliveries"
    );
    shutdown.cancel();
    // Handlers finish within the shutdown timeout; settling and closing
    // the channel take at most a few operation timeouts more.
    tokio::time::timeout(shutdown_timeout + Duration::from_secs(15), task)
        .await
        .expect("stops within its shutdown bound")
        .expect("join")
        .expect("run returns Ok");
    // Every delivery was settled: the handled ones acked, the rest given
    // back to the queue.
    let done = handled.load(Ordering::SeqCst);
    let left = common::collect(&queue, (20 - done) as u32, Duration::from_secs(20)).await;
    assert_eq!(left.len(), 20 - done, "{done} handled");
    broker.close().await;
}

#[tokio::test]
async fn a_publish_waiting_for_a_channel_when_close_gives_up_goes_to_the_outbox() {
    let proxy = FaultProxy::start(services().amqp_addr()).await;
    let broker = common::broker_via(&proxy).await;
    let (queue, _cleanup) = common::work_queue(&broker, "pub-close-wait").await;
    let (_db, store) = common::outbox().await;
    let publisher = Publisher::builder(broker.clone())
        .channels(1)
        .window(1)
        .timeout(Duration::from_secs(10))
        .outbox(store.clone())
        .build()
        .expect("publisher");
    publisher
        .send(Message::bytes("", &queue, "warm"))
        .await
        .expect("the channel is open and confirmed once");

    proxy.set_blackhole(true);
    // The first takes the window's one place and is never answered; the
    // second is admitted (counted in) and waits for room.
    let first = spawn_publish(&publisher, &queue, "holds the window");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = spawn_publish(&publisher, &queue, "waits for room");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let closed = publisher.close(Duration::from_millis(300)).await;
    assert!(
        matches!(closed, Err(Error::FlushTimedOut { pending: 2, .. })),
        "{closed:?}"
    );

    // Admitted before the close, so never refused as `Shutdown`: the
    // broker could not be used, and the outbox took it.
    for (name, handle) in [("first", first), ("second", second)] {
        let outcome = tokio::time::timeout(Duration::from_secs(20), handle)
            .await
            .expect("the publish ends")
            .expect("join");
        assert!(
            matches!(outcome, Ok(rabbitry::PublishOutcome::Deferred { .. })),
            "{name}: {outcome:?}"
        );
    }
    assert_eq!(store.stats().await.expect("stats").pending, 2);
}

/// Publishes `body` to `queue` on a task of its own.
fn spawn_publish(
    publisher: &Publisher,
    queue: &str,
    body: &'static str,
) -> tokio::task::JoinHandle<rabbitry::Result<rabbitry::PublishOutcome>> {
    let p = publisher.clone();
    let m = Message::bytes("", queue, body);
    tokio::spawn(async move { p.publish(m).await })
}
