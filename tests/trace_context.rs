//! W3C trace context travels with a message unchanged: the `traceparent` a
//! message was created with reaches the consumer whether it was published
//! directly or went through the transactional outbox and the relay.
//! Against the real broker and Postgres. (With the `otel` feature,
//! `trace_context_otel.rs` checks that the consumer's span continues it.)

mod common;
mod trace_support;

use rabbitry::Message;

#[tokio::test]
async fn the_traceparent_reaches_the_consumer_directly_and_through_the_outbox() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "trace").await;
    let direct = Message::bytes("", &queue, "direct");
    let queued = Message::bytes("", &queue, "queued");
    let (d, q) = (
        trace_support::traceparent(&direct),
        trace_support::traceparent(&queued),
    );
    assert_ne!(d, q, "outside a traced span, each message starts a trace");
    let seen = trace_support::send_both_and_consume(&broker, &queue, direct, queued).await;
    let mut seen = seen.lock().expect("lock").clone();
    seen.sort();
    assert_eq!(seen, [("direct".to_owned(), d), ("queued".to_owned(), q)]);
}
