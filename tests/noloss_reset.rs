//! No loss while the broker's connections are reset every few seconds: a
//! producer with the outbox, the relay and an idempotent consumer all reach
//! the broker through one fault proxy, which resets every connection (TCP
//! RST) once a quarter of the load is sent, then every 3 s.

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
    // The first reset comes once a quarter is sent, the next every 3 s: on
    // an idle machine the whole load can take less than 3 s, and a run
    // with no reset would prove nothing.
    let mut resets: Vec<Instant> = Vec::new();
    while load.sent() < total {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let sent = load.sent();
        let due = match resets.last() {
            None => sent >= total / 4,
            Some(last) => last.elapsed() >= Duration::from_secs(3),
        };
        if due && sent < total {
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
