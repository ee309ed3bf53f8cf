//! No Postgres call hangs: a Postgres that stops answering (a blackholing
//! proxy: connections accepted, nothing answered) makes each call fail
//! within its bound, and the relay resumes once Postgres answers again.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rabbitry_core::{Message, Outbox, Publisher};
use rabbitry_postgres::{OutboxStore, Relay, RelayConfig};
use rabbitry_testkit::{collect, eventually, message_ids};
use tokio_util::sync::CancellationToken;

/// What a caller may wait beyond a bound: scheduling, a connect, a log line.
const SLACK: Duration = Duration::from_secs(2);

/// Guards a call that must not hang, so that a regression fails instead of
/// stalling the test run.
async fn guarded<T>(what: &str, fut: impl std::future::Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} still had not returned after 30 s"));
    (out, started.elapsed())
}

fn outage() -> rabbitry_core::Error {
    rabbitry_core::Error::ConnectionLost {
        operation: "basic.publish",
        reason: "test".into(),
    }
}

#[tokio::test]
async fn a_defer_returns_within_its_bound_when_postgres_stops_answering() {
    let (db, _direct) = support::database().await;
    let bound = Duration::from_secs(1);
    let (proxy, store) = support::proxied_store(
        &db,
        OutboxStore::builder()
            .defer_timeout(bound)
            .call_timeout(bound)
            .acquire_timeout(bound),
    )
    .await;
    store.stats().await.expect("answers before the blackhole");

    proxy.set_blackhole(true);
    let msg = Message::bytes("", "q", "x");
    let (result, took) = guarded("defer", store.defer(&msg, &outage())).await;
    assert!(result.is_err(), "nothing can be stored: {result:?}");
    assert!(
        took <= bound + SLACK,
        "defer took {took:?}, bound {bound:?}"
    );

    // The pool's other calls are bounded the same way, on fresh
    // connections (accepted, never answered) as on the open one.
    let (result, took) = guarded("stats", store.stats()).await;
    let err = result.expect_err("stats cannot be read");
    assert!(err.is_retryable(), "{err:?}");
    assert!(took <= bound + SLACK, "stats took {took:?}");

    proxy.set_blackhole(false);
    assert!(
        eventually(Duration::from_secs(15), || async {
            store.defer(&msg, &outage()).await.is_ok()
        })
        .await,
        "the store works again once Postgres answers"
    );
}

#[tokio::test]
async fn a_publish_returns_within_its_bounds_when_the_broker_is_down_and_postgres_blackholed() {
    let (db, _direct) = support::database().await;
    let defer_bound = Duration::from_secs(1);
    let (proxy, store) =
        support::proxied_store(&db, OutboxStore::builder().defer_timeout(defer_bound)).await;
    store.stats().await.expect("answers before the blackhole");
    // A broker that refuses connections at once.
    let broker_proxy =
        rabbitry_testkit::FaultProxy::start(rabbitry_testkit::services().amqp_addr()).await;
    broker_proxy.set_down(true);
    let publish_timeout = Duration::from_secs(1);
    let publisher = Publisher::builder(support::proxied_broker(&broker_proxy))
        .timeout(publish_timeout)
        .outbox(store)
        .build()
        .expect("publisher");

    proxy.set_blackhole(true);
    let (result, took) = guarded("publish", publisher.publish(Message::bytes("", "q", "x"))).await;
    let err = result.expect_err("neither sent nor stored");
    assert!(
        matches!(err, rabbitry_core::Error::OutboxFailed { .. }),
        "{err:?}"
    );
    let bound = publish_timeout + defer_bound;
    assert!(
        took <= bound + SLACK,
        "publish took {took:?}, bounds {bound:?}"
    );
}

#[tokio::test]
async fn the_relay_keeps_failing_fast_while_postgres_is_blackholed_and_delivers_once_it_answers() {
    let (db, direct) = support::database().await;
    let broker = support::broker().await;
    let (queue, _cleanup) = support::queue(&broker, "pg-blackhole").await;
    let mut sent = HashSet::new();
    for i in 0..20 {
        let msg = Message::bytes("", &queue, format!("m{i}"));
        sent.insert(msg.id().to_owned());
        direct.enqueue(&msg).await.expect("enqueue");
    }
    let bound = Duration::from_secs(1);
    let (proxy, store) = support::proxied_store(
        &db,
        OutboxStore::builder()
            .call_timeout(bound)
            .acquire_timeout(bound),
    )
    .await;
    store.stats().await.expect("answers before the blackhole");
    proxy.set_blackhole(true);

    let relay = Relay::new(
        store,
        Publisher::builder(broker.clone())
            .build()
            .expect("publisher"),
        RelayConfig::default()
            .poll_interval(Duration::from_millis(50))
            .listen(false)
            .concurrency(2),
    )
    .expect("relay");
    let shutdown = CancellationToken::new();
    let task = relay.spawn(shutdown.clone());

    // Workers stuck on a silent connection would never report an error.
    assert!(
        eventually(Duration::from_secs(20), || async {
            relay.metrics().batch_errors >= 4
        })
        .await,
        "the relay's batches fail within their bound: {:?}",
        relay.metrics()
    );
    assert_eq!(relay.metrics().published, 0);

    proxy.set_blackhole(false);
    let got = collect(&queue, 20, Duration::from_secs(30)).await;
    let ids: HashSet<String> = message_ids(&got).into_iter().collect();
    assert_eq!(ids, sent, "every row delivered once Postgres answers");
    assert!(
        eventually(Duration::from_secs(10), || async {
            direct.stats().await.is_ok_and(|s| s.pending == 0)
        })
        .await,
        "and removed from the outbox"
    );
    shutdown.cancel();
    let (joined, _) = guarded("relay shutdown", task).await;
    joined.expect("join").expect("relay stops cleanly");
}

#[tokio::test]
async fn rows_claimed_by_a_session_that_went_silent_become_claimable_again() {
    let (db, direct) = support::database().await;
    let broker = support::broker().await;
    let (queue, _cleanup) = support::queue(&broker, "pg-silent-claim").await;
    let msg = Message::bytes("", &queue, "held");
    direct.enqueue(&msg).await.expect("enqueue");
    let (proxy, store) = support::proxied_store(
        &db,
        OutboxStore::builder().idle_in_transaction_timeout(Duration::from_secs(1)),
    )
    .await;

    // A relay's claim on the proxied session: the row is locked, and then
    // its client goes silent (a half-open connection).
    let mut claim = store.pool().begin().await.expect("begin");
    let locked: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM rabbitry_outbox FOR UPDATE SKIP LOCKED")
            .fetch_all(&mut *claim)
            .await
            .expect("claim");
    assert_eq!(locked.len(), 1);
    proxy.set_blackhole(true);

    let relay = Relay::new(
        direct.clone(),
        Publisher::builder(broker.clone())
            .build()
            .expect("publisher"),
        RelayConfig::default(),
    )
    .expect("relay");
    // The server ends the silent session after idle_in_transaction_timeout
    // and its lock goes with it; without that setting the row stays locked
    // for as long as the proxy keeps the connection open.
    assert!(
        eventually(Duration::from_secs(20), || async {
            relay.run_batch().await.is_ok_and(|r| r.published == 1)
        })
        .await,
        "another relay claims and publishes the row"
    );
    assert_eq!(
        message_ids(&collect(&queue, 1, Duration::from_secs(5)).await),
        vec![msg.id().to_owned()]
    );
    drop(claim);
}
