//! The cascade's routes on the real broker: its exchange-to-exchange
//! bindings come back after a reconnect, and a message crosses every level
//! it falls through.

mod common;
#[path = "delay_support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use rabbitry::lapin::options::ExchangeUnbindOptions;
use rabbitry::lapin::types::FieldTable;
use rabbitry::{ConnectionState, Message, Publisher, Role};
use rabbitry_testkit::{FaultProxy, services, unique};
use support::{Arrivals, cascade_cleanup};

/// The routing key of `seconds` to `queue`: 28 binary digits, highest
/// first, then the destination.
fn cascade_key(seconds: u32, queue: &str) -> String {
    let digits: Vec<String> = (0..28)
        .rev()
        .map(|bit| ((seconds >> bit) & 1).to_string())
        .collect();
    format!("{}.{queue}", digits.join("."))
}

/// A broker that lost a fall-through binding gets it back with the rest of
/// the cascade when rabbitry reconnects: a 2 s message, which falls
/// through level 0 on its way to the delivery exchange, still arrives.
#[tokio::test]
async fn fall_through_bindings_are_declared_again_after_a_reconnect() {
    let proxy = FaultProxy::start(services().amqp_addr()).await;
    let broker = common::broker_via(&proxy).await;
    let direct = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&direct, "delay-rebind").await;
    let prefix = unique("delay-rebind");
    let _cascade = cascade_cleanup(&prefix, 2);
    let delays = support::delays(&broker, &prefix, 2).await;

    let channel = direct.open_channel(Role::Consume).await.expect("channel");
    let fall_through = format!("{}0.#", "*.".repeat(27));
    tokio::time::timeout(
        Duration::from_secs(5),
        channel.exchange_unbind(
            format!("{prefix}.delivery").as_str().into(),
            format!("{prefix}.level-00").as_str().into(),
            fall_through.as_str().into(),
            ExchangeUnbindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("unbind in time")
    .expect("unbind level 0's fall-through");

    let mut state = broker.watch_state(Role::Publish);
    proxy.set_down(true);
    let gone = tokio::time::timeout(
        Duration::from_secs(10),
        state.wait_for(|s| !s.is_connected()),
    );
    assert!(
        gone.await.is_ok_and(|r| r.is_ok()),
        "the connection was cut"
    );
    proxy.set_down(false);
    let back = tokio::time::timeout(
        Duration::from_secs(15),
        state.wait_for(ConnectionState::is_connected),
    );
    assert!(
        back.await.is_ok_and(|r| r.is_ok()),
        "the connection came back"
    );

    let arrivals = Arrivals::watch(&direct, &queue).await;
    let msg = Message::bytes("", &queue, "falls through level 0");
    let id = msg.id().to_owned();
    let sent = Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(15),
        delays.publish_after(msg, Duration::from_secs(2)),
    )
    .await
    .expect("publish bounded")
    .expect("publish");
    assert!(outcome.is_confirmed(), "{outcome:?}");
    let got = arrivals.wait(1, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 1, "it fell through level 0 to its queue");
    assert_eq!(got[0].id, id);
    let two = Duration::from_secs(2);
    assert!(got[0].at - sent + support::early_allowance(two) >= two);
}

/// A 1 s message sent into the level-27 exchange falls through 27
/// exchange-to-exchange bindings, waits 1 s at level 0, and arrives: every
/// level's fall-through route works, without waiting out long delays.
#[tokio::test]
async fn a_message_falls_through_all_27_levels_above_its_own() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "delay-deep").await;
    let prefix = unique("delay-deep");
    let _cascade = cascade_cleanup(&prefix, 28);
    let delays = support::delays(&broker, &prefix, 28).await;
    let arrivals = Arrivals::watch(&broker, &queue).await;

    // The usual way first: it binds the queue to the delivery exchange.
    let first = Message::bytes("", &queue, "1 s, from level 0");
    let first_id = first.id().to_owned();
    let outcome = delays
        .publish_after(first, Duration::from_secs(1))
        .await
        .expect("publish");
    assert!(outcome.is_confirmed(), "{outcome:?}");

    let deep = Message::bytes(
        format!("{prefix}.level-27"),
        cascade_key(1, &queue),
        "1 s, from level 27",
    );
    let deep_id = deep.id().to_owned();
    let sent = Instant::now();
    Publisher::builder(broker.clone())
        .build()
        .expect("publisher")
        .send(deep)
        .await
        .expect("routed into level 27");

    let got = arrivals.wait(2, Duration::from_secs(15)).await;
    let ids: Vec<_> = got.iter().map(|a| a.id.clone()).collect();
    assert!(ids.contains(&first_id), "{ids:?}");
    let deep = got
        .iter()
        .find(|a| a.id == deep_id)
        .expect("arrived from level 27");
    let second = Duration::from_secs(1);
    assert!(
        deep.at - sent + support::early_allowance(second) >= second,
        "early: {:?}",
        deep.at - sent
    );
}

/// Fifty first publishes at once to a destination not used before, through
/// the cascade and through a fixed delay: they share one declaration of
/// its route, and every message arrives.
#[tokio::test]
async fn fifty_concurrent_first_publishes_to_one_destination_all_arrive() {
    let broker = common::broker().await;
    let (queue, mut cleanup) = common::work_queue(&broker, "delay-burst").await;
    let fixed = Duration::from_millis(1_200);
    cleanup.queue(format!("{queue}.delay.1200ms"));
    let prefix = unique("delay-burst");
    let _cascade = cascade_cleanup(&prefix, 1);
    let delays = support::delays_with_fixed(&broker, &prefix, 1, &[fixed]).await;
    let arrivals = Arrivals::watch(&broker, &queue).await;

    let publishes = (0..50).map(|i| {
        let delays = delays.clone();
        let msg = Message::bytes("", &queue, format!("{i}"));
        let delay = if i % 2 == 0 {
            Duration::from_secs(1)
        } else {
            fixed
        };
        tokio::spawn(async move { delays.publish_after(msg, delay).await })
    });
    let outcomes = futures_util::future::join_all(publishes).await;
    for outcome in outcomes {
        let outcome = outcome.expect("task").expect("publish");
        assert!(outcome.is_confirmed(), "{outcome:?}");
    }
    let got = arrivals.wait(50, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 50, "every message arrives");
}
