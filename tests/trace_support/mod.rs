//! The flow both trace-context tests run: one message published directly,
//! one through the transactional outbox and the relay, both consumed.
#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rabbitry::postgres::{Relay, RelayConfig};
use rabbitry::{Consumer, Delivery, Message, Publisher, TRACEPARENT_HEADER};

use crate::common;

/// The `traceparent` each consumed message carried, by body.
pub type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// Sends `direct` with the publisher and `queued` through the outbox and
/// one relay batch to `queue`, and consumes both.
pub async fn send_both_and_consume(
    broker: &rabbitry::Broker,
    queue: &str,
    direct: Message,
    queued: Message,
) -> Seen {
    let (_db, store) = common::outbox().await;
    let publisher = Publisher::builder(broker.clone())
        .build()
        .expect("publisher");
    publisher.send(direct).await.expect("published");
    let mut tx = store.pool().begin().await.expect("begin");
    store.enqueue_in(&mut tx, &queued).await.expect("enqueue");
    tx.commit().await.expect("commit");
    let relay = Relay::new(store.clone(), publisher, RelayConfig::default()).expect("relay");
    let report = relay.run_batch().await.expect("relay batch");
    assert_eq!(report.published, 1, "the relay published the row");

    let seen: Seen = Arc::default();
    let consumer = Consumer::builder(broker.clone(), queue)
        .build()
        .expect("consumer");
    let (shutdown, task) = common::spawn_consumer(&consumer, {
        let seen = seen.clone();
        move |d: Delivery| {
            let seen = seen.clone();
            async move {
                let tp = d
                    .header(TRACEPARENT_HEADER)
                    .and_then(|h| h.as_str())
                    .unwrap_or_default()
                    .to_owned();
                let body = String::from_utf8_lossy(d.payload()).into_owned();
                seen.lock().expect("lock").push((body, tp));
                Ok::<(), rabbitry::HandlerError>(())
            }
        }
    });
    let c = consumer.clone();
    let both = common::eventually(Duration::from_secs(30), || {
        let n = c.metrics().succeeded;
        async move { n == 2 }
    })
    .await;
    common::stop_consumer(shutdown, task).await;
    assert!(both, "both messages consumed: {:?}", consumer.metrics());
    seen
}

/// The `traceparent` a message was created with.
pub fn traceparent(m: &Message) -> String {
    m.properties()
        .headers
        .get(TRACEPARENT_HEADER)
        .and_then(|h| h.as_str())
        .expect("every message has a traceparent")
        .to_owned()
}
