//! `publish`: the reliable publisher (4 confirm channels, 1000 in flight
//! each) against raw lapin with the same channels and in flight; raw lapin
//! on one channel is a second line. Client CPU per message for each.

use std::time::Instant;

use futures_util::StreamExt;
use rabbitry_core::{Message, Publisher};
use serde_json::json;

use crate::env::{Env, Meter, Side, bench_queue, delete, purge, raw_publish, raw_publish_channels};
use crate::report::{Report, Target, median, percentile};

pub(crate) async fn run(env: &Env) -> Result<Report, String> {
    let broker = env.broker().await?;
    let raw = env.raw().await?;
    let queue = bench_queue(&broker, "bench-publish").await?;
    let publisher = Publisher::builder(broker.clone())
        .channels(CHANNELS)
        .window(WINDOW)
        .build()
        .map_err(|e| e.to_string())?;
    let payload = env.payload();
    let mut report = Report::new("publish", Some(Target { min_ratio: 0.95 }));
    let (mut sdk_lat, mut raw_lat) = (Vec::new(), Vec::new());
    let (mut sdk_cpu, mut raw_cpu, mut one_channel) = (Vec::new(), Vec::new(), Vec::new());
    let n = env.messages;
    for _ in 0..env.rounds {
        if env.runs(Side::Sdk) {
            purge(&raw, &queue).await?;
            let m = Meter::start();
            sdk_lat.extend(sdk_publish(&publisher, &queue, &payload, n).await?);
            report.sdk.push(m.rate(n, &mut sdk_cpu));
        }
        if env.runs(Side::Baseline) {
            purge(&raw, &queue).await?;
            let m = Meter::start();
            let channels = (CHANNELS, WINDOW);
            raw_lat.extend(raw_publish_channels(&raw, &queue, &payload, n, channels).await?);
            report.baseline.push(m.rate(n, &mut raw_cpu));
        }
        if env.only.is_none() {
            purge(&raw, &queue).await?;
            let m = Meter::start();
            raw_publish(&raw, &queue, &payload, n, WINDOW).await?;
            one_channel.push(m.rate(n, &mut Vec::new()));
        }
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
    let us = |v: &[f64]| median(v).map(|m| (m * 10.0).round() / 10.0);
    report.extra.insert(
        "client_cpu_us_per_msg".into(),
        json!({ "sdk": us(&sdk_cpu), "baseline": us(&raw_cpu) }),
    );
    report.extra.insert(
        "one_channel_msg_s".into(),
        json!(median(&one_channel).map(f64::round)),
    );
    report.extra.insert(
        "baseline_is".into(),
        json!(format!(
            "raw lapin, {CHANNELS} channels x {WINDOW} in flight"
        )),
    );
    Ok(report)
}

const CHANNELS: usize = 4;
const WINDOW: usize = 1000;

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
            // The send future owns the message: nothing else is kept per
            // publish but the start time.
            let send = publisher.send(Message::bytes("", queue, payload.to_vec()));
            async move {
                let start = Instant::now();
                send.await
                    .map(|()| start.elapsed().as_secs_f64() * 1000.0)
                    .map_err(|e| e.to_string())
            }
        })
        .buffer_unordered(4000)
        .collect()
        .await;
    results.into_iter().collect()
}
