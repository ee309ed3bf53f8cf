//! Reading an error queue that holds a copy lapin cannot parse (the
//! consumer's rescue puts such copies there, byte for byte) fails that read
//! with a clear error, and does not take the application's consuming
//! connection, and every consumer on it, down with it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rabbitry::{Consumer, Delivery, ErrorQueue, Message, Publisher, Role};
use rabbitry_testkit::{RawClient, RawProperties, RawValue, eventually};

#[tokio::test]
async fn listing_an_unparseable_copy_fails_alone_and_consumers_keep_their_connection() {
    let broker = common::broker().await;
    let (work, _work_cleanup) = common::work_queue(&broker, "eq-foreign-work").await;
    let (errors, _errors_cleanup) = common::work_queue(&broker, "eq-foreign-dlq").await;

    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    let consumer = Consumer::builder(broker.clone(), &work)
        .build()
        .expect("consumer");
    let (shutdown, task) = common::spawn_consumer(&consumer, move |_d: Delivery| {
        h.fetch_add(1, Ordering::SeqCst);
        async { Ok(()) }
    });
    assert!(
        eventually(Duration::from_secs(10), || async {
            consumer.state() == rabbitry::ConsumerState::Consuming
        })
        .await
    );

    let mut raw = RawClient::connect_test_broker().await.expect("raw connect");
    let bad = RawProperties {
        headers: Some(vec![(
            b"\xfe\xff".to_vec(),
            RawValue::LongString(b"v".to_vec()),
        )]),
        ..RawProperties::default()
    };
    raw.publish("", &errors, &bad, b"x")
        .await
        .expect("published");
    raw.close().await.expect("raw close");

    let reconnects = *broker.watch_reconnects().borrow();
    let listed = ErrorQueue::new(broker.clone(), &errors).list(10).await;
    assert!(listed.is_err(), "lapin cannot read it: {listed:?}");

    let publisher = Publisher::builder(broker.clone())
        .build()
        .expect("publisher");
    publisher
        .send(Message::bytes("", &work, "after"))
        .await
        .expect("published");
    assert!(
        eventually(Duration::from_secs(10), || async {
            handled.load(Ordering::SeqCst) == 1
        })
        .await,
        "the consumer kept consuming"
    );
    assert_eq!(
        *broker.watch_reconnects().borrow(),
        reconnects,
        "the shared connections were not lost"
    );
    assert_eq!(
        broker.state(Role::Consume),
        rabbitry::ConnectionState::Connected
    );
    assert_eq!(
        rabbitry_testkit::queue_depth(&errors).await,
        Some(1),
        "nothing lost"
    );
    common::stop_consumer(shutdown, task).await;
}
