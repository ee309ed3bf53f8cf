//! Delayed messages through fixed delay queues and the binary cascade,
//! against the real broker, with short delays.

mod common;
#[path = "delay_support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use rabbitry::lapin::options::QueueDeleteOptions;
use rabbitry::{Error, Message, Role};
use rabbitry_testkit::unique;
use support::{Arrivals, cascade_cleanup};

#[tokio::test]
async fn a_fixed_delay_message_arrives_after_its_delay_and_not_before() {
    let broker = common::broker().await;
    let (queue, mut cleanup) = common::work_queue(&broker, "delay-fixed").await;
    let delay = Duration::from_millis(1_500);
    cleanup.queue(format!("{queue}.delay.1500ms"));
    let prefix = unique("delay-fixed-cascade");
    let _cascade = cascade_cleanup(&prefix, 1);
    let delays = support::delays_with_fixed(&broker, &prefix, 1, &[delay]).await;
    let arrivals = Arrivals::watch(&broker, &queue).await;

    let msg = Message::bytes("", &queue, "later");
    let id = msg.id().to_owned();
    let sent = Instant::now();
    let outcome = delays.publish_after(msg, delay).await.expect("publish");
    assert!(outcome.is_confirmed(), "{outcome:?}");
    // The cascade (one level: 1 s at most) could not have carried it.
    assert!(delay > delays.max_delay());

    let got = arrivals.wait(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "exactly one copy");
    assert_eq!(got[0].id, id);
    let slack = support::early_allowance(delay);
    assert!(
        got[0].at - sent + slack >= delay,
        "early: {:?}",
        got[0].at - sent
    );
    let due = got[0].due.expect("due header");
    assert!(got[0].wall + slack >= due, "arrived before its due time");
    // It came through the fixed queue, whose dead-letter routing key is the
    // destination's name (through the cascade its key would start with the
    // delay's binary digits).
    assert_eq!(got[0].routing_key, queue);
    assert_eq!(
        rabbitry_testkit::queue_depth(&format!("{queue}.delay.1500ms")).await,
        Some(0)
    );
}

#[tokio::test]
async fn cascade_messages_with_mixed_delays_arrive_no_earlier_and_in_delay_order() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "delay-cascade").await;
    let prefix = unique("delay-cascade");
    let _cascade = cascade_cleanup(&prefix, 3);
    let delays = support::delays(&broker, &prefix, 3).await;
    let arrivals = Arrivals::watch(&broker, &queue).await;

    let mut sent = Vec::new();
    for secs in [1, 3, 2, 5] {
        let msg = Message::bytes("", &queue, format!("{secs}s"));
        let id = msg.id().to_owned();
        let at = Instant::now();
        let outcome = delays
            .publish_after(msg, Duration::from_secs(secs))
            .await
            .expect("publish");
        assert!(outcome.is_confirmed(), "{outcome:?}");
        sent.push((id, secs, at));
    }

    let got = arrivals.wait(4, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 4, "all four arrive: {got:?}");
    for (id, secs, at) in &sent {
        let a = got.iter().find(|a| &a.id == id).expect("arrived");
        let waited = a.at - *at;
        let slack = support::early_allowance(Duration::from_secs(*secs));
        assert!(
            waited + slack >= Duration::from_secs(*secs),
            "{secs} s came after {waited:?}"
        );
        assert!(
            a.wall + slack >= a.due.expect("due header"),
            "{secs} s before its due time"
        );
        assert!(
            a.routing_key.ends_with(&format!(".{queue}")),
            "the key names the destination: {}",
            a.routing_key
        );
    }
    // No head-of-line blocking: each shorter delay overtook the longer ones
    // published before it.
    let order: Vec<u64> = got
        .iter()
        .map(|a| sent.iter().find(|s| s.0 == a.id).expect("sent").1)
        .collect();
    assert_eq!(order, [1, 2, 3, 5]);
}

#[tokio::test]
async fn a_cascade_message_whose_destination_was_deleted_is_parked_and_does_not_hold_back_its_level()
 {
    let broker = common::broker().await;
    let (gone, _c1) = common::work_queue(&broker, "delay-gone").await;
    let (alive, _c2) = common::work_queue(&broker, "delay-alive").await;
    let prefix = unique("delay-trap");
    let _cascade = cascade_cleanup(&prefix, 2);
    let delays = support::delays(&broker, &prefix, 2).await;

    // More than the dead-letter worker keeps in flight (32): enough to
    // hold back the whole level if they stayed in it.
    const LOST_CAUSES: usize = 40;
    let mut parked_ids = Vec::new();
    for i in 0..LOST_CAUSES {
        let msg = Message::bytes("", &gone, format!("{i}"));
        parked_ids.push(msg.id().to_owned());
        let outcome = delays
            .publish_after(msg, Duration::from_secs(2))
            .await
            .expect("publish");
        assert!(outcome.is_confirmed());
    }
    let channel = broker.open_channel(Role::Consume).await.expect("channel");
    channel
        .queue_delete(gone.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete the destination");

    let arrivals = Arrivals::watch(&broker, &alive).await;
    let behind = Message::bytes("", &alive, "behind");
    let behind_id = behind.id().to_owned();
    let outcome = delays
        .publish_after(behind, Duration::from_secs(2))
        .await
        .expect("publish behind them");
    assert!(outcome.is_confirmed());
    let got = arrivals.wait(1, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 1, "the message behind them was not blocked");
    assert_eq!(got[0].id, behind_id);

    // And the others are not lost: parked where an operator sees them,
    // with their destination in the routing key.
    let parked = common::collect(&delays.unroutable_queue(), 40, Duration::from_secs(15)).await;
    let mut got_ids = rabbitry_testkit::message_ids(&parked);
    got_ids.sort();
    parked_ids.sort();
    assert_eq!(got_ids, parked_ids);
    assert!(
        parked
            .iter()
            .all(|d| d.routing_key.as_str().ends_with(&format!(".{gone}")))
    );
}

#[tokio::test]
async fn hostile_delays_and_destinations_get_clear_errors() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "delay-hostile").await;
    let prefix = unique("delay-hostile");
    let _cascade = cascade_cleanup(&prefix, 2);
    let delays = support::delays_with_fixed(&broker, &prefix, 2, &[Duration::from_secs(5)]).await;
    let invalid = |e: Error| match e {
        Error::InvalidMessage { reason } => reason,
        other => panic!("expected an invalid-message error, got {other}"),
    };
    let m = || Message::bytes("", &queue, "x");

    let zero = delays
        .publish_after(m(), Duration::ZERO)
        .await
        .expect_err("zero");
    assert!(invalid(zero).contains("zero"));
    let long = delays
        .publish_after(m(), Duration::from_secs(4))
        .await
        .expect_err("too long");
    assert!(invalid(long).contains("longer than"));
    let past = delays
        .publish_at(m(), std::time::SystemTime::now() - Duration::from_secs(1))
        .await
        .expect_err("past");
    assert!(invalid(past).contains("not in the future"));
    let exchange = Message::bytes("amq.topic", &queue, "x");
    let exchange = delays
        .publish_after(exchange, Duration::from_secs(1))
        .await
        .expect_err("exchange");
    assert!(invalid(exchange).contains("default exchange"));
    let name = Message::bytes("", "q".repeat(200), "x");
    let name = delays
        .publish_after(name, Duration::from_secs(1))
        .await
        .expect_err("long name");
    assert!(invalid(name).contains("at most 199"));
    for delay in [Duration::from_secs(1), Duration::from_secs(5)] {
        let missing = Message::bytes("", unique("delay-nowhere"), "x");
        match delays.publish_after(missing, delay).await {
            Err(Error::Broker { code: 404, .. }) => {}
            other => panic!("a missing destination is a 404 at publish time: {other:?}"),
        }
    }
    // And the publisher is still fine after all that: a message due at a
    // time arrives, not before it.
    let arrivals = Arrivals::watch(&broker, &queue).await;
    let at = std::time::SystemTime::now() + Duration::from_millis(1_500);
    let ok = delays.publish_at(m(), at).await.expect("publish");
    assert!(ok.is_confirmed());
    let got = arrivals.wait(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert!(got[0].wall >= at, "arrived before the time it was due at");
}
