//! No loss when the broker goes silent: the proxy in front of it keeps
//! every connection open and forwards nothing (a half-open connection, a
//! partition). Only heartbeats notice; the connections are replaced, and
//! what was not confirmed meanwhile goes to the outbox.

mod noloss_support;

use std::time::{Duration, Instant};

use noloss_support::{Rig, broker, close, produce, proxied, soak};
use rabbitry::Role;
use rabbitry_testkit::{eventually, services};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blackholed_broker_is_detected_by_heartbeat_and_nothing_is_lost() {
    let rig = Rig::new("noloss-blackhole").await;
    let (proxy, amqp) = proxied(services().amqp_url()).await;
    // A short heartbeat: lapin declares the connection dead after two
    // silent intervals.
    let beat = Duration::from_secs(1);
    let (producing, consuming) = (
        broker(&amqp, "blackhole-producer", beat),
        broker(&amqp, "blackhole-consumer", beat),
    );
    // The relay reaches the broker directly: it delivers what the producer
    // deferred while its own connection was silent.
    let relaying = broker(services().amqp_url(), "blackhole-relay", beat);
    let store = rig.store(rig.db.url());
    let relay = rig.start_relay(store.clone(), &relaying);
    let idempotency = rig.idempotency(&services().redis_url);
    let consumer = rig.consume(&consuming, &idempotency);

    let total = if soak() { 60_000 } else { 6_000 };
    let load = produce(
        rig.publisher(&producing, Some(store.clone())),
        &rig.queue,
        rig.ledger.clone(),
        total,
        100,
        Duration::from_millis(20),
    );
    let warm = eventually(Duration::from_secs(30), || async {
        rig.ledger.effects() >= 500
    })
    .await;
    assert!(warm, "the consumer did not get going");

    proxy.set_blackhole(true);
    let silent_at = Instant::now();
    let detected = eventually(Duration::from_secs(15), || async {
        !producing.state(Role::Publish).is_connected()
            && !consuming.state(Role::Consume).is_connected()
    })
    .await;
    let detected_after = silent_at.elapsed();
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(detected_after)).await;
    proxy.set_blackhole(false);
    let healed = Instant::now();

    load.finish(Duration::from_secs(120)).await;
    let drained = rig.drain(&store, Duration::from_secs(90)).await;
    let summary = rig.ledger.summary(
        idempotency.metrics().duplicates,
        rig.ledger.recovered_after(healed),
    );
    eprintln!(
        "blackhole detected after {detected_after:?}; relay {:?}; idempotency {:?}",
        relay.relay.metrics(),
        idempotency.metrics()
    );
    consumer.stop().await;
    relay.stop().await;
    close(&[&producing, &consuming, &relaying]).await;
    rig.cleanup().await;

    assert!(
        detected,
        "heartbeats never declared the silent connections dead"
    );
    assert!(drained, "not drained: {summary:?}");
    assert_eq!(summary.failed, 0, "with the outbox up, no publish fails");
    summary.assert_no_loss("broker blackholed for 5 s, heartbeat 1 s");
}
