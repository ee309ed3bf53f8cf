//! Declaring topology: idempotence and argument mismatches.

mod common;

use rabbitry::{Binding, Error, Exchange, Overflow, Queue, Topology};
use rabbitry_testkit::{BrokerCleanup, unique};

#[tokio::test]
async fn declaring_the_same_topology_twice_is_a_no_op() {
    let broker = common::broker().await;
    let exchange = unique("topo-ex");
    let queue = unique("topo-q");
    let lazy = unique("topo-lazy");
    let mut cleanup = BrokerCleanup::new();
    cleanup.exchange(&exchange).queue(&queue).queue(&lazy);
    let topology = Topology::new()
        .exchange(Exchange::topic(&exchange))
        .queue(
            Queue::new(&queue)
                .delivery_limit(5)
                .single_active_consumer(true),
        )
        .queue(
            Queue::classic(&lazy)
                .lazy(true)
                .max_length(1000)
                .overflow(Overflow::RejectPublish),
        )
        .binding(Binding::new(&exchange, &queue, "order.*"));

    broker.declare(&topology).await.expect("first declare");
    broker
        .declare(&topology)
        .await
        .expect("second declare is idempotent");

    // The dead-letter queue of the convention exists, and the queues are empty.
    for name in [queue.clone(), format!("{queue}.dlq"), lazy.clone()] {
        let stats = broker.queue_stats(&name).await.expect("queue exists");
        assert_eq!(stats.messages, 0, "{name}");
    }
}

#[tokio::test]
async fn a_conflicting_redeclare_names_the_queue_and_the_argument() {
    let broker = common::broker().await;
    let queue = unique("topo-mismatch");
    let mut cleanup = BrokerCleanup::new();
    cleanup.queue(&queue);
    broker
        .declare(&Topology::new().queue(Queue::new(&queue).delivery_limit(5)))
        .await
        .expect("declare quorum");

    let conflicting = Topology::new().queue(Queue::new(&queue).delivery_limit(3));
    let err = broker
        .declare(&conflicting)
        .await
        .expect_err("406 expected");
    match &err {
        Error::TopologyMismatch {
            kind,
            name,
            argument,
            ..
        } => {
            assert_eq!(*kind, "queue");
            assert_eq!(name, &queue);
            assert_eq!(argument, "x-delivery-limit");
        }
        other => panic!("expected TopologyMismatch, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&queue) && text.contains("x-delivery-limit"),
        "{text}"
    );
    assert!(!err.is_retryable());

    // The broker connection survives the channel error.
    assert!(broker.state(rabbitry::Role::Consume).is_connected());
    broker.queue_stats(&queue).await.expect("still usable");

    // A different queue type is caught too: the broker names the first
    // argument that differs.
    let err = broker
        .declare(&Topology::new().queue(Queue::classic(&queue)))
        .await
        .expect_err("406 expected");
    assert!(matches!(err, Error::TopologyMismatch { .. }), "{err:?}");
}

#[tokio::test]
async fn invalid_settings_are_reported_before_touching_the_broker() {
    let broker = common::broker().await;
    let err = broker
        .declare(&Topology::new().queue(Queue::new("never-declared").lazy(true)))
        .await
        .expect_err("lazy quorum is invalid");
    assert!(matches!(err, Error::Config(_)), "{err:?}");
}
