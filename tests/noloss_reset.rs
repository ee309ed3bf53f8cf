//! No loss while the broker's connections are reset every few seconds: a
//! producer with the outbox, the relay and an idempotent consumer all reach
//! the broker through one fault proxy, which resets every connection (TCP
//! RST) every 3 s during the run.

mod noloss_support;

use std::time::{Duration, Instant};

use noloss_support::{Rig, broker, close, produce, proxied, soak};
use rabbitry_testkit::services;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_reset_every_few_seconds_lose_nothing() {
    let rig = Rig::new("noloss-reset").await;
    let (proxy, amqp) = proxied(services().amqp_url()).await;
    let beat = Duration::from_secs(5);
    let (producing, consuming, relaying) = (
        broker(&amqp, "reset-producer", beat),
        broker(&amqp, "reset-consumer", beat),
        broker(&amqp, "reset-relay", beat),
    );
    let store = rig.store(rig.db.url());
    let relay = rig.start_relay(store.clone(), &relaying);
    let idempotency = rig.idempotency(&services().redis_url);
    let consumer = rig.consume(&consuming, &idempotency);

    let total = if soak() { 200_000 } else { 20_000 };
    let load = produce(
        rig.publisher(&producing, Some(store.clone())),
        &rig.queue,
        rig.ledger.clone(),
        total,
        250,
        Duration::ZERO,
    );
    let mut resets = Vec::new();
    while load.sent() < total {
        tokio::time::sleep(Duration::from_secs(3)).await;
        if load.sent() < total {
            proxy.reset();
            resets.push(Instant::now());
        }
    }
    load.finish(Duration::from_secs(120)).await;
    let drained = rig.drain(&store, Duration::from_secs(90)).await;

    // The slowest recovery over all the resets.
    let recovery = resets
        .iter()
        .map(|t| rig.ledger.recovered_after(*t))
        .try_fold(Duration::ZERO, |worst, r| r.map(|r| worst.max(r)));
    let summary = rig
        .ledger
        .summary(idempotency.metrics().duplicates, recovery);
    eprintln!(
        "resets: {}, relay: {:?}, idempotency: {:?}",
        resets.len(),
        relay.relay.metrics(),
        idempotency.metrics()
    );
    consumer.stop().await;
    relay.stop().await;
    close(&[&producing, &consuming, &relaying]).await;
    rig.cleanup().await;

    assert!(!resets.is_empty(), "the run outlasted no reset");
    assert!(drained, "not drained: {summary:?}");
    assert_eq!(summary.sent as u64, total);
    assert_eq!(summary.failed, 0, "with the outbox up, no publish fails");
    summary.assert_no_loss("connections reset every 3 s");
}
