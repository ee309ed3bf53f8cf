//! A body under the publisher's `max_message_size` but over the broker's
//! (a publisher limit raised above what the broker takes): RabbitMQ refuses
//! it with 406 PRECONDITION_FAILED, which closes the channel it came on,
//! and with it the confirms of every publish in flight on that channel.
//! Pinned here (docs/security.md): the caller of the big one gets
//! `Error::TooLarge`, not retryable, so an outbox row of it is parked
//! instead of resent forever; the publishes in flight with it fail too, each
//! a retryable `ConnectionLost` (the broker closed their channel); nothing
//! confirmed is missing, and the publisher goes on. Keep `max_message_size`
//! at or below the broker's.
//!
//! Runs on a node of its own whose `max_message_size` is 1 MiB (TLS only,
//! like `tests/tls.rs`), so that no 128 MiB body is needed.

use std::collections::HashSet;
use std::time::Duration;

use rabbitry::lapin::options::{BasicGetOptions, QueueDeleteOptions};
use rabbitry::{Broker, BrokerConfig, Message, Publisher, Queue, Role, Topology};
use rabbitry_testkit::{tls_node_for_test, unique};

const BROKER_LIMIT: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_brokers_limit_fails_and_no_publish_in_flight_is_lost() {
    let conf = format!("max_message_size = {BROKER_LIMIT}");
    let Some((certs, node)) = tls_node_for_test(&conf) else {
        return;
    };
    rabbitry_testkit::init_tracing();
    let broker = Broker::connect(
        BrokerConfig::builder()
            .endpoint(node.url("localhost"))
            .tls_ca_pem(certs.ca_pem())
            .build()
            .expect("config"),
    )
    .await
    .expect("connect");
    let queue = unique("broker-limit");
    broker
        .declare(&Topology::new().queue(Queue::new(&queue)))
        .await
        .expect("declare");
    let publisher = Publisher::builder(broker.clone())
        .channels(1)
        .max_message_size(4 * BROKER_LIMIT)
        .build()
        .expect("publisher");
    let mut batch: Vec<Message> = (0..200)
        .map(|i| Message::bytes("", &queue, format!("m{i}")).message_id(format!("m{i}")))
        .collect();
    batch.insert(
        100,
        Message::bytes("", &queue, vec![b'x'; 2 * BROKER_LIMIT]).message_id("big"),
    );
    let results = publisher.send_all(&batch).await;
    assert!(
        matches!(
            results[100],
            Err(rabbitry::Error::TooLarge { size, max, .. })
                if size == 2 * BROKER_LIMIT && max == BROKER_LIMIT
        ),
        "the broker refused it for its size: {:?}",
        results[100]
    );
    assert!(!results[100].as_ref().is_err_and(|e| e.is_retryable()));
    let mut confirmed = HashSet::new();
    let mut failed = 0;
    for (m, r) in batch.iter().zip(&results) {
        match r {
            Ok(()) => {
                confirmed.insert(m.id().to_owned());
            }
            Err(_) if m.id() == "big" => failed += 1,
            Err(e) => {
                failed += 1;
                // Retryable: whether the broker has it is unknown, and the
                // fault was another message's (with an outbox: deferred).
                assert!(e.is_retryable(), "{}: {e:?}", m.id());
            }
        }
    }
    eprintln!(
        "measured: {} confirmed, {failed} failed with the channel (the big one included)",
        confirmed.len()
    );
    // The publisher goes on, on a new channel.
    let after = publisher
        .publish(Message::bytes("", &queue, "after").message_id("after"))
        .await
        .expect("publish after");
    assert!(after.is_confirmed());
    confirmed.insert("after".to_owned());

    // Every confirmed message is in the queue; the big one is not.
    let arrived = read_ids(&broker, &queue).await;
    let missing: Vec<_> = confirmed.difference(&arrived).collect();
    assert!(
        missing.is_empty(),
        "confirmed but not in the queue: {missing:?}"
    );
    assert!(!arrived.contains("big"));
    let channel = broker.open_channel(Role::Consume).await.expect("channel");
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    broker.close().await;
    drop(node);
}

/// The message ids in `queue`, taken with `basic.get`.
async fn read_ids(broker: &Broker, queue: &str) -> HashSet<String> {
    let channel = broker.open_channel(Role::Consume).await.expect("channel");
    let mut ids = HashSet::new();
    while let Ok(Ok(Some(m))) = tokio::time::timeout(
        Duration::from_secs(5),
        channel.basic_get(queue.into(), BasicGetOptions { no_ack: true }),
    )
    .await
    {
        if let Some(id) = m.delivery.properties.message_id() {
            ids.insert(id.to_string());
        }
    }
    ids
}
