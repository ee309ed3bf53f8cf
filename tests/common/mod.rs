//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use rabbitry::{Broker, BrokerConfig, BrokerConfigBuilder};
use rabbitry_testkit::services;

/// A config builder pointed at the test broker.
pub fn config() -> BrokerConfigBuilder {
    rabbitry_testkit::init_tracing();
    BrokerConfig::builder()
        .endpoint(services().amqp_url())
        .connection_name("rabbitry-tests")
        .connect_timeout(Duration::from_secs(5))
}

/// A broker connected to the test broker.
pub async fn broker() -> Broker {
    Broker::connect(config().build().expect("valid config"))
        .await
        .expect("connect to the test broker")
}

#[allow(unused_imports)]
pub use rabbitry_testkit::{collect, drain, eventually};

/// A fresh migrated outbox in a database of its own.
pub async fn outbox() -> (
    rabbitry_testkit::TestDatabase,
    rabbitry::postgres::OutboxStore,
) {
    let db = rabbitry_testkit::TestDatabase::create().await;
    let store = rabbitry::postgres::OutboxStore::connect(db.url())
        .await
        .expect("connect to the test database");
    store.migrate().await.expect("migrate");
    (db, store)
}

/// Declares a quorum work queue (with its dead-letter pair) and returns its
/// name and cleanup guard.
pub async fn work_queue(
    broker: &Broker,
    prefix: &str,
) -> (String, rabbitry_testkit::BrokerCleanup) {
    let queue = rabbitry_testkit::unique(prefix);
    let mut cleanup = rabbitry_testkit::BrokerCleanup::new();
    cleanup.queue(&queue);
    // Consumers with the default retry policy declare these.
    for retry_queue in rabbitry::RetryPolicy::default().retry_queues(&queue) {
        cleanup.queue(retry_queue);
    }
    broker
        .declare(&rabbitry::Topology::new().queue(rabbitry::Queue::new(&queue)))
        .await
        .expect("declare work queue");
    (queue, cleanup)
}

/// A broker that reaches the test broker through `proxy` (1 s connect
/// timeout), so that a test can take the broker away.
pub async fn broker_via(proxy: &rabbitry_testkit::FaultProxy) -> Broker {
    let url = rabbitry::Endpoint::parse(services().amqp_url())
        .expect("url")
        .with_address("127.0.0.1", proxy.port());
    Broker::connect(
        BrokerConfig::builder()
            .parsed_endpoint(url)
            .connect_timeout(Duration::from_secs(1))
            .build()
            .expect("config"),
    )
    .await
    .expect("connect through the proxy")
}

/// A port on 127.0.0.1 where nothing listens.
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A broker handle whose only endpoint refuses connections.
pub fn unreachable_broker(port: u16) -> Broker {
    Broker::lazy(
        BrokerConfig::builder()
            .endpoint(format!("amqp://guest:guest@127.0.0.1:{port}/%2f"))
            .connect_timeout(Duration::from_millis(500))
            .build()
            .expect("config"),
    )
    .expect("lazy broker")
}

/// Sends one message to `queue` through the default exchange as another
/// client would: raw lapin, exactly these properties and body.
pub async fn publish_foreign(
    queue: &str,
    properties: rabbitry::lapin::BasicProperties,
    body: &[u8],
) {
    use rabbitry::lapin::{Connection, ConnectionProperties, options::BasicPublishOptions};
    let conn = Connection::connect(services().amqp_url(), ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = conn.create_channel().await.expect("channel");
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .expect("publish");
    let _ = conn.close(200, "sent".into()).await;
}

/// Cancels a running consumer and waits (bounded) for `run` to return `Ok`.
pub async fn stop_consumer(
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<rabbitry::Result<()>>,
) {
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("consumer stops")
        .expect("join")
        .expect("run ok");
}

/// A header of a raw delivery, as text.
pub fn header_text(d: &rabbitry::lapin::message::Delivery, key: &str) -> String {
    use rabbitry::lapin::types::AMQPValue;
    match d
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(key))
    {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::LongLongInt(i)) => i.to_string(),
        Some(AMQPValue::Timestamp(t)) => t.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// Publishes `n` messages (bodies "0", "1", …) to `queue`, confirmed.
pub async fn publish_n(broker: &Broker, queue: &str, n: usize) {
    let publisher = rabbitry::Publisher::builder(broker.clone())
        .build()
        .expect("publisher");
    let msgs: Vec<_> = (0..n)
        .map(|i| rabbitry::Message::bytes("", queue, format!("{i}")))
        .collect();
    for r in publisher.send_all(&msgs).await {
        r.expect("published");
    }
}

/// Runs `consumer` with `handler` on a task; returns the shutdown token and
/// the task.
pub fn spawn_consumer<H: rabbitry::Handler>(
    consumer: &rabbitry::Consumer,
    handler: H,
) -> (
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<rabbitry::Result<()>>,
) {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let c = consumer.clone();
    let s = shutdown.clone();
    (
        shutdown,
        tokio::spawn(async move { c.run(handler, s).await }),
    )
}

/// Sends `bad` among 200 small publishes on one channel; every other one
/// must be confirmed and arrive, and the publisher must go on. Returns what
/// `bad` got.
pub async fn one_bad_among_200(
    prefix: &str,
    bad: impl FnOnce(&str) -> rabbitry::Message,
) -> rabbitry::Result<()> {
    let broker = broker().await;
    let (queue, _cleanup) = work_queue(&broker, prefix).await;
    let publisher = rabbitry::Publisher::builder(broker.clone())
        .channels(1)
        .build()
        .expect("publisher");
    let mut batch: Vec<rabbitry::Message> = (0..200)
        .map(|i| rabbitry::Message::bytes("", &queue, format!("m{i}")))
        .collect();
    batch.insert(100, bad(&queue));
    let mut results = publisher.send_all(&batch).await;
    let verdict = results.remove(100);
    let failed: Vec<_> = results
        .iter()
        .filter(|r| r.is_err())
        .map(|r| format!("{r:?}"))
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    let arrived = collect(&queue, 200, Duration::from_secs(15)).await;
    assert_eq!(arrived.len(), 200, "every other message arrived");
    // The publisher goes on: the fault is the message's, not the channel's.
    let again = publisher
        .publish(rabbitry::Message::bytes("", &queue, "after"))
        .await
        .expect("publish after");
    assert!(again.is_confirmed());
    verdict
}

pub mod ordering;
