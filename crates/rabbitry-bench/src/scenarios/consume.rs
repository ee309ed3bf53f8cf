//! `consume`: the consumer (auto ack, no-op handler) against raw lapin with
//! the same prefetch and `multiple=true` acks, draining a pre-filled queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use rabbitry_core::{Consumer, Delivery, HandlerResult, RetryPolicy};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::env::{Env, bench_queue, delete, purge, raw_publish};
use crate::report::{Report, Target};

const PREFETCH: u16 = 1000;

pub(crate) async fn run(env: &Env) -> Result<Report, String> {
    let broker = env.broker().await?;
    let raw = env.raw().await?;
    let queue = bench_queue(&broker, "bench-consume").await?;
    let payload = env.payload();
    let mut report = Report::new("consume", Some(Target { min_ratio: 0.95 }));
    for _ in 0..env.rounds {
        purge(&raw, &queue).await?;
        raw_publish(&raw, &queue, &payload, env.messages, 1000).await?;
        report.sdk.push(sdk_round(env, &broker, &queue).await?);

        purge(&raw, &queue).await?;
        raw_publish(&raw, &queue, &payload, env.messages, 1000).await?;
        report.baseline.push(raw_round(env, &raw, &queue).await?);
    }
    delete(&raw, &queue).await;
    report
        .extra
        .insert("prefetch".into(), serde_json::json!(PREFETCH));
    Ok(report)
}

async fn sdk_round(env: &Env, broker: &rabbitry_core::Broker, queue: &str) -> Result<f64, String> {
    let consumer = Consumer::builder(broker.clone(), queue)
        .prefetch(PREFETCH)
        .concurrency(8)
        .retry(RetryPolicy::none())
        .build()
        .map_err(|e| e.to_string())?;
    timed_round(consumer, env.messages).await
}

/// Runs `consumer` with a handler that only counts until it has seen `n`
/// messages (bounded: 10 minutes); returns messages per second.
pub(crate) async fn timed_round(consumer: Consumer, n: usize) -> Result<f64, String> {
    timed_round_with(consumer, n, |_m: Delivery| async { Ok(()) }).await
}

/// Runs `consumer` with `handler` until `n` messages were handled with
/// success (bounded: 10 minutes); returns messages per second.
pub(crate) async fn timed_round_with<H, F>(
    consumer: Consumer,
    n: usize,
    handler: H,
) -> Result<f64, String>
where
    H: Fn(Delivery) -> F + Send + Sync + 'static,
    F: Future<Output = HandlerResult> + Send + 'static,
{
    let count = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let (c, d) = (count.clone(), done.clone());
    let shutdown = CancellationToken::new();
    let start = Instant::now();
    let task = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            consumer
                .run(
                    move |m: Delivery| {
                        let work = handler(m);
                        let (c, d) = (c.clone(), d.clone());
                        async move {
                            work.await?;
                            if c.fetch_add(1, Ordering::Relaxed) + 1 == n {
                                d.notify_one();
                            }
                            Ok(())
                        }
                    },
                    shutdown,
                )
                .await
        })
    };
    let finished = tokio::time::timeout(Duration::from_secs(600), done.notified()).await;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    shutdown.cancel();
    task.await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    finished.map_err(|_| "a round did not finish within 10 minutes".to_string())?;
    Ok(rate)
}

async fn raw_round(env: &Env, raw: &lapin::Connection, queue: &str) -> Result<f64, String> {
    let ch = raw.create_channel().await.map_err(|e| e.to_string())?;
    ch.basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "bench-raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut seen = 0usize;
    while let Some(d) = consumer.next().await {
        let d = d.map_err(|e| e.to_string())?;
        seen += 1;
        // One multiple ack per 100 deliveries (and for the last one).
        if seen.is_multiple_of(100) || seen == env.messages {
            d.acker
                .ack(BasicAckOptions { multiple: true })
                .await
                .map_err(|e| e.to_string())?;
        }
        if seen == env.messages {
            break;
        }
    }
    let rate = env.messages as f64 / start.elapsed().as_secs_f64();
    let _ = ch.close(200, "done".into()).await;
    Ok(rate)
}
