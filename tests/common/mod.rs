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

/// Polls `check` every 50 ms until it returns true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Takes every ready message from `queue` (acking each) and returns them.
pub async fn drain(broker: &Broker, queue: &str) -> Vec<rabbitry::lapin::message::BasicGetMessage> {
    use rabbitry::lapin::options::{BasicAckOptions, BasicGetOptions};
    let channel = broker
        .open_channel(rabbitry::Role::Consume)
        .await
        .expect("channel");
    let mut out = Vec::new();
    while let Some(msg) = channel
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .expect("basic.get")
    {
        msg.delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
        out.push(msg);
    }
    out
}

/// Waits until `queue` holds `n` ready messages (or `limit` passes), then
/// drains and returns them.
pub async fn collect(
    broker: &Broker,
    queue: &str,
    n: u32,
    limit: Duration,
) -> Vec<rabbitry::lapin::message::BasicGetMessage> {
    eventually(limit, || async {
        broker
            .queue_stats(queue)
            .await
            .map(|s| s.messages >= n)
            .unwrap_or(false)
    })
    .await;
    drain(broker, queue).await
}

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
    broker
        .declare(&rabbitry::Topology::new().queue(rabbitry::Queue::new(&queue)))
        .await
        .expect("declare work queue");
    (queue, cleanup)
}
