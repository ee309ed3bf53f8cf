//! Recovery after the broker closes every connection (a failover).
//!
//! Its own test binary: `rabbitmqctl close_all_connections` would disturb
//! any test running beside it.

mod common;

use std::time::Duration;

use rabbitry::{Error, Queue, Role, Topology};
use rabbitry_testkit::{BrokerCleanup, rabbitmqctl, unique};

#[tokio::test]
async fn connection_and_topology_come_back_after_the_broker_closes_all_connections() {
    let broker = common::broker().await;
    let queue = unique("recovery");
    let mut cleanup = BrokerCleanup::new();
    cleanup.queue(&queue);
    broker
        .declare(&Topology::new().queue(Queue::new(&queue)))
        .await
        .expect("declare");

    // Delete the queue behind rabbitry's back, then force every connection
    // closed: after recovery, the registered topology must be declared again.
    let side = common::broker().await;
    let ch = side.open_channel(Role::Consume).await.expect("channel");
    ch.queue_delete(queue.as_str().into(), Default::default())
        .await
        .expect("delete");
    assert!(matches!(
        broker.queue_stats(&queue).await,
        Err(Error::Broker { code: 404, .. })
    ));

    let mut reconnects = broker.watch_reconnects();
    let before = *reconnects.borrow_and_update();
    rabbitmqctl(&["close_all_connections", "rabbitry test: simulated failover"]);

    let reconnected = tokio::time::timeout(Duration::from_secs(30), async {
        // Both connections were closed: wait for both to come back.
        while *reconnects.borrow_and_update() < before + 2 {
            reconnects.changed().await.expect("broker alive");
        }
    })
    .await;
    assert!(
        reconnected.is_ok(),
        "no reconnect seen after close_all_connections"
    );

    let back = common::eventually(Duration::from_secs(30), || async {
        broker.state(Role::Publish).is_connected()
            && broker.state(Role::Consume).is_connected()
            && broker.queue_stats(&queue).await.is_ok()
    })
    .await;
    assert!(
        back,
        "connection or topology not back: publish={}, consume={}, queue={:?}",
        broker.state(Role::Publish),
        broker.state(Role::Consume),
        broker.queue_stats(&queue).await
    );
    broker
        .open_channel(Role::Publish)
        .await
        .expect("publishing works again");
    // Stop the broker handles first, so that a late re-declare cannot race
    // the cleanup's delete (see .ci/run on what that race does to 3.10.8).
    broker.close().await;
    side.close().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    cleanup.cleanup().await;
}
