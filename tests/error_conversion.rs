//! One error for `?`: a service's whole life (broker, publisher, outbox,
//! Redis store, consumer, relay, their join handles) in one function
//! returning `rabbitry::Result`, against the real services. A store's
//! failure comes back as `Error::Store`, retryable as the store said, with
//! the store's own error reachable by `downcast_ref`, and no password.

mod common;

use std::error::Error as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rabbitry::postgres::{OutboxStore, Relay, RelayConfig};
use rabbitry::{
    Broker, CancellationToken, Consumer, Delivery, Error, Idempotency, Message, Publisher,
    RetryAdvice,
};
use rabbitry_redis::RedisStore;
use rabbitry_testkit::services;

const PASSWORD: &str = "s3cret-pw-7f3a";

/// Starts and stops a small service: every call uses `?` into
/// `rabbitry::Result`. Returns how many messages its handler saw.
async fn service(database_url: &str, redis_url: &str, queue: &str) -> rabbitry::Result<usize> {
    let broker = Broker::connect(common::config().build()?).await?;
    let store = OutboxStore::connect(database_url).await?;
    store.migrate().await?;
    let redis = RedisStore::builder(redis_url).connect().await?;
    let idempotency = Idempotency::builder(redis)
        .prefix(rabbitry_testkit::unique("conv"))
        .build()?;
    let publisher = Publisher::builder(broker.clone())
        .outbox(store.clone())
        .build()?;
    let relay = Relay::new(
        store.clone(),
        Publisher::builder(broker.clone()).build()?,
        RelayConfig::default(),
    )?;

    let seen = Arc::new(AtomicUsize::new(0));
    let consumer = Consumer::builder(broker.clone(), queue)
        .idempotent(idempotency.layer())
        .build()?;
    let stop_consumers = CancellationToken::new();
    let consuming = consumer.spawn(
        {
            let seen = seen.clone();
            move |_d: Delivery| {
                seen.fetch_add(1, Ordering::SeqCst);
                async { Ok(()) }
            }
        },
        stop_consumers.clone(),
    );
    let stop_relay = CancellationToken::new();
    let relaying = relay.spawn(stop_relay.clone());

    let outcome = publisher.publish(Message::bytes("", queue, "hi")).await?;
    assert!(outcome.is_confirmed());
    relay.run_batch().await?;
    let s = seen.clone();
    common::eventually(Duration::from_secs(20), || {
        let s = s.clone();
        async move { s.load(Ordering::SeqCst) == 1 }
    })
    .await;

    stop_consumers.cancel();
    consuming.await??;
    publisher.close(Duration::from_secs(5)).await?;
    stop_relay.cancel();
    relaying.await??;
    broker.close().await;
    Ok(seen.load(Ordering::SeqCst))
}

/// `url` with `PASSWORD` as its password (Postgres here trusts local
/// users, so the password is sent nowhere; what matters is that no error
/// repeats it).
fn with_password(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (user, host) = rest.split_once('@').unwrap_or(("postgres", rest));
    let user = user.split(':').next().unwrap_or(user);
    format!("{scheme}://{user}:{PASSWORD}@{host}")
}

/// Which store a store error names, and whether it is retryable.
fn store_of(e: &Error) -> (&'static str, bool) {
    match e {
        Error::Store {
            store, retryable, ..
        } => (store, *retryable),
        other => panic!("a store error, not {other:?}"),
    }
}

/// The error's text, its `Debug`, and every source's text.
fn everything_shown(e: &Error) -> String {
    let mut shown = format!("{e}\n{e:?}\n");
    let mut source = e.source();
    while let Some(s) = source {
        shown.push_str(&format!("{s}\n{s:?}\n"));
        source = s.source();
    }
    shown
}

#[tokio::test]
async fn a_whole_service_uses_one_error_with_question_marks() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "conv-ok").await;
    let db = rabbitry_testkit::TestDatabase::create().await;
    let handled = service(db.url(), &services().redis_url, &queue)
        .await
        .expect("the service runs and stops");
    assert_eq!(handled, 1);
}

#[tokio::test]
async fn a_postgres_failure_is_a_store_error_that_keeps_its_cause() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "conv-pg").await;
    let db = rabbitry_testkit::TestDatabase::create().await;
    let missing = format!("{}_missing", db.name());
    let url = with_password(&db.url().replace(db.name(), &missing));

    let e = service(&url, &services().redis_url, &queue)
        .await
        .expect_err("no such database");
    let (store, retryable) = store_of(&e);
    assert_eq!(store, "postgres");
    assert!(!retryable, "a missing database needs fixing: {e}");
    assert_eq!(e.retry_advice(), RetryAdvice::Fix);
    assert!(!e.is_unavailable(), "the broker is fine");
    let cause = e
        .source()
        .and_then(|s| s.downcast_ref::<rabbitry::postgres::Error>())
        .expect("the outbox's own error");
    assert!(
        matches!(cause, rabbitry::postgres::Error::Database(_)),
        "{cause:?}"
    );
    assert!(e.to_string().contains(&missing), "names the database: {e}");
    assert!(
        !e.to_string().starts_with("postgres: postgres:"),
        "says where once: {e}"
    );
    let shown = everything_shown(&e);
    assert!(!shown.contains(PASSWORD), "password shown: {shown}");
}

#[tokio::test]
async fn an_unreachable_redis_is_a_retryable_store_error_without_its_url() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "conv-redis").await;
    let db = rabbitry_testkit::TestDatabase::create().await;
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{}/0", common::closed_port());

    let e = service(db.url(), &url, &queue)
        .await
        .expect_err("nothing listens there");
    let (store, retryable) = store_of(&e);
    assert_eq!(store, "redis");
    assert!(retryable, "Redis may come back: {e}");
    assert!(e.is_retryable());
    assert!(!e.is_unavailable(), "the broker is fine");
    let cause = e
        .source()
        .and_then(|s| s.downcast_ref::<rabbitry_redis::Error>())
        .expect("the Redis store's own error");
    assert!(
        matches!(
            cause,
            rabbitry_redis::Error::Unreachable(_) | rabbitry_redis::Error::TimedOut(_)
        ),
        "{cause:?}"
    );
    let shown = everything_shown(&e);
    assert!(!shown.contains(PASSWORD), "password shown: {shown}");
    assert!(!shown.contains("redis://"), "URL shown: {shown}");
}

#[tokio::test]
async fn a_broker_error_from_the_outbox_comes_back_as_itself() {
    let e: Error = rabbitry::postgres::Error::Broker(Error::Config("bad".into())).into();
    assert!(matches!(e, Error::Config(_)), "{e:?}");

    let e: Error = rabbitry::postgres::Error::TimedOut {
        operation: "claim",
        after: Duration::from_secs(1),
    }
    .into();
    assert!(e.is_retryable(), "{e:?}");
    assert_eq!(e.to_string(), "postgres did not answer claim within 1s");

    let panicked = tokio::spawn(async { panic!("boom") });
    let joined = async { Ok::<(), Error>(panicked.await?) }.await;
    assert!(
        matches!(joined, Err(Error::TaskFailed { panicked: true })),
        "{joined:?}"
    );
}
