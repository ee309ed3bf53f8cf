//! What a delayed message carries that could cut its delay short or lose
//! it on the way: its own TTL (`expiration`) and the broker's dead-letter
//! history (`x-death`), against the real broker.

mod common;
#[path = "delay_support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use rabbitry::lapin::types::AMQPValue;
use rabbitry::{HeaderValue, Message};
use rabbitry_testkit::unique;
use support::{Arrivals, cascade_cleanup};

/// A message's own TTL does not apply while it waits: neither a fixed delay
/// queue nor a cascade level lets it go before the delay is over.
#[tokio::test]
async fn a_message_with_a_short_ttl_is_not_delivered_early() {
    let broker = common::broker().await;
    let (queue, mut cleanup) = common::work_queue(&broker, "delay-ttl").await;
    let fixed = Duration::from_secs(2);
    cleanup.queue(format!("{queue}.delay.2000ms"));
    let prefix = unique("delay-ttl");
    let _cascade = cascade_cleanup(&prefix, 2);
    let delays = support::delays_with_fixed(&broker, &prefix, 2, &[fixed]).await;
    let arrivals = Arrivals::watch(&broker, &queue).await;

    // 2 s through the fixed queue, 3 s through levels 1 and 0.
    let mut sent = Vec::new();
    for delay in [fixed, Duration::from_secs(3)] {
        let msg = Message::bytes("", &queue, "x").expiration(Duration::from_millis(200));
        let id = msg.id().to_owned();
        let at = Instant::now();
        let outcome = delays.publish_after(msg, delay).await.expect("publish");
        assert!(outcome.is_confirmed(), "{outcome:?}");
        sent.push((id, delay, at));
    }

    let got = arrivals.wait(2, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 2, "both arrive: {got:?}");
    for (id, delay, at) in &sent {
        let a = got.iter().find(|a| &a.id == id).expect("arrived");
        assert!(
            a.at - *at + support::early_allowance(*delay) >= *delay,
            "{delay:?} with a 200 ms TTL came after {:?}: {a:?}",
            a.at - *at
        );
    }
}

/// A delivery that came through the cascade carries `x-death` entries for
/// its levels. Delayed again as it came (a handler postponing what it got,
/// an operator republishing), it must arrive: RabbitMQ 3.x silently drops a
/// message dead-lettered into a queue its `x-death` names.
#[tokio::test]
async fn a_delivery_delayed_again_with_its_headers_arrives() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "delay-again").await;
    let prefix = unique("delay-again");
    let _cascade = cascade_cleanup(&prefix, 2);
    let delays = support::delays(&broker, &prefix, 2).await;
    // 3 s: levels 1 and 0, so the second pass dead-letters from level 1
    // into level 0, which the first pass's history names.
    let delay = Duration::from_secs(3);

    let first = Message::bytes("", &queue, "again");
    let outcome = delays.publish_after(first, delay).await.expect("publish");
    assert!(outcome.is_confirmed(), "{outcome:?}");
    let got = common::collect(&queue, 1, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 1, "the first pass arrives");
    let headers = got[0].properties.headers().clone().unwrap_or_default();
    assert!(
        headers.inner().contains_key("x-death"),
        "the first pass left its history: {headers:?}"
    );

    let mut again = Message::bytes("", &queue, got[0].data.clone());
    for (name, value) in headers.inner() {
        again = again.header(name.to_string(), header_value(value));
    }
    let id = again.id().to_owned();
    let arrivals = Arrivals::watch(&broker, &queue).await;
    let sent = Instant::now();
    let outcome = delays
        .publish_after(again, delay)
        .await
        .expect("delay again");
    assert!(outcome.is_confirmed(), "{outcome:?}");
    let got = arrivals.wait(1, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 1, "the second pass arrives, not dropped");
    assert_eq!(got[0].id, id);
    let slack = support::early_allowance(delay);
    assert!(
        got[0].at - sent + slack >= delay,
        "early: {:?}",
        got[0].at - sent
    );
}

/// A received header as a handler would copy it onto a new message.
fn header_value(value: &AMQPValue) -> HeaderValue {
    match value {
        AMQPValue::LongString(s) => HeaderValue::Str(String::from_utf8_lossy(s.as_bytes()).into()),
        AMQPValue::ShortString(s) => HeaderValue::Str(s.to_string()),
        AMQPValue::LongLongInt(i) => HeaderValue::Int(*i),
        AMQPValue::LongInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::Timestamp(t) => HeaderValue::Timestamp(*t),
        AMQPValue::Boolean(b) => HeaderValue::Bool(*b),
        AMQPValue::FieldArray(a) => {
            HeaderValue::Array(a.as_slice().iter().map(header_value).collect())
        }
        AMQPValue::FieldTable(t) => HeaderValue::Table(
            t.inner()
                .iter()
                .map(|(k, v)| (k.to_string(), header_value(v)))
                .collect(),
        ),
        _ => HeaderValue::Void,
    }
}
