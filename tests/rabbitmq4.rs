//! Declaring on RabbitMQ 3.x and 4.x: what changed in 4.0 (a default
//! delivery limit of 20 on quorum queues, which drops a message past it when
//! the queue has no dead-letter exchange) and in 3.12 and 4.3 (lazy mode
//! ignored, then refused).
//!
//! Each test runs against the test broker (3.10.8 here), and against a
//! RabbitMQ 4 node when `RABBITRY_RABBITMQ4=1` (`scripts/rabbitmq4.sh start`
//! runs 4.0.5 on 127.0.0.1:5700; `RABBITMQ4_URL` points elsewhere). Without
//! it, the 4.x half says it is skipped. With it, a node that cannot be
//! reached fails the test.

mod common;

use std::time::Duration;

use rabbitry::lapin::BasicProperties;
use rabbitry::lapin::options::{
    BasicGetOptions, BasicNackOptions, BasicPublishOptions, BasicRejectOptions,
    ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use rabbitry::lapin::types::{AMQPValue, FieldTable};
use rabbitry::{
    Broker, BrokerConfig, DEFAULT_DELIVERY_LIMIT, DeadLetter, DelayStrategy, Delays, ErrorQueue,
    Publisher, Queue, Role, ServerVersion, Topology,
};
use rabbitry_testkit::unique;

const RABBITMQ4_DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5700/%2f";

/// The test broker, then the RabbitMQ 4 node when enabled.
async fn brokers() -> Vec<(ServerVersion, Broker)> {
    let mut out = Vec::new();
    let default = common::broker().await;
    out.push((version_of(&default), default));
    if std::env::var("RABBITRY_RABBITMQ4").as_deref() == Ok("1") {
        let url = std::env::var("RABBITMQ4_URL")
            .ok()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| RABBITMQ4_DEFAULT_URL.to_owned());
        let broker = Broker::connect(
            BrokerConfig::builder()
                .endpoint(url)
                .connection_name("rabbitry-tests-rabbitmq4")
                .connect_timeout(Duration::from_secs(5))
                .build()
                .expect("config"),
        )
        .await
        .expect("RABBITRY_RABBITMQ4=1 but the RabbitMQ 4 node does not answer: run `scripts/rabbitmq4.sh start`");
        let version = version_of(&broker);
        assert!(
            version.at_least(4, 0),
            "RABBITMQ4_URL is RabbitMQ {version}"
        );
        out.push((version, broker));
    } else {
        eprintln!(
            "SKIPPED on RabbitMQ 4: run `scripts/rabbitmq4.sh start`, then set RABBITRY_RABBITMQ4=1"
        );
    }
    out
}

fn version_of(broker: &Broker) -> ServerVersion {
    broker
        .server_version()
        .expect("the broker's version is known once connected")
}

/// Declares a queue with raw arguments, as another client (or an older
/// rabbitry) would.
async fn declare_raw(broker: &Broker, queue: &str, args: &[(&str, AMQPValue)]) {
    let channel = broker.open_channel(Role::Consume).await.expect("channel");
    let mut table = FieldTable::default();
    for (k, v) in args {
        table.insert((*k).into(), v.clone());
    }
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            table,
        )
        .await
        .expect("raw declare");
    let _ = channel.close(200, "done".into()).await;
}

async fn publish(broker: &Broker, queue: &str, n: usize) {
    let channel = broker.open_channel(Role::Publish).await.expect("channel");
    for i in 0..n {
        channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                format!("failure {i}").as_bytes(),
                BasicProperties::default().with_message_id(format!("m{i}").into()),
            )
            .await
            .expect("publish");
    }
    let _ = channel.close(200, "done".into()).await;
}

async fn depth(broker: &Broker, queue: &str) -> u32 {
    // A return to a quorum queue takes a moment to show in its count.
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.queue_stats(queue).await.expect("stats").messages
}

async fn delete(broker: &Broker, queue: &str) {
    let channel = broker.open_channel(Role::Consume).await.expect("channel");
    for q in [queue.to_owned(), format!("{queue}.dlq")] {
        let _ = channel
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = channel
        .exchange_delete(
            format!("{queue}.dlx").as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await;
}

#[tokio::test]
async fn the_broker_version_is_read_when_connecting() {
    for (version, _) in brokers().await {
        assert!(version.at_least(3, 8), "{version}");
    }
}

#[tokio::test]
async fn listing_an_error_queue_25_times_loses_nothing() {
    for (version, broker) in brokers().await {
        let queue = unique("v4-list");
        let dlq = Queue::dead_letter_queue_name(&queue);
        broker
            .declare(&Topology::new().queue(Queue::new(&queue)))
            .await
            .expect("declare");
        publish(&broker, &dlq, 3).await;
        let errors = ErrorQueue::new(broker.clone(), &dlq);
        for round in 1..=25 {
            let listed = errors.list(10).await.expect("list");
            assert_eq!(listed.len(), 3, "RabbitMQ {version}, listing {round}");
        }
        assert_eq!(depth(&broker, &dlq).await, 3, "RabbitMQ {version}");
        delete(&broker, &queue).await;
    }
}

#[tokio::test]
async fn a_message_that_keeps_coming_back_is_dead_lettered_at_the_default_limit() {
    for (version, broker) in brokers().await {
        let queue = unique("v4-limit");
        let dlq = Queue::dead_letter_queue_name(&queue);
        broker
            .declare(&Topology::new().queue(Queue::new(&queue)))
            .await
            .expect("declare");
        publish(&broker, &queue, 1).await;
        // What a client that crashes on the message does, over and over.
        let channel = broker.open_channel(Role::Consume).await.expect("channel");
        let mut deliveries = 0;
        while deliveries <= DEFAULT_DELIVERY_LIMIT + 1 {
            let got = channel
                .basic_get(queue.as_str().into(), BasicGetOptions::default())
                .await
                .expect("get");
            let Some(got) = got else {
                // A return reaches the queue a moment after the nack.
                tokio::time::sleep(Duration::from_millis(50)).await;
                if depth(&broker, &queue).await == 0 {
                    break;
                }
                continue;
            };
            deliveries += 1;
            got.delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
                .expect("nack");
        }
        assert_eq!(
            deliveries,
            DEFAULT_DELIVERY_LIMIT + 1,
            "RabbitMQ {version}: delivered, then returned {DEFAULT_DELIVERY_LIMIT} times"
        );
        assert_eq!(
            depth(&broker, &dlq).await,
            1,
            "RabbitMQ {version}: kept in the dlq"
        );
        let failed = ErrorQueue::new(broker.clone(), &dlq)
            .list(1)
            .await
            .expect("list");
        assert_eq!(failed[0].death_reason.as_deref(), Some("delivery_limit"));
        delete(&broker, &queue).await;
    }
}

#[tokio::test]
async fn queues_declared_by_an_older_rabbitry_are_declared_again_as_they_are() {
    for (version, broker) in brokers().await {
        let queue = unique("v4-older");
        let dlq = Queue::dead_letter_queue_name(&queue);
        // The work queue and its dlq, as rabbitry declared them before it
        // set delivery limits: no x-delivery-limit.
        let older = Topology::new().queue(Queue::new(&queue).broker_default_delivery_limit());
        let raw_dlq = vec![("x-queue-type", AMQPValue::LongString("quorum".into()))];
        declare_raw(&broker, &dlq, &raw_dlq).await;
        broker.declare(&older).await.expect("older declare");
        broker
            .declare(&Topology::new().queue(Queue::new(&queue)))
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ {version}: {e}"));
        delete(&broker, &queue).await;
    }
}

#[tokio::test]
async fn a_lazy_classic_queue_is_declared_on_every_version() {
    for (version, broker) in brokers().await {
        let queue = unique("v4-lazy");
        let topology = Topology::new().queue(Queue::classic(&queue).lazy(true));
        broker
            .declare(&topology)
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ {version}: {e}"));
        // What was sent: the argument from 3.12 on, no argument before.
        let probe = broker.open_channel(Role::Consume).await.expect("channel");
        let mut without = FieldTable::default();
        without.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(format!("{queue}.dlx").into()),
        );
        let same_without_mode = probe
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                without,
            )
            .await
            .is_ok();
        assert_eq!(
            same_without_mode,
            version.at_least(3, 12),
            "RabbitMQ {version}: x-queue-mode sent only before 3.12"
        );
        let _ = probe.close(200, "done".into()).await;
        // Declaring again is a no-op.
        broker.declare(&topology).await.expect("again");
        delete(&broker, &queue).await;
    }
}

#[tokio::test]
async fn a_broker_that_connects_on_first_use_declares_for_its_version() {
    for (version, connected) in brokers().await {
        let broker = Broker::lazy(connected.config().clone()).expect("lazy broker");
        assert_eq!(broker.server_version(), None, "not connected yet");
        let queue = unique("v4-lazy-broker");
        let dlq = Queue::dead_letter_queue_name(&queue);
        broker
            .declare(&Topology::new().queue(Queue::new(&queue)))
            .await
            .expect("declare");
        assert_eq!(broker.server_version(), Some(version));
        // The error queue got the unlimited form of this version.
        let mut args = vec![("x-queue-type", AMQPValue::LongString("quorum".into()))];
        if version.at_least(4, 0) {
            args.push(("x-delivery-limit", AMQPValue::LongLongInt(-1)));
        }
        declare_raw(&connected, &dlq, &args).await;
        delete(&broker, &queue).await;
    }
}

#[tokio::test]
async fn a_queue_with_nowhere_to_dead_letter_keeps_a_message_past_the_default_limit() {
    for (version, broker) in brokers().await {
        let queue = unique("v4-nodlx");
        broker
            .declare(&Topology::new().queue(Queue::new(&queue).dead_letter(DeadLetter::Off)))
            .await
            .expect("declare");
        publish(&broker, &queue, 1).await;
        // Rejected with requeue (what counts on every version, 4.3 included)
        // well past 4.0's default limit of 20.
        let channel = broker.open_channel(Role::Consume).await.expect("channel");
        let mut returns = 0;
        let mut empty = 0;
        while returns < 25 {
            let got = channel
                .basic_get(queue.as_str().into(), BasicGetOptions::default())
                .await
                .expect("get");
            let Some(got) = got else {
                // A return reaches the queue a moment after the reject.
                empty += 1;
                assert!(
                    empty < 100,
                    "RabbitMQ {version}: lost after {returns} returns"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            empty = 0;
            got.delivery
                .acker
                .reject(BasicRejectOptions { requeue: true })
                .await
                .expect("reject");
            returns += 1;
        }
        let _ = channel.close(200, "done".into()).await;
        assert_eq!(
            depth(&broker, &queue).await,
            1,
            "RabbitMQ {version}: still there after {returns} returns"
        );
        delete(&broker, &queue).await;
    }
}

#[tokio::test]
async fn the_delay_plugin_is_found_missing_and_the_cascade_is_used() {
    if std::env::var("RABBITRY_TEST_DELAYED_PLUGIN").as_deref() == Ok("1") {
        return; // The test broker has the plugin: tests/delay_plugin.rs.
    }
    for (version, broker) in brokers().await {
        let prefix = unique("v4-delay");
        let reconnects = *broker.watch_reconnects().borrow();
        let delays = Delays::builder(
            Publisher::builder(broker.clone())
                .build()
                .expect("publisher"),
        )
        .prefix(&prefix)
        .levels(1)
        .plugin(true)
        .build()
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ {version}: {e}"));
        assert_eq!(
            delays.strategy(),
            DelayStrategy::Cascade,
            "RabbitMQ {version}"
        );
        // The check ran on a connection of its own: the shared ones stayed.
        assert!(
            broker.state(Role::Publish).is_connected(),
            "RabbitMQ {version}"
        );
        assert!(
            broker.state(Role::Consume).is_connected(),
            "RabbitMQ {version}"
        );
        assert_eq!(*broker.watch_reconnects().borrow(), reconnects);
        let channel = broker.open_channel(Role::Consume).await.expect("channel");
        for q in [format!("{prefix}.level-00"), format!("{prefix}.unroutable")] {
            let _ = channel
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for e in ["level-00", "delivery", "unroutable", "plugin"] {
            let e = format!("{prefix}.{e}");
            let _ = channel
                .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
        let _ = channel.close(200, "done".into()).await;
    }
}
