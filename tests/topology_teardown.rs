//! `Broker::teardown` removes what a topology declared, messages included,
//! and is not an error when run twice.

mod common;

use rabbitry::{Binding, Exchange, Message, Publisher, Queue, Topology};
use rabbitry_testkit::{queue_depth, unique};

#[tokio::test]
async fn teardown_removes_queues_exchanges_and_their_messages() {
    let broker = common::broker().await;
    let exchange = unique("teardown-x");
    let queue = unique("teardown-q");
    let topology = Topology::new()
        .exchange(Exchange::topic(&exchange))
        .queue(Queue::new(&queue))
        .binding(Binding::new(&exchange, &queue, "k"));
    broker.declare(&topology).await.expect("declare");
    let publisher = Publisher::builder(broker.clone())
        .build()
        .expect("publisher");
    for i in 0..3 {
        publisher
            .send(Message::bytes(&exchange, "k", format!("m{i}")))
            .await
            .expect("publish");
    }
    assert_eq!(queue_depth(&queue).await, Some(3));

    let report = broker.teardown(&topology).await.expect("teardown");
    // The work queue and its .dlq; the exchange and the .dlx.
    assert_eq!((report.queues, report.exchanges), (2, 2));
    assert_eq!(report.messages_dropped, 3);
    assert_eq!(queue_depth(&queue).await, None, "queue gone");
    assert_eq!(
        queue_depth(&Queue::dead_letter_queue_name(&queue)).await,
        None
    );
    let gone = publisher.send(Message::bytes(&exchange, "k", "late")).await;
    assert!(gone.is_err(), "the exchange is gone: {gone:?}");

    let again = broker.teardown(&topology).await.expect("a second teardown");
    assert_eq!(again.messages_dropped, 0);
}
