//! The partitioned publisher against the real broker: a message without a
//! usable key is refused, the consistent-hash exchange keeps a key in one
//! queue, the modulus-hash exchange is refused before RabbitMQ 4.3, a
//! partition-count mismatch is dead-lettered, and a keyed publish never
//! overtakes its key's unsent outbox rows.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::ordering::{Instance, Recorder, Step, partitions, recording, take_steps};
use rabbitry::postgres::{Relay, RelayConfig};
use rabbitry::{
    Error, Message, OrderedRetry, PARTITIONS_HEADER, PartitionedPublisher, Publisher, Route,
};

fn step(key: &str, seq: u32) -> Message {
    let s = Step {
        key: key.to_owned(),
        seq,
    };
    Message::json("", "", &s).expect("json")
}

#[tokio::test]
async fn a_message_without_a_string_key_is_refused_and_nothing_is_sent() {
    let broker = common::broker().await;
    let (p, mut cleanup) = partitions(&broker, 2, Route::Jump).await;
    let publisher = PartitionedPublisher::new(
        Publisher::builder(broker.clone())
            .build()
            .expect("publisher"),
        p.clone(),
    )
    .expect("partitioned");
    let cases = [
        (step("k", 1), "needs a partition key"),
        (
            step("k", 1).header("x-partition-key", 42_i64),
            "not a string",
        ),
        (step("k", 1).partition_key(""), "empty"),
    ];
    for (message, says) in cases {
        match publisher.publish(message).await {
            Err(e @ Error::InvalidMessage { .. }) => assert!(e.to_string().contains(says), "{e}"),
            other => panic!("expected InvalidMessage ({says}), got {other:?}"),
        }
    }
    for q in p.queue_names() {
        assert_eq!(broker.queue_stats(&q).await.expect("stats").messages, 0);
    }
    cleanup.cleanup().await;
}

#[tokio::test]
async fn the_consistent_hash_exchange_keeps_each_key_in_one_queue_in_order() {
    let broker = common::broker().await;
    let (p, mut cleanup) = partitions(&broker, 4, Route::ConsistentHash).await;
    let publisher = PartitionedPublisher::new(
        Publisher::builder(broker.clone())
            .build()
            .expect("publisher"),
        p.clone(),
    )
    .expect("partitioned");
    for seq in 1..=3 {
        for k in 0..100 {
            let key = common::ordering::key(k);
            let m = step(&key, seq).partition_key(&key);
            assert!(
                publisher
                    .publish(m)
                    .await
                    .expect("published")
                    .is_confirmed()
            );
        }
    }
    let mut home: HashMap<String, (String, u32)> = HashMap::new();
    let mut used = 0;
    for q in p.queue_names() {
        let depth = broker.queue_stats(&q).await.expect("stats").messages;
        let got = take_steps(&q, depth as usize, Duration::from_secs(10)).await;
        assert_eq!(got.len(), depth as usize);
        used += usize::from(!got.is_empty());
        for s in got {
            let (queue, last) = home.entry(s.key.clone()).or_insert((q.clone(), 0));
            assert_eq!(*queue, q, "{} was split across queues", s.key);
            assert_eq!(s.seq, *last + 1, "{} out of order", s.key);
            *last = s.seq;
        }
    }
    assert_eq!(home.len(), 100, "every key arrived");
    assert!(home.values().all(|(_, last)| *last == 3));
    assert!(
        used >= 3,
        "the exchange spread keys over the queues ({used} used)"
    );
    cleanup.cleanup().await;
}

#[tokio::test]
async fn the_modulus_hash_exchange_is_refused_on_a_broker_before_4_3() {
    let broker = common::broker().await;
    let version = broker
        .server_version()
        .expect("version known once connected");
    if version.at_least(4, 3) {
        eprintln!("broker {version} has x-modulus-hash; this test is for older ones");
        return;
    }
    let p = rabbitry::Partitions::new("never-declared", 4).route(Route::ModulusHash);
    let publisher = Publisher::builder(broker.clone())
        .build()
        .expect("publisher");
    let e = PartitionedPublisher::new(publisher, p).expect_err("refused");
    assert!(
        e.to_string().contains("4.3") && e.to_string().contains(&version.to_string()),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_count_mismatch_is_dead_lettered_with_its_reason() {
    let broker = common::broker().await;
    let (p, mut cleanup) = partitions(&broker, 2, Route::Jump).await;
    let q0 = p.queue_name(0);
    let raw = Publisher::builder(broker.clone())
        .build()
        .expect("publisher");
    let wrong = [rabbitry::HeaderValue::Int(8), "two".into()];
    for count in wrong {
        let m = step("k", 1)
            .partition_key("k")
            .header(PARTITIONS_HEADER, count);
        let m = Message::from_parts("", &q0, m.payload().to_vec(), m.properties().clone());
        raw.send(m).await.expect("sent");
    }
    let recorder = Recorder::default();
    let a = Instance::start(
        &broker,
        &p,
        "a",
        2,
        OrderedRetry::default(),
        recording(&recorder, "a", Duration::ZERO),
    );
    let dlq = rabbitry::Queue::dead_letter_queue_name(&q0);
    let dead = common::collect(&dlq, 2, Duration::from_secs(20)).await;
    assert_eq!(dead.len(), 2, "both dead-lettered");
    let reasons: Vec<String> = dead
        .iter()
        .map(|d| common::header_text(d, "x-exception-message"))
        .collect();
    assert!(
        reasons[0].contains("published for 8 partitions"),
        "{reasons:?}"
    );
    assert!(reasons[1].contains("not a number"), "{reasons:?}");
    assert_eq!(recorder.handled(), 0, "the handler never saw them");
    a.stop().await;
    cleanup.cleanup().await;
}

#[tokio::test]
async fn a_keyed_publish_waits_behind_its_keys_unsent_outbox_row() {
    let broker = common::broker().await;
    let (p, mut cleanup) = partitions(&broker, 2, Route::Jump).await;
    let (_db, store) = common::outbox().await;
    let down = common::unreachable_broker(common::closed_port());
    let over = |broker: &rabbitry::Broker| {
        let publisher = Publisher::builder(broker.clone())
            .outbox(store.clone())
            .build()
            .expect("publisher");
        PartitionedPublisher::new(publisher, p.clone()).expect("partitioned")
    };
    // The broker is away: the first message of "k" goes to the outbox.
    let first = over(&down).publish(step("k", 1).partition_key("k")).await;
    assert!(
        matches!(first, Ok(rabbitry::PublishOutcome::Deferred { .. })),
        "{first:?}"
    );
    assert!(store.holds_key("k").await.expect("lookup"));

    // The broker is back, but "k" still has a row waiting: the second
    // message queues behind it. Another key goes straight through.
    let up = over(&broker);
    match up.publish(step("k", 2).partition_key("k")).await {
        Ok(rabbitry::PublishOutcome::Deferred {
            cause: Error::HeldForOrder { .. },
            ..
        }) => {}
        other => panic!("expected a deferral behind the outbox row, got {other:?}"),
    }
    let other = up
        .publish(step("j", 1).partition_key("j"))
        .await
        .expect("published");
    assert!(other.is_confirmed());

    // An ordered relay sends the key's two rows in order.
    let relay = Relay::new(
        store.clone(),
        up_publisher(&broker),
        RelayConfig::default().ordered(true),
    )
    .expect("relay");
    let q = p.queue_name(p.index_of("k"));
    let sent = common::eventually(Duration::from_secs(30), || async {
        let _ = relay.run_batch().await;
        !store.holds_key("k").await.expect("lookup")
    })
    .await;
    assert!(sent, "the relay sent the rows");
    let got = take_steps(&q, 2, Duration::from_secs(10)).await;
    let seqs: Vec<u32> = got.iter().filter(|s| s.key == "k").map(|s| s.seq).collect();
    assert_eq!(seqs, [1, 2]);
    cleanup.cleanup().await;
}

fn up_publisher(broker: &rabbitry::Broker) -> Publisher {
    Publisher::builder(broker.clone())
        .build()
        .expect("publisher")
}

#[tokio::test]
async fn rabbitmq_refuses_basic_get_on_a_partition_queue() {
    // Pinned because it shapes the operator's tools: a stuck message cannot
    // be taken off a partition queue with basic.get (405 RESOURCE_LOCKED
    // on a quorum queue with a single active consumer).
    let broker = common::broker().await;
    let (p, mut cleanup) = partitions(&broker, 1, Route::Jump).await;
    let refused = tokio::spawn({
        let q = p.queue_name(0);
        async move { common::drain(&q).await }
    })
    .await;
    let panic = refused.expect_err("basic.get is refused");
    let text = panic
        .into_panic()
        .downcast::<String>()
        .map(|s| *s)
        .unwrap_or_default();
    assert!(
        text.contains("RESOURCE_LOCKED") || text.contains("RESOURCE-LOCKED"),
        "{text}"
    );
    cleanup.cleanup().await;
}
