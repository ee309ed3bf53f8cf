//! Payloads a service must survive: a body over the size limit among
//! publishes in flight, and bodies a typed JSON handler cannot decode mixed
//! with good ones. Each bad message costs itself alone, once: an error for
//! the caller, or one copy in the error queue, never a requeue loop.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rabbitry::{Delivery, Error, HeaderValue, Message, Publisher, consumer_json};
use rabbitry_testkit::{eventually, message_ids, queue_depth};
use serde::Deserialize;

/// One byte over the publisher's default limit (16 MiB, RabbitMQ 4's
/// `max_message_size`).
#[tokio::test]
async fn a_body_over_the_limit_fails_alone_while_200_publishes_in_flight_confirm() {
    let limit = 16 * 1024 * 1024;
    let verdict = common::one_bad_among_200("hostile-big-body", |queue| {
        Message::bytes("", queue, vec![b'x'; limit + 1])
    })
    .await;
    match verdict {
        Err(err @ Error::TooLarge { size, max, .. }) => {
            assert_eq!((size, max), (limit + 1, limit), "{err}");
            assert!(!err.is_retryable(), "no retry makes it smaller");
            assert!(
                err.to_string().contains(&limit.to_string()),
                "the limit is named: {err}"
            );
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

/// RabbitMQ closes the whole connection (541) on a NaN or infinite float
/// header: it is refused before sending.
#[tokio::test]
async fn a_nan_or_infinite_float_header_fails_alone_while_200_publishes_in_flight_confirm() {
    let bad = [
        HeaderValue::Float(f64::NAN),
        HeaderValue::Float32(f32::INFINITY),
        HeaderValue::Array(vec![HeaderValue::Float(f64::NEG_INFINITY)]),
    ];
    for value in bad {
        let shown = format!("{value:?}");
        let verdict = common::one_bad_among_200("hostile-nan", move |queue| {
            Message::bytes("", queue, "x").header("reading", value)
        })
        .await;
        match verdict {
            Err(err @ Error::InvalidMessage { .. }) => {
                assert!(err.to_string().contains("float"), "{err}");
                assert!(!err.is_retryable());
            }
            other => panic!("{shown}: expected InvalidMessage, got {other:?}"),
        }
    }
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Order {
    id: u64,
    sku: String,
}

/// `(message id, body)`: bodies that are not an `Order`.
fn garbage() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("empty", Vec::new()),
        ("not-utf8", vec![0xff, 0xfe, 0xfd, 0x00, 0x80]),
        ("truncated", br#"{"id": 1, "sku": "ab"#.to_vec()),
        ("wrong-type", br#"{"id": "one", "sku": 2}"#.to_vec()),
        ("array", b"[1, 2, 3]".to_vec()),
        ("huge-number", br#"{"id": 1e400, "sku": "x"}"#.to_vec()),
        (
            "overflow",
            br#"{"id": 18446744073709551616, "sku": "x"}"#.to_vec(),
        ),
        ("nested-100k", "[".repeat(100_000).into_bytes()),
        ("bom", b"\xef\xbb\xbf{\"id\":1,\"sku\":\"x\"}".to_vec()),
        ("nul-bytes", b"{\"id\":1,\0\"sku\":\"x\"}".to_vec()),
        ("trailing", br#"{"id":1,"sku":"x"} {"id":2}"#.to_vec()),
        ("xml", b"<order id=\"1\"/>".to_vec()),
    ]
}

#[tokio::test]
async fn undecodable_bodies_are_dead_lettered_once_and_good_ones_handled() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "hostile-garbage").await;
    let dlq = format!("{queue}.dlq");
    let publisher = Publisher::builder(broker.clone())
        .build()
        .expect("publisher");
    let bad = garbage();
    let mut batch = Vec::new();
    for i in 0..40u64 {
        let body = serde_json::json!({"id": i, "sku": format!("sku-{i}")});
        batch.push(
            Message::json("", &queue, &body)
                .expect("json")
                .message_id(format!("good-{i}")),
        );
        if let Some((id, body)) = bad.get(i as usize / 3).filter(|_| i % 3 == 0) {
            batch.push(
                Message::bytes("", &queue, body.clone())
                    .content_type("application/json")
                    .message_id(*id),
            );
        }
    }
    for r in publisher.send_all(&batch).await {
        r.expect("published");
    }

    let handled: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let consumer = rabbitry::Consumer::builder(broker.clone(), &queue)
        .concurrency(8)
        .build()
        .expect("consumer");
    let h = handled.clone();
    let (shutdown, task) = common::spawn_consumer(
        &consumer,
        consumer_json(move |_order: Order, d: Delivery| {
            *h.lock()
                .expect("lock")
                .entry(d.id().to_owned())
                .or_default() += 1;
            async { Ok(()) }
        }),
    );
    let settled = eventually(Duration::from_secs(30), || async {
        let m = consumer.metrics();
        m.succeeded == 40 && m.dead_lettered == bad.len() as u64
    })
    .await;
    // A loop would show as more attempts after everything was settled once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    common::stop_consumer(shutdown, task).await;
    let metrics = consumer.metrics();
    assert!(settled, "{metrics:?}");
    assert_eq!(
        metrics.failed_attempts,
        bad.len() as u64,
        "one attempt each: {metrics:?}"
    );
    assert_eq!(metrics.requeued, 0, "{metrics:?}");
    assert_eq!(
        metrics.delayed_retries, 0,
        "a decode error is not retried: {metrics:?}"
    );

    let handled = handled.lock().expect("lock").clone();
    assert_eq!(handled.len(), 40, "{handled:?}");
    assert!(handled.values().all(|n| *n == 1), "{handled:?}");
    assert!(
        handled.keys().all(|id| id.starts_with("good-")),
        "{handled:?}"
    );

    let mut dead =
        message_ids(&common::collect(&dlq, bad.len() as u32, Duration::from_secs(10)).await);
    dead.sort();
    let mut expected: Vec<String> = bad.iter().map(|(id, _)| (*id).to_owned()).collect();
    expected.sort();
    assert_eq!(dead, expected, "each bad body once in the error queue");
    assert_eq!(queue_depth(&queue).await, Some(0));
}
