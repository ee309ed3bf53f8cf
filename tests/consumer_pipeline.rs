//! The consumer pipeline from a service's side: layers around the handler,
//! dispositions a handler asks for, its attempt number, the handler timeout,
//! a panicking handler, manual settling, and a dispatch strategy of one's
//! own. Against the real broker.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rabbitry::lapin::types::AMQPValue;
use rabbitry::{
    AckMode, BoxFuture, Concurrent, Consumer, ConsumerBuilder, Delivery, Dispatch, Disposition,
    Handler, HandlerError, Message, Next, Publisher, RetryPolicy, Slot,
};
use tokio_util::sync::CancellationToken;

struct Running {
    consumer: Consumer,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<rabbitry::Result<()>>,
}

fn start(builder: ConsumerBuilder, handler: impl Handler) -> Running {
    let consumer = builder.build().expect("consumer");
    let shutdown = CancellationToken::new();
    let task = {
        let (consumer, shutdown) = (consumer.clone(), shutdown.clone());
        tokio::spawn(async move { consumer.run(handler, shutdown).await })
    };
    Running {
        consumer,
        shutdown,
        task,
    }
}

async fn send(broker: &rabbitry::Broker, queue: &str, messages: Vec<Message>) {
    let publisher = Publisher::builder(broker.clone())
        .build()
        .expect("publisher");
    for m in messages {
        let m = Message::from_parts("", queue, m.payload().to_vec(), m.properties().clone());
        publisher.send(m).await.expect("published");
    }
}

fn text(d: &rabbitry::lapin::message::Delivery, name: &str) -> Option<String> {
    let headers = d.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

async fn eventually(limit_secs: u64, check: impl Fn() -> bool) -> bool {
    common::eventually(Duration::from_secs(limit_secs), || {
        let ok = check();
        async move { ok }
    })
    .await
}

#[tokio::test]
async fn a_layer_short_circuits_and_runs_once_per_attempt_inside_the_retries() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "pipe-layer").await;
    let layer_runs = Arc::new(AtomicUsize::new(0));
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let (runs, seen) = (layer_runs.clone(), attempts.clone());
    let builder = Consumer::builder(broker.clone(), &queue)
        .retry(
            RetryPolicy::default()
                .immediate(2)
                .immediate_backoff(Duration::from_millis(10)),
        )
        .layer(|d: Delivery, next: Next| async move {
            match d.header("tenant").and_then(|t| t.as_str()) {
                Some("acme") => next.run(d).await,
                _ => Disposition::dead_letter("unknown tenant"),
            }
        })
        .layer(move |d: Delivery, next: Next| {
            runs.fetch_add(1, Ordering::SeqCst);
            next.run(d)
        });
    let running = start(builder, move |d: Delivery| {
        let seen = seen.clone();
        async move {
            seen.lock().expect("lock").push(d.attempt());
            if d.attempt() < 2 {
                return Err(HandlerError::retryable("flaky"));
            }
            Ok(())
        }
    });
    send(
        &broker,
        &queue,
        vec![
            Message::bytes("", "", "a").header("tenant", "acme"),
            Message::bytes("", "", "b").header("tenant", "other"),
        ],
    )
    .await;
    let dead = common::collect(&format!("{queue}.dlq"), 1, Duration::from_secs(30)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].data, b"b");
    assert_eq!(
        text(&dead[0], "x-exception-message").as_deref(),
        Some("unknown tenant")
    );
    let c = running.consumer.clone();
    assert!(eventually(30, || c.metrics().succeeded == 1).await);
    assert_eq!(
        *attempts.lock().expect("lock"),
        [1, 2],
        "the handler saw its attempts"
    );
    assert_eq!(
        layer_runs.load(Ordering::SeqCst),
        2,
        "the inner layer ran per attempt"
    );
    common::stop_consumer(running.shutdown, running.task).await;
}

#[tokio::test]
async fn a_handler_that_asks_for_a_delay_gets_the_message_back_no_earlier() {
    let broker = common::broker().await;
    let (queue, mut cleanup) = common::work_queue(&broker, "pipe-after").await;
    cleanup.queue(format!("{queue}.retry.2000ms"));
    let seen = Arc::new(Mutex::new(Vec::<(u32, Instant)>::new()));
    let record = seen.clone();
    let running = start(
        Consumer::builder(broker.clone(), &queue),
        move |d: Delivery| {
            let record = record.clone();
            async move {
                record
                    .lock()
                    .expect("lock")
                    .push((d.attempt(), Instant::now()));
                if d.attempt() == 1 {
                    return Err(
                        HandlerError::retryable("rate limited").after(Duration::from_millis(1500))
                    );
                }
                Ok(())
            }
        },
    );
    send(&broker, &queue, vec![Message::bytes("", "", "x")]).await;
    let c = running.consumer.clone();
    assert!(eventually(30, || c.metrics().succeeded == 1).await);
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(
        seen.len(),
        2,
        "no in-process retry before the delay: {seen:?}"
    );
    assert_eq!(seen[1].0, 2, "attempt 2: one run came before");
    assert!(
        seen[1].1 - seen[0].1 >= Duration::from_millis(1500),
        "never early"
    );
    assert_eq!(running.consumer.metrics().delayed_retries, 1);
    common::stop_consumer(running.shutdown, running.task).await;
}

#[tokio::test]
async fn a_requeue_comes_back_counted_by_the_broker() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "pipe-requeue").await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let running = start(
        Consumer::builder(broker.clone(), &queue),
        move |d: Delivery| {
            let record = record.clone();
            async move {
                record
                    .lock()
                    .expect("lock")
                    .push((d.attempt(), d.delivery_count()));
                if d.attempt() == 1 {
                    return Err(HandlerError::requeue("not yet"));
                }
                Ok(())
            }
        },
    );
    send(&broker, &queue, vec![Message::bytes("", "", "x")]).await;
    let c = running.consumer.clone();
    assert!(eventually(30, || c.metrics().succeeded == 1).await);
    assert_eq!(*seen.lock().expect("lock"), [(1, 0), (2, 1)]);
    assert_eq!(running.consumer.metrics().requeued, 1);
    common::stop_consumer(running.shutdown, running.task).await;
}

#[tokio::test]
async fn a_hung_handler_is_stopped_at_its_timeout_and_the_queue_keeps_flowing() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "pipe-hung").await;
    let builder = Consumer::builder(broker.clone(), &queue)
        .concurrency(1)
        .retry(RetryPolicy::none())
        .handler_timeout(Some(Duration::from_millis(300)));
    let running = start(builder, |d: Delivery| async move {
        if d.payload() == b"hang" {
            std::future::pending::<()>().await;
        }
        Ok(())
    });
    send(
        &broker,
        &queue,
        vec![Message::bytes("", "", "hang"), Message::bytes("", "", "ok")],
    )
    .await;
    let dead = common::collect(&format!("{queue}.dlq"), 1, Duration::from_secs(30)).await;
    assert_eq!(dead[0].data, b"hang");
    assert!(text(&dead[0], "x-exception-message").is_some_and(|t| t.contains("timed out")));
    let c = running.consumer.clone();
    assert!(
        eventually(30, || c.metrics().succeeded == 1).await,
        "the next message ran"
    );
    assert_eq!(running.consumer.metrics().timed_out, 1);
    common::stop_consumer(running.shutdown, running.task).await;
}

/// A handler whose closure panics before it returns its future.
struct PanicsFirst(AtomicUsize);

impl Handler for PanicsFirst {
    fn handle(&self, _d: Delivery) -> BoxFuture<'static, rabbitry::HandlerResult> {
        if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("a bug in the handler");
        }
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test]
async fn a_handler_that_panics_outside_its_future_is_retried_not_fatal() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "pipe-panic").await;
    let builder = Consumer::builder(broker.clone(), &queue).retry(
        RetryPolicy::default()
            .immediate(1)
            .immediate_backoff(Duration::from_millis(10)),
    );
    let running = start(builder, PanicsFirst(AtomicUsize::new(0)));
    send(&broker, &queue, vec![Message::bytes("", "", "x")]).await;
    let c = running.consumer.clone();
    assert!(eventually(30, || c.metrics().succeeded == 1).await);
    assert_eq!(running.consumer.metrics().failed_attempts, 1);
    assert_eq!(running.consumer.state(), rabbitry::ConsumerState::Consuming);
    common::stop_consumer(running.shutdown, running.task).await;
}

#[tokio::test]
async fn a_manual_handler_settles_with_a_disposition_once() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "pipe-manual").await;
    let second = Arc::new(Mutex::new(None));
    let record = second.clone();
    let builder = Consumer::builder(broker.clone(), &queue).ack_mode(AckMode::Manual);
    let running = start(builder, move |d: Delivery| {
        let record = record.clone();
        async move {
            d.settle(Disposition::dead_letter("refused by hand"))
                .await?;
            let again = d.settle(Disposition::Ack).await;
            *record.lock().expect("lock") = Some(again.is_err());
            Ok(())
        }
    });
    send(&broker, &queue, vec![Message::bytes("", "", "x")]).await;
    let dead = common::collect(&format!("{queue}.dlq"), 1, Duration::from_secs(30)).await;
    assert_eq!(
        text(&dead[0], "x-exception-message").as_deref(),
        Some("refused by hand")
    );
    assert_eq!(
        *second.lock().expect("lock"),
        Some(true),
        "a second settle is refused"
    );
    common::stop_consumer(running.shutdown, running.task).await;
    assert_eq!(
        rabbitry_testkit::queue_depth(&queue).await,
        Some(0),
        "the delivery was acked"
    );
}

/// A strategy of one's own: counts admissions, one handler at a time.
struct Counted {
    admitted: Arc<AtomicUsize>,
    inner: Concurrent,
}

impl Dispatch for Counted {
    fn admit(&self, delivery: &Delivery) -> BoxFuture<'static, Slot> {
        self.admitted.fetch_add(1, Ordering::SeqCst);
        self.inner.admit(delivery)
    }
}

#[tokio::test]
async fn a_dispatch_strategy_decides_when_handlers_start() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "pipe-dispatch").await;
    let admitted = Arc::new(AtomicUsize::new(0));
    let (running_now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let strategy = Counted {
        admitted: admitted.clone(),
        inner: Concurrent::new(1),
    };
    let (now, max) = (running_now.clone(), most.clone());
    let running = start(
        Consumer::builder(broker.clone(), &queue)
            .prefetch(10)
            .dispatch(strategy),
        move |_d: Delivery| {
            let (now, max) = (now.clone(), max.clone());
            async move {
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        },
    );
    send(
        &broker,
        &queue,
        (0..10)
            .map(|i| Message::bytes("", "", format!("{i}")))
            .collect(),
    )
    .await;
    let c = running.consumer.clone();
    assert!(eventually(30, || c.metrics().succeeded == 10).await);
    assert_eq!(admitted.load(Ordering::SeqCst), 10);
    assert_eq!(most.load(Ordering::SeqCst), 1, "one at a time");
    common::stop_consumer(running.shutdown, running.task).await;
}

/// On the multi-threaded runtime services use: a task spawned last may run
/// first there, so admission order must not depend on task order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_of_one_handles_in_the_order_the_broker_sent() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "pipe-order").await;
    send(
        &broker,
        &queue,
        (0..200)
            .map(|i| Message::bytes("", "", format!("{i}")))
            .collect(),
    )
    .await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let record = order.clone();
    let running = start(
        Consumer::builder(broker.clone(), &queue)
            .prefetch(100)
            .concurrency(1),
        move |d: Delivery| {
            let record = record.clone();
            async move {
                let n: u32 = String::from_utf8_lossy(d.payload())
                    .parse()
                    .unwrap_or(u32::MAX);
                record.lock().expect("lock").push(n);
                Ok(())
            }
        },
    );
    let c = running.consumer.clone();
    assert!(eventually(60, || c.metrics().succeeded == 200).await);
    let order = order.lock().expect("lock").clone();
    assert_eq!(order, (0..200).collect::<Vec<u32>>());
    common::stop_consumer(running.shutdown, running.task).await;
}

#[tokio::test]
async fn a_handler_still_running_at_the_shutdown_timeout_is_stopped_and_its_message_given_back() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "pipe-stop").await;
    let builder = Consumer::builder(broker.clone(), &queue)
        .shutdown_timeout(Duration::from_millis(300))
        .handler_timeout(None);
    let running = start(builder, |_d: Delivery| async {
        std::future::pending::<()>().await;
        Ok(())
    });
    send(&broker, &queue, vec![Message::bytes("", "", "stuck")]).await;
    let c = running.consumer.clone();
    assert!(eventually(30, || c.metrics().delivered == 1).await);
    let started = Instant::now();
    common::stop_consumer(running.shutdown, running.task).await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "shutdown is bounded: {:?}",
        started.elapsed()
    );
    assert_eq!(
        rabbitry_testkit::queue_depth(&queue).await,
        Some(1),
        "given back, not lost"
    );
    assert_eq!(
        rabbitry_testkit::queue_depth(&format!("{queue}.dlq")).await,
        Some(0),
        "not dead-lettered"
    );
}
