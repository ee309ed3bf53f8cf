//! `publish`: the reliable publisher (4 confirm channels) against raw lapin
//! on one channel with 1000 confirms in flight.

use std::time::Instant;

use futures_util::StreamExt;
use rabbitry_core::{Message, Publisher};
use serde_json::json;

use crate::env::{Env, bench_queue, delete, purge, raw_publish};
use crate::report::{Report, Target, percentile};

pub(crate) async fn run(env: &Env) -> Result<Report, String> {
    let broker = env.broker().await?;
    let raw = env.raw().await?;
    let queue = bench_queue(&broker, "bench-publish").await?;
    let publisher = Publisher::builder(broker.clone())
        .channels(4)
        .window(1000)
        .build()
        .map_err(|e| e.to_string())?;
    let payload = env.payload();
    let mut report = Report::new("publish", Some(Target { min_ratio: 1.2 }));
    let (mut sdk_lat, mut raw_lat) = (Vec::new(), Vec::new());
    for _ in 0..env.rounds {
        purge(&raw, &queue).await?;
        let start = Instant::now();
        let lat = sdk_publish(&publisher, &queue, &payload, env.messages).await?;
        report
            .sdk
            .push(env.messages as f64 / start.elapsed().as_secs_f64());
        sdk_lat.extend(lat);

        purge(&raw, &queue).await?;
        let start = Instant::now();
        let lat = raw_publish(&raw, &queue, &payload, env.messages, 1000).await?;
        report
            .baseline
            .push(env.messages as f64 / start.elapsed().as_secs_f64());
        raw_lat.extend(lat);
    }
    delete(&raw, &queue).await;
    let ms = |v: &[f64], p| percentile(v, p).map(|x| (x * 100.0).round() / 100.0);
    report
        .extra
        .insert("p50_ms".into(), json!(ms(&sdk_lat, 0.5)));
    report
        .extra
        .insert("p99_ms".into(), json!(ms(&sdk_lat, 0.99)));
    report
        .extra
        .insert("baseline_p50_ms".into(), json!(ms(&raw_lat, 0.5)));
    report
        .extra
        .insert("baseline_p99_ms".into(), json!(ms(&raw_lat, 0.99)));
    Ok(report)
}

/// Publishes `n` messages through the SDK with enough in flight to fill
/// every channel's window; returns confirm latencies in milliseconds.
pub(crate) async fn sdk_publish(
    publisher: &Publisher,
    queue: &str,
    payload: &[u8],
    n: usize,
) -> Result<Vec<f64>, String> {
    let results: Vec<Result<f64, String>> = futures_util::stream::iter(0..n)
        .map(|_| {
            let publisher = publisher.clone();
            let msg = Message::bytes("", queue, payload.to_vec());
            async move {
                let start = Instant::now();
                publisher
                    .send(msg)
                    .await
                    .map(|()| start.elapsed().as_secs_f64() * 1000.0)
                    .map_err(|e| e.to_string())
            }
        })
        .buffer_unordered(4000)
        .collect()
        .await;
    results.into_iter().collect()
}
