//! No loss while the broker's connections are reset every few seconds: a
//! producer with the outbox, the relay and an idempotent consumer all reach
//! the broker through one fault proxy, which resets every connection (TCP
//! RST) every 3 s during the run.

mod noloss_support;

use std::time::{Duration, Instant};

use noloss_support::{Endpoints, Rig, Stack, proxied, soak};
use rabbitry_testkit::services;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_reset_every_few_seconds_lose_nothing() {
    let rig = Rig::new("noloss-reset").await;
    let (proxy, amqp) = proxied(services().amqp_url()).await;
    let stack = Stack::start(&rig, &Endpoints::direct(&rig).amqp(&amqp));

    let total = if soak() { 200_000 } else { 20_000 };
    let load = stack.produce(&rig, total, 250, Duration::ZERO);
    let mut resets = Vec::new();
    while load.sent() < total {
        tokio::time::sleep(Duration::from_secs(3)).await;
        if load.sent() < total {
            proxy.reset();
            resets.push(Instant::now());
        }
    }
    load.finish(Duration::from_secs(120)).await;

    let (drained, summary) = stack.finish(&rig, &resets).await;
    eprintln!("resets: {}", resets.len());
    rig.cleanup().await;

    assert!(!resets.is_empty(), "the run outlasted no reset");
    assert!(drained, "not drained: {summary:?}");
    assert_eq!(summary.sent as u64, total);
    assert_eq!(summary.failed, 0, "with the outbox up, no publish fails");
    summary.assert_no_loss("connections reset every 3 s");
}
