//! Waiting for conditions and reading queues, for assertions.

use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

use crate::services;

/// Polls `check` every 50 ms until it returns true or `limit` passes.
/// Returns whether it became true.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn connect() -> Connection {
    Connection::connect(services().amqp_url(), ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test broker: {e}"))
}

/// The number of ready messages in `queue`, or `None` if it does not exist.
pub async fn queue_depth(queue: &str) -> Option<u32> {
    let conn = connect().await;
    let ch = conn.create_channel().await.ok()?;
    let opts = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let q = ch
        .queue_declare(queue.into(), opts, FieldTable::default())
        .await
        .ok();
    let _ = conn.close(200, "done".into()).await;
    q.map(|q| q.message_count())
}

/// Takes every ready message from `queue`, acking each, and returns them.
pub async fn drain(queue: &str) -> Vec<Delivery> {
    let conn = connect().await;
    let ch = conn.create_channel().await.expect("channel");
    let mut out = Vec::new();
    while let Some(msg) = ch
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .unwrap_or_else(|e| panic!("basic.get on {queue}: {e}"))
    {
        msg.delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
        out.push(msg.delivery);
    }
    let _ = conn.close(200, "done".into()).await;
    out
}

/// Waits until `queue` holds at least `n` ready messages (or `limit`
/// passes), then drains and returns them.
pub async fn collect(queue: &str, n: u32, limit: Duration) -> Vec<Delivery> {
    eventually(limit, || async {
        queue_depth(queue).await.unwrap_or(0) >= n
    })
    .await;
    drain(queue).await
}

/// The message ids of `deliveries`, in order.
pub fn message_ids(deliveries: &[Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| {
            d.properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default()
        })
        .collect()
}
