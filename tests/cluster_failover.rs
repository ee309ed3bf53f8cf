//! Losing a cluster node under load: the node that leads the quorum queue
//! and holds both connections is killed (`kill -9`).
//!
//! Needs the local 3-node cluster (`scripts/cluster.sh start`) and
//! `RABBITRY_CLUSTER=1`; skipped with a message otherwise. Its own test
//! binary, since it kills a node.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rabbitry::{
    Broker, BrokerConfig, ConnectionState, Consumer, ConsumerState, Delivery, Message, Publisher,
    Queue, Role, Topology,
};
use rabbitry_testkit::{Cluster, unique};
use tokio_util::sync::CancellationToken;

/// What the test saw, shared with the load and the handler.
#[derive(Default)]
struct Seen {
    confirmed: Mutex<HashSet<String>>,
    handled: Mutex<HashSet<String>>,
    /// Sequence number of the last message sent before the kill.
    seq_at_kill: AtomicU64,
    killed_at: Mutex<Option<Instant>>,
    first_confirm_after_kill: Mutex<Option<Duration>>,
    first_handled_after_kill: Mutex<Option<Duration>>,
}

impl Seen {
    fn since_kill(&self) -> Option<Duration> {
        self.killed_at.lock().expect("lock").map(|t| t.elapsed())
    }
}

/// Records whether a watched state ever left its healthy value after `armed`.
fn watch_outage<T: Clone + Send + Sync + std::fmt::Debug + 'static>(
    mut rx: tokio::sync::watch::Receiver<T>,
    healthy: fn(&T) -> bool,
    armed: Arc<AtomicBool>,
) -> Arc<Mutex<Vec<String>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = seen.clone();
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let state = rx.borrow_and_update().clone();
            if armed.load(Ordering::SeqCst) && !healthy(&state) {
                out.lock().expect("lock").push(format!("{state:?}"));
            }
        }
    });
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_node_that_leads_the_queue_and_holds_the_connections() {
    let Some(cluster) = Cluster::from_env() else {
        return;
    };
    rabbitry_testkit::init_tracing();
    let name = unique("rabbitry-ha");
    let broker = Broker::connect(
        BrokerConfig::builder()
            .endpoints(cluster.urls())
            .connection_name(&name)
            .heartbeat(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(3))
            .operation_timeout(Duration::from_secs(5))
            .build()
            .expect("config"),
    )
    .await
    .expect("connect to the cluster");
    let queue = unique("ha");
    let topology = Topology::new().queue(Queue::new(&queue));
    broker.declare(&topology).await.expect("declare");

    let seen = Arc::new(Seen::default());
    let armed = Arc::new(AtomicBool::new(false));
    let publish_outage = watch_outage(
        broker.watch_state(Role::Publish),
        ConnectionState::is_connected,
        armed.clone(),
    );
    let consume_outage = watch_outage(
        broker.watch_state(Role::Consume),
        ConnectionState::is_connected,
        armed.clone(),
    );

    let consumer = Consumer::builder(broker.clone(), &queue)
        .topology(topology.clone())
        .prefetch(64)
        .concurrency(8)
        .build()
        .expect("consumer");
    let consumer_outage = watch_outage(
        consumer.watch_state(),
        |s| *s == ConsumerState::Consuming,
        armed.clone(),
    );
    let shutdown = CancellationToken::new();
    let consuming = {
        let (consumer, shutdown, seen) = (consumer.clone(), shutdown.clone(), seen.clone());
        tokio::spawn(async move {
            consumer
                .run(
                    move |d: Delivery| {
                        let seen = seen.clone();
                        async move {
                            let seq: u64 = std::str::from_utf8(d.payload())
                                .ok()
                                .and_then(|s| s.parse().ok())
                                .unwrap_or(0);
                            if seq > seen.seq_at_kill.load(Ordering::SeqCst)
                                && let Some(t) = seen.since_kill()
                            {
                                seen.first_handled_after_kill
                                    .lock()
                                    .expect("lock")
                                    .get_or_insert(t);
                            }
                            seen.handled.lock().expect("lock").insert(d.id().to_owned());
                            Ok(())
                        }
                    },
                    shutdown,
                )
                .await
        })
    };

    // About 500 messages a second, in pipelined batches of 25.
    let publisher = Publisher::builder(broker.clone())
        .timeout(Duration::from_secs(5))
        .build()
        .expect("publisher");
    let stop_load = CancellationToken::new();
    let seq = Arc::new(AtomicU64::new(0));
    let load = {
        let (publisher, stop, seen, seq, queue) = (
            publisher.clone(),
            stop_load.clone(),
            seen.clone(),
            seq.clone(),
            queue.clone(),
        );
        tokio::spawn(async move {
            let mut failed = 0u64;
            while !stop.is_cancelled() {
                let batch: Vec<_> = (0..25)
                    .map(|_| {
                        let n = seq.fetch_add(1, Ordering::SeqCst) + 1;
                        Message::bytes("", &queue, n.to_string())
                    })
                    .collect();
                // Only a batch sent after the kill shows that publishing
                // works again (one in flight at the kill may still confirm).
                let after_kill = seen.since_kill().is_some();
                let results = publisher.send_all(&batch).await;
                for (m, r) in batch.iter().zip(results) {
                    if r.is_ok() {
                        if after_kill && let Some(t) = seen.since_kill() {
                            seen.first_confirm_after_kill
                                .lock()
                                .expect("lock")
                                .get_or_insert(t);
                        }
                        seen.confirmed
                            .lock()
                            .expect("lock")
                            .insert(m.id().to_owned());
                    } else if let Err(e) = r {
                        failed += 1;
                        if failed % 1000 == 1 {
                            eprintln!("publish failed ({failed} so far): {e}");
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            failed
        })
    };

    let warm = common::eventually(Duration::from_secs(30), || async {
        seen.handled.lock().expect("lock").len() >= 500
    })
    .await;
    assert!(warm, "the consumer did not get going before the kill");
    let leader = cluster.queue_leader(&queue, 2);
    let holders = cluster.connection_nodes(&name, 2);
    assert_eq!(leader, Some(1), "the queue should be led by node 1");
    assert_eq!(holders, vec![1, 1], "both connections should be on node 1");

    eprintln!("before the kill: {}", cluster.queue_info(&queue, 2));
    armed.store(true, Ordering::SeqCst);
    cluster.kill(1);
    // Measured from when the node is gone (the script waits for it).
    seen.seq_at_kill
        .store(seq.load(Ordering::SeqCst), Ordering::SeqCst);
    *seen.killed_at.lock().expect("lock") = Some(Instant::now());

    tokio::time::sleep(Duration::from_secs(3)).await;
    eprintln!("3 s after the kill: {}", cluster.queue_info(&queue, 2));
    let back = common::eventually(Duration::from_secs(12), || async {
        seen.first_confirm_after_kill
            .lock()
            .expect("lock")
            .is_some()
            && seen
                .first_handled_after_kill
                .lock()
                .expect("lock")
                .is_some()
    })
    .await;
    let confirm_after = *seen.first_confirm_after_kill.lock().expect("lock");
    let handled_after = *seen.first_handled_after_kill.lock().expect("lock");
    eprintln!(
        "after kill -9: first confirm {confirm_after:?}, first handled {handled_after:?}; \
         publish states {:?}, consume states {:?}, consumer states {:?}",
        publish_outage.lock().expect("lock"),
        consume_outage.lock().expect("lock"),
        consumer_outage.lock().expect("lock"),
    );

    // Keep the load on a little longer, then check that nothing confirmed
    // was lost.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_load.cancel();
    let failed = load.await.expect("load task");
    let confirmed = seen.confirmed.lock().expect("lock").clone();
    let all = common::eventually(Duration::from_secs(60), || async {
        let handled = seen.handled.lock().expect("lock");
        confirmed.iter().all(|id| handled.contains(id))
    })
    .await;
    let missing = {
        let handled = seen.handled.lock().expect("lock");
        confirmed.iter().filter(|id| !handled.contains(*id)).count()
    };
    eprintln!(
        "confirmed {}, failed (returned to the caller) {failed}, missing {missing}",
        confirmed.len()
    );

    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(40), consuming).await;
    // Node 1 is down: clean up through node 2.
    let mut cleanup = rabbitry_testkit::BrokerCleanup::new();
    cleanup.consumer_queue(&queue);
    cleanup.cleanup_at(&cluster.urls()[1]).await;
    broker.close().await;
    cluster.restart(1);

    assert!(
        back,
        "not back within 15 s: first confirm {confirm_after:?}, first handled {handled_after:?}"
    );
    assert!(all, "{missing} confirmed messages were never handled");
    assert!(
        !publish_outage.lock().expect("lock").is_empty(),
        "the publishing connection's state never showed the outage"
    );
    assert!(
        !consume_outage.lock().expect("lock").is_empty(),
        "the consuming connection's state never showed the outage"
    );
    assert!(
        !consumer_outage.lock().expect("lock").is_empty(),
        "the consumer's state never showed the outage"
    );
}
