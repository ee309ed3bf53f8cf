//! No loss when the broker goes silent: the proxy in front of it keeps
//! every connection open and forwards nothing (a half-open connection, a
//! partition). Only heartbeats notice; the connections are replaced, and
//! what was not confirmed meanwhile goes to the outbox.

mod noloss_support;

use std::time::{Duration, Instant};

use noloss_support::{Endpoints, Rig, Stack, proxied, soak};
use rabbitry::Role;
use rabbitry_testkit::{eventually, services};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blackholed_broker_is_detected_by_heartbeat_and_nothing_is_lost() {
    let rig = Rig::new("noloss-blackhole").await;
    let (proxy, amqp) = proxied(services().amqp_url()).await;
    // The producer and the consumer go through the proxy; the relay reaches
    // the broker directly and delivers what the producer deferred. A short
    // heartbeat: lapin declares a connection dead after two silent
    // intervals.
    let mut at = Endpoints::direct(&rig);
    at.producer_amqp.clone_from(&amqp);
    at.consumer_amqp = amqp;
    at.heartbeat = Duration::from_secs(1);
    let stack = Stack::start(&rig, &at);

    let total = if soak() { 60_000 } else { 6_000 };
    let load = stack
        .warm_load(&rig, total, Duration::from_millis(20), 500)
        .await;

    proxy.set_blackhole(true);
    let silent_at = Instant::now();
    let detected = eventually(Duration::from_secs(15), || async {
        !stack.producing.state(Role::Publish).is_connected()
            && !stack.consuming.state(Role::Consume).is_connected()
    })
    .await;
    let detected_after = silent_at.elapsed();
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(detected_after)).await;
    proxy.set_blackhole(false);
    let healed = Instant::now();

    stack.after_fault(&rig, load).await;
    let (drained, summary) = stack.finish(&rig, &[healed]).await;
    eprintln!("blackhole detected after {detected_after:?}");
    rig.cleanup().await;

    assert!(
        detected,
        "heartbeats never declared the silent connections dead"
    );
    assert!(drained, "not drained: {summary:?}");
    assert_eq!(summary.failed, 0, "with the outbox up, no publish fails");
    summary.assert_no_loss("broker blackholed for 5 s, heartbeat 1 s");
}
