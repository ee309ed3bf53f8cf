//! The `x-delayed-message` plugin: detected as missing on the test broker
//! (RabbitMQ 3.10.8 from Debian has no such plugin) without harm to the
//! connections, and used where a broker has it: set
//! `RABBITRY_TEST_DELAYED_PLUGIN=1` against such a broker.

mod common;
#[path = "delay_support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use rabbitry::lapin::options::ExchangeDeclareOptions;
use rabbitry::lapin::types::FieldTable;
use rabbitry::{DelayStrategy, Delays, MAX_CASCADE_LEVELS, Message, Publisher, Role};
use rabbitry_testkit::{services, unique};
use support::{Arrivals, cascade_cleanup};

fn broker_has_the_plugin() -> bool {
    std::env::var("RABBITRY_TEST_DELAYED_PLUGIN").is_ok_and(|v| v == "1")
}

async fn delays_with_plugin(broker: &rabbitry::Broker, prefix: &str, levels: u32) -> Delays {
    Delays::builder(
        Publisher::builder(broker.clone())
            .build()
            .expect("publisher"),
    )
    .prefix(prefix)
    .levels(levels)
    .plugin(true)
    .build()
    .await
    .expect("delays")
}

#[tokio::test]
async fn without_the_plugin_the_cascade_is_used_and_no_connection_is_lost() {
    if broker_has_the_plugin() {
        return;
    }
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "delay-noplugin").await;
    let prefix = unique("delay-noplugin");
    let _cascade = cascade_cleanup(&prefix, MAX_CASCADE_LEVELS);
    let reconnects = *broker.watch_reconnects().borrow();

    // All 28 levels: the broker takes the longest TTL (2^27 s).
    let delays = delays_with_plugin(&broker, &prefix, MAX_CASCADE_LEVELS).await;
    assert_eq!(delays.strategy(), DelayStrategy::Cascade);
    assert_eq!(delays.max_delay(), Duration::from_secs((1 << 28) - 1));

    // The check ran on a connection of its own: the shared ones are intact.
    assert!(broker.state(Role::Publish).is_connected());
    assert!(broker.state(Role::Consume).is_connected());
    assert_eq!(*broker.watch_reconnects().borrow(), reconnects);
    let arrivals = Arrivals::watch(&broker, &queue).await;
    let sent = Instant::now();
    let outcome = delays
        .publish_after(
            Message::bytes("", &queue, "x"),
            Duration::from_millis(1_200),
        )
        .await
        .expect("publish");
    assert!(outcome.is_confirmed());
    let got = arrivals.wait(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    // 1.2 s rounds up to 2 s: the cascade's precision is a second.
    let two = Duration::from_secs(2);
    assert!(
        got[0].at - sent + support::early_allowance(two) >= two,
        "{:?}",
        got[0].at - sent
    );
    assert_eq!(*broker.watch_reconnects().borrow(), reconnects);
}

/// Why the check needs a connection of its own: RabbitMQ 3.x answers an
/// unknown exchange type with 503 COMMAND_INVALID, a connection error; 4.x
/// answers 406 PRECONDITION_FAILED on the channel, and the connection stays.
#[tokio::test]
async fn an_unknown_exchange_type_closes_the_connection_on_rabbitmq_3_and_the_channel_on_4() {
    if broker_has_the_plugin() {
        return;
    }
    let broker = common::broker().await;
    let version = broker.server_version().expect("connected: version known");
    let conn = rabbitry::lapin::Connection::connect(
        services().amqp_url(),
        rabbitry::lapin::ConnectionProperties::default(),
    )
    .await
    .expect("connect");
    let channel = conn.create_channel().await.expect("channel");
    let name = unique("delay-probe");
    let declared = tokio::time::timeout(
        Duration::from_secs(5),
        channel.exchange_declare(
            name.as_str().into(),
            rabbitry::lapin::ExchangeKind::Custom("x-delayed-message".into()),
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("an answer");
    let error = declared.expect_err("no such exchange type here");
    let rabbitmq4 = version.at_least(4, 0);
    let expected = if rabbitmq4 {
        "PRECONDITION_FAILED"
    } else {
        "COMMAND_INVALID"
    };
    assert!(
        error.to_string().contains(expected),
        "RabbitMQ {version}: {error}"
    );
    let closed = rabbitry_testkit::eventually(Duration::from_secs(5), || async {
        !conn.status().connected()
    })
    .await;
    if rabbitmq4 {
        // Still usable: another channel on the same connection works.
        assert!(!closed, "RabbitMQ {version}: the connection was closed");
        let other = conn.create_channel().await.expect("a new channel");
        let _ = other.close(200, "done".into()).await;
        let _ = conn.close(200, "done".into()).await;
    } else {
        assert!(
            closed,
            "RabbitMQ {version}: the connection survived, not just the channel"
        );
    }
}

#[tokio::test]
async fn where_the_broker_has_the_plugin_it_delays_messages() {
    if !broker_has_the_plugin() {
        return;
    }
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "delay-plugin").await;
    let prefix = unique("delay-plugin");
    let _cascade = cascade_cleanup(&prefix, 1);
    let delays = delays_with_plugin(&broker, &prefix, 1).await;
    assert_eq!(delays.strategy(), DelayStrategy::Plugin);
    let arrivals = Arrivals::watch(&broker, &queue).await;
    let mut sent = Vec::new();
    for ms in [1_500, 500] {
        let msg = Message::bytes("", &queue, format!("{ms}"));
        sent.push((msg.id().to_owned(), ms, Instant::now()));
        let outcome = delays
            .publish_after(msg, Duration::from_millis(ms))
            .await
            .expect("publish");
        assert!(outcome.is_confirmed(), "{outcome:?}");
    }
    let got = arrivals.wait(2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2);
    for (id, ms, at) in sent {
        let a = got.iter().find(|a| a.id == id).expect("arrived");
        let asked = Duration::from_millis(ms);
        assert!(
            a.at - at + support::early_allowance(asked) >= asked,
            "{ms} ms came early"
        );
    }
    assert_eq!(got[0].id, got.iter().min_by_key(|a| a.at).expect("one").id);
}
