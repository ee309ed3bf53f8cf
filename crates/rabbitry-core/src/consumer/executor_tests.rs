//! The executor and the chain around the handler, without a broker: a
//! recording sink and paused time.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::consumer::builtin::{first_attempt, immediate_retries, poison_guard};
use crate::consumer::layer::Chain;
use crate::consumer::{HandlerError, HandlerResult, headers};
use crate::header::HeaderValue;
use crate::message::Message;

#[derive(Default)]
struct Recorder {
    sent: Mutex<Vec<Message>>,
    declared: Mutex<Vec<String>>,
    /// Sends that fail (as a broker outage) before they succeed.
    failures: AtomicU32,
    /// Every send and declaration is refused (as a hostile message would be).
    refuse: std::sync::atomic::AtomicBool,
}

fn refused() -> Error {
    Error::InvalidMessage {
        reason: "a header name over 255 bytes".into(),
    }
}

impl Sink for Recorder {
    fn send(&self, message: Message) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if self.refuse.load(Ordering::SeqCst) {
                return Err(refused());
            }
            let left = self.failures.load(Ordering::SeqCst);
            if left > 0 {
                self.failures.store(left - 1, Ordering::SeqCst);
                return Err(Error::ConnectionLost {
                    operation: "publish",
                    reason: "test".into(),
                });
            }
            self.sent.lock().expect("lock").push(message);
            Ok(())
        })
    }
    fn declare(&self, topology: Topology) -> BoxFuture<'_, Result<()>> {
        let names: Vec<String> = topology.queues().map(|q| q.name().to_owned()).collect();
        Box::pin(async move {
            if self.refuse.load(Ordering::SeqCst) {
                return Err(refused());
            }
            self.declared.lock().expect("lock").extend(names);
            Ok(())
        })
    }
}

fn policy() -> RetryPolicy {
    RetryPolicy::default()
        .immediate(2)
        .immediate_backoff(Duration::from_millis(100))
        .delays([Duration::from_secs(1), Duration::from_secs(10)])
}

fn executor(sink: Arc<Recorder>) -> Executor {
    Executor::new(
        sink,
        "orders".into(),
        "orders.dlx".into(),
        "billing".into(),
        policy(),
        Arc::new(Counters::default()),
        true,
    )
}

fn delivery(headers: &[(&str, HeaderValue)]) -> Delivery {
    let mut m = Message::bytes("shop", "order.created", "{}");
    for (k, v) in headers {
        m = m.header(*k, v.clone());
    }
    let d = Delivery::for_test("order.created", "{}", m.properties().clone());
    d.set_attempt(first_attempt(&d, &policy()));
    d
}

/// Runs the handler's results in turn through the built-in layers, as auto
/// mode does; returns the final disposition and the handler runs.
async fn run_chain(results: Vec<HandlerResult>, d: Delivery) -> (Disposition, u32) {
    let results = Arc::new(Mutex::new(results.into_iter()));
    let runs = Arc::new(AtomicU32::new(0));
    let (r, n) = (results.clone(), runs.clone());
    let handler = move |_d: Delivery| {
        n.fetch_add(1, Ordering::SeqCst);
        let next = r.lock().expect("lock").next().unwrap_or(Ok(()));
        async move { next }
    };
    let chain = Chain::new(
        vec![poison_guard(10), immediate_retries(policy())],
        Arc::new(handler),
        Some(Duration::from_secs(5)),
        Arc::new(Counters::default()),
    );
    let disposition = chain.start().run(d).await;
    (disposition, runs.load(Ordering::SeqCst))
}

#[tokio::test(start_paused = true)]
async fn immediate_retries_pause_100_then_200_ms_then_hand_over_the_retry() {
    let fail = || Err(HandlerError::retryable("db down"));
    let started = tokio::time::Instant::now();
    let d = delivery(&[]);
    let (disposition, runs) = run_chain(vec![fail(), fail(), fail()], d.clone()).await;
    assert_eq!(runs, 3);
    assert_eq!(disposition, Disposition::retry("db down"));
    assert_eq!(started.elapsed(), Duration::from_millis(300));
    assert_eq!(d.attempt(), 3, "the handler saw attempts 1, 2, 3");

    let (disposition, runs) = run_chain(vec![fail(), Ok(())], delivery(&[])).await;
    assert_eq!((disposition, runs), (Disposition::Ack, 2));
}

#[tokio::test(start_paused = true)]
async fn a_hung_handler_times_out_and_a_panic_is_a_retryable_failure() {
    let chain = Chain::new(
        vec![],
        Arc::new(|_d: Delivery| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            HandlerResult::Ok(())
        }),
        Some(Duration::from_secs(5)),
        Arc::new(Counters::default()),
    );
    let started = tokio::time::Instant::now();
    let disposition = chain.start().run(delivery(&[])).await;
    assert!(
        matches!(disposition, Disposition::Retry { ref reason, .. } if reason.contains("timed out"))
    );
    assert_eq!(started.elapsed(), Duration::from_secs(5));

    // Panics while building the future, and while running it.
    let sync_panic = |_d: Delivery| -> std::future::Ready<HandlerResult> { panic!("at once") };
    let chain = Chain::new(
        vec![],
        Arc::new(sync_panic),
        None,
        Arc::new(Counters::default()),
    );
    let disposition = chain.start().run(delivery(&[])).await;
    assert!(
        matches!(disposition, Disposition::Retry { ref reason, .. } if reason.contains("at once"))
    );
    let async_panic = |_d: Delivery| async { panic!("later") };
    let chain = Chain::new(
        vec![],
        Arc::new(async_panic),
        None,
        Arc::new(Counters::default()),
    );
    let disposition = chain.start().run(delivery(&[])).await;
    assert!(
        matches!(disposition, Disposition::Retry { ref reason, .. } if reason.contains("later"))
    );
}

#[tokio::test(start_paused = true)]
async fn the_poison_guard_trusts_only_a_broker_count() {
    // A first delivery whose publisher wrote the count header: not a count.
    let forged = delivery(&[("x-delivery-count", HeaderValue::Int(99))]);
    let (disposition, runs) = run_chain(vec![Ok(())], forged).await;
    assert_eq!((disposition, runs), (Disposition::Ack, 1));
}

#[tokio::test(start_paused = true)]
async fn a_retry_goes_to_the_next_delay_queue_with_its_count_and_origin() {
    let sink = Arc::new(Recorder::default());
    let ex = executor(sink.clone());
    let decision = ex
        .execute(&delivery(&[]), Disposition::retry("db down"))
        .await;
    assert_eq!(decision, Decision::Ack);
    let sent = sink.sent.lock().expect("lock");
    assert_eq!(sent[0].routing_key(), "orders.retry.1000ms");
    let h = &sent[0].properties().headers;
    assert_eq!(h["x-rabbitry-retries"].as_i64(), Some(1));
    assert_eq!(
        h[headers::ORIGINAL_ROUTING_KEY].as_str(),
        Some("order.created")
    );
    assert!(
        sink.declared.lock().expect("lock").is_empty(),
        "the policy's queues exist"
    );
}

#[tokio::test(start_paused = true)]
async fn retries_used_up_end_in_the_error_exchange_with_the_attempt_count() {
    let sink = Arc::new(Recorder::default());
    let ex = executor(sink.clone());
    let d = delivery(&[("x-rabbitry-retries", HeaderValue::Int(2))]);
    assert_eq!(
        d.attempt(),
        7,
        "two delayed retries of three runs each came before"
    );
    let decision = ex.execute(&d, Disposition::retry("still down")).await;
    assert_eq!(decision, Decision::Ack);
    let sent = sink.sent.lock().expect("lock");
    assert_eq!(sent[0].exchange_name(), "orders.dlx");
    let h = &sent[0].properties().headers;
    assert_eq!(h[headers::EXCEPTION_KIND].as_str(), Some("retryable"));
    assert_eq!(h[headers::ATTEMPTS].as_i64(), Some(7));
    assert_eq!(h[headers::CONSUMER].as_str(), Some("billing"));
}

#[tokio::test(start_paused = true)]
async fn an_asked_delay_declares_its_queue_once() {
    let sink = Arc::new(Recorder::default());
    let ex = executor(sink.clone());
    for _ in 0..3 {
        let asked = Disposition::retry_after(Duration::from_millis(2400), "busy");
        assert_eq!(ex.execute(&delivery(&[]), asked).await, Decision::Ack);
    }
    assert_eq!(
        *sink.declared.lock().expect("lock"),
        ["orders.retry.3000ms"]
    );
    assert!(
        sink.sent
            .lock()
            .expect("lock")
            .iter()
            .all(|m| m.routing_key() == "orders.retry.3000ms")
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_republish_is_tried_three_times_then_the_delivery_is_given_back() {
    let sink = Arc::new(Recorder::default());
    sink.failures.store(2, Ordering::SeqCst);
    let ex = executor(sink.clone());
    let started = tokio::time::Instant::now();
    let decision = ex
        .execute(&delivery(&[]), Disposition::dead_letter("bad"))
        .await;
    assert_eq!(decision, Decision::Ack, "the third try went through");
    assert_eq!(started.elapsed(), Duration::from_millis(750));

    sink.failures.store(3, Ordering::SeqCst);
    let started = tokio::time::Instant::now();
    let decision = ex
        .execute(&delivery(&[]), Disposition::dead_letter("bad"))
        .await;
    assert_eq!(decision, Decision::GiveBack, "never acked unless confirmed");
    assert_eq!(started.elapsed(), Duration::from_millis(750 + 1000));
    assert_eq!(sink.sent.lock().expect("lock").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn ordered_a_failing_dead_letter_republish_is_tried_in_place_until_stale_or_stopped() {
    use std::sync::atomic::AtomicBool;
    use tokio_util::sync::CancellationToken;

    let sink = Arc::new(Recorder::default());
    let stop = CancellationToken::new();
    let ex = executor(sink.clone()).in_place(stop.clone());
    // Far more failures than the three tries: still dead-lettered, never
    // given back (which would let the key's next message overtake it).
    sink.failures.store(20, Ordering::SeqCst);
    let decision = ex
        .execute(&delivery(&[]), Disposition::dead_letter("bad"))
        .await;
    assert_eq!(decision, Decision::Ack);
    assert_eq!(sink.sent.lock().expect("lock").len(), 1);

    // The channel is lost meanwhile: given back, no copy.
    let alive = Arc::new(AtomicBool::new(true));
    let a = alive.clone();
    let d = delivery(&[]).with_alive(Arc::new(move || a.load(Ordering::SeqCst)));
    sink.failures.store(u32::MAX, Ordering::SeqCst);
    let lose = async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        alive.store(false, Ordering::SeqCst);
    };
    let (decision, ()) = tokio::join!(ex.execute(&d, Disposition::dead_letter("bad")), lose);
    assert_eq!(decision, Decision::GiveBack);
    // Lost before it starts: no copy is even tried.
    sink.failures.store(0, Ordering::SeqCst);
    let decision = ex.execute(&d, Disposition::dead_letter("bad")).await;
    assert_eq!(decision, Decision::GiveBack);
    assert_eq!(sink.sent.lock().expect("lock").len(), 1);

    // Handlers stopped (the shutdown timeout): given back.
    sink.failures.store(u32::MAX, Ordering::SeqCst);
    let stopping = async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        stop.cancel();
    };
    let d = delivery(&[]);
    let (decision, ()) = tokio::join!(ex.execute(&d, Disposition::dead_letter("bad")), stopping);
    assert_eq!(decision, Decision::GiveBack);
    assert_eq!(sink.sent.lock().expect("lock").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_requeue_is_the_counting_verb() {
    let sink = Arc::new(Recorder::default());
    let ex = executor(sink.clone());
    assert_eq!(
        ex.execute(&delivery(&[]), Disposition::Requeue).await,
        Decision::Requeue
    );
    assert_eq!(
        ex.execute(&delivery(&[]), Disposition::Ack).await,
        Decision::Ack
    );
    assert!(sink.sent.lock().expect("lock").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_copy_the_broker_can_never_take_is_rejected_not_given_back_forever() {
    let sink = Arc::new(Recorder::default());
    sink.refuse.store(true, Ordering::SeqCst);
    let ex = executor(sink.clone());
    let decision = ex
        .execute(&delivery(&[]), Disposition::dead_letter("bad"))
        .await;
    assert_eq!(
        decision,
        Decision::Reject,
        "the broker dead-letters it itself"
    );

    // A delay queue that cannot be declared ends the retries, the same way.
    let asked = Disposition::retry_after(Duration::from_secs(7), "busy");
    assert_eq!(ex.execute(&delivery(&[]), asked).await, Decision::Reject);
}

#[tokio::test(start_paused = true)]
async fn a_foreign_original_routing_key_too_long_for_amqp_is_not_used() {
    let sink = Arc::new(Recorder::default());
    let ex = executor(sink.clone());
    let long = "k".repeat(300);
    let d = delivery(&[(headers::ORIGINAL_ROUTING_KEY, HeaderValue::Str(long))]);
    assert_eq!(
        ex.execute(&d, Disposition::dead_letter("bad")).await,
        Decision::Ack
    );
    assert_eq!(
        sink.sent.lock().expect("lock")[0].routing_key(),
        "order.created"
    );
}

#[tokio::test(start_paused = true)]
async fn attempts_go_on_counting_across_an_asked_delay() {
    let sink = Arc::new(Recorder::default());
    let ex = executor(sink.clone());
    let d = delivery(&[]);
    let asked = Disposition::retry_after(Duration::from_secs(1), "busy");
    assert_eq!(ex.execute(&d, asked).await, Decision::Ack);
    let sent = sink.sent.lock().expect("lock")[0].clone();
    let back = Delivery::for_test("orders", "{}", sent.properties().clone());
    assert_eq!(
        first_attempt(&back, &policy()),
        2,
        "one run before, not three"
    );
}
