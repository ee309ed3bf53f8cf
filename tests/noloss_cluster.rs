//! No loss when the cluster node that leads the quorum queue (and holds the
//! connections) is killed (`kill -9`) under load, counted the Jepsen way: a
//! producer with the outbox, the relay, and an idempotent consumer, all on
//! the cluster's three endpoints.
//!
//! Needs the local 3-node cluster (`scripts/cluster.sh start`) and
//! `RABBITRY_CLUSTER=1`; skipped with a message otherwise. Its own test
//! binary, since it kills a node (and restarts it at the end).

mod noloss_support;

use std::time::{Duration, Instant};

use noloss_support::{Endpoints, Rig, Stack, soak};
use rabbitry_testkit::{BrokerCleanup, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_queue_leader_loses_nothing_and_duplicates_no_effect() {
    let Some(cluster) = Cluster::from_env() else {
        return;
    };
    let urls = cluster.urls().join(",");
    // Declared through node 1 first: node 1 leads the queue.
    let rig = Rig::on("noloss-cluster", &urls).await;
    let stack = Stack::start(&rig, &Endpoints::direct(&rig).amqp(&urls));
    let total = if soak() { 40_000 } else { 8_000 };
    let load = stack
        .warm_load(&rig, total, Duration::from_millis(20), 1_000)
        .await;
    let leader = cluster.queue_leader(&rig.queue, 2);
    let holders = cluster.connection_nodes("rabbitry-noloss", 2);
    eprintln!("queue leader {leader:?}, connections on nodes {holders:?}");

    // Timed from before the kill: the script returns once the node is gone,
    // by which time the clients may have moved already.
    let killed = Instant::now();
    cluster.kill(1);
    stack.after_fault(&rig, load).await;
    let queue = rig.queue.clone();
    // Measured from the kill: the surviving nodes carry on without node 1.
    let (drained, summary) = stack.finish(&rig, &[killed]).await;
    cluster.restart(1);
    delete_queue(&cluster, &queue).await;
    rig.cleanup().await;

    assert_eq!(leader, Some(1), "node 1 led the queue before the kill");
    assert!(drained, "not drained: {summary:?}");
    assert_eq!(summary.failed, 0, "with the outbox up, no publish fails");
    summary.assert_no_loss("kill -9 of the queue's leader node");
}

/// Deletes the queue and its companions on the cluster (through node 2).
async fn delete_queue(cluster: &Cluster, queue: &str) {
    let mut cleanup = BrokerCleanup::new();
    cleanup.consumer_queue(queue);
    cleanup.cleanup_at(&cluster.urls()[1]).await;
}
