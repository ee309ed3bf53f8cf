//! No loss when the outbox relay dies mid-batch and is restarted.
//!
//! The relay runs in-process (root tests cannot start the `rabbitry-relay`
//! binary, which belongs to another package); it is killed by aborting its
//! task and, at the same instant, resetting its connections to the broker
//! and to Postgres through their proxies, which is what the services see of
//! a `kill -9`: the claim transaction rolls back, and rows whose publish the
//! broker already confirmed are published again by the next relay. Those
//! duplicates are counted, and the idempotent consumer absorbs them.

mod noloss_support;

use std::time::{Duration, Instant};

use noloss_support::{Endpoints, Rig, Stack, broker, proxied, soak};
use rabbitry_testkit::{eventually, services};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_killed_mid_batch_and_restarted_loses_nothing() {
    let rig = Rig::new("noloss-relay-kill").await;
    let (producer_proxy, producer_amqp) = proxied(services().amqp_url()).await;
    let (relay_proxy, relay_amqp) = proxied(services().amqp_url()).await;
    let (relay_db_proxy, relay_db) = proxied(rig.db.url()).await;
    let mut at = Endpoints::direct(&rig);
    at.producer_amqp = producer_amqp;
    at.relay_amqp.clone_from(&relay_amqp);
    at.relay_database.clone_from(&relay_db);
    // Confirms arrive 20 ms late, so that batches spend their time in
    // flight, where a kill hurts.
    relay_proxy.set_latency(Duration::from_millis(20));
    // The relay cannot reach Postgres yet, and the producer's broker is
    // away: every publish is deferred to the outbox.
    relay_db_proxy.set_down(true);
    producer_proxy.set_down(true);
    let mut stack = Stack::start(&rig, &at);
    let total = if soak() { 40_000 } else { 6_000 };
    stack
        .produce(&rig, total, 250, Duration::ZERO)
        .finish(Duration::from_secs(120))
        .await;
    let deferred = stack.store.stats().await.expect("stats").pending;
    assert_eq!(
        deferred,
        i64::try_from(total).expect("small"),
        "all deferred"
    );

    relay_db_proxy.set_down(false);
    let mut kills = 0;
    let mut recovery = Duration::ZERO;
    for share in [3, 2] {
        // Kill once a share of the rows is published.
        let target = total / share;
        let reached = eventually(Duration::from_secs(60), || async {
            let left = stack.store.stats().await.map_or(i64::MAX, |s| s.pending);
            total - u64::try_from(left).unwrap_or(0) >= target
        })
        .await;
        assert!(reached, "the relay did not get to {target} rows");
        stack.relay.task.abort();
        relay_proxy.reset();
        relay_db_proxy.reset();
        kills += 1;
        let restarted = Instant::now();
        stack.relaying.close().await;
        stack.relaying = broker(&relay_amqp, "relay", at.heartbeat);
        stack.relay = rig.start_relay(rig.store(&relay_db), &stack.relaying);
        let resumed = eventually(Duration::from_secs(30), || async {
            stack.relay.relay.metrics().published > 0
        })
        .await;
        assert!(resumed, "the restarted relay published nothing");
        recovery = recovery.max(restarted.elapsed());
    }

    let (drained, mut summary) = stack.finish(&rig, &[]).await;
    // Recovery here: from a restart until the new relay published.
    summary.recovery = Some(recovery);
    eprintln!("relay kills: {kills}");
    rig.cleanup().await;

    assert!(drained, "not drained: {summary:?}");
    assert_eq!(summary.deferred as u64, total);
    summary.assert_no_loss("relay killed mid-batch twice, restarted");
}
