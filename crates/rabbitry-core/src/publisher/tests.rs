//! The publisher's own bookkeeping, without a broker.

use std::time::Duration;

use futures_util::FutureExt;

use crate::{Error, Message, Publisher};

fn publisher() -> Publisher {
    Publisher::builder(crate::consumer::unreachable_broker())
        .build()
        .expect("publisher")
}

/// Callers that pipeline allocate one send future per message: counting
/// it in flight must not make it bigger (it was 896 bytes before, see
/// docs/benchmarks.md).
#[tokio::test]
async fn counting_a_publish_in_flight_does_not_grow_its_future() {
    let publisher = publisher();
    let send = publisher.send(Message::bytes("", "q", "x"));
    let size = std::mem::size_of_val(&send);
    eprintln!("send future: {size} bytes");
    assert!(size <= 896, "the send future is {size} bytes");
}

#[tokio::test]
async fn a_closed_publisher_refuses_at_once_and_a_dropped_publish_counts_out() {
    let publisher = publisher();
    // Started, then dropped mid-way (its channel never opens here).
    let mut send = Box::pin(publisher.send(Message::bytes("", "q", "x")));
    assert!(send.as_mut().now_or_never().is_none());
    assert_eq!(publisher.inner.inflight.pending(), 1);
    drop(send);
    assert_eq!(publisher.inner.inflight.pending(), 0);

    publisher
        .close(Duration::from_secs(1))
        .await
        .expect("nothing in flight");
    let refused = publisher
        .publish(Message::bytes("", "q", "x"))
        .now_or_never()
        .expect("at once");
    assert!(matches!(refused, Err(Error::Shutdown)), "{refused:?}");
    assert_eq!(publisher.inner.inflight.pending(), 0);
    // The connection attempt the dropped publish began ends before the
    // runtime does.
    publisher.broker().close().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
}
