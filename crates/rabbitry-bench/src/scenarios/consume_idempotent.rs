//! `consume-idempotent`: the same consumer with and without the Redis
//! idempotency layer, draining a pre-filled queue of messages with distinct
//! ids (so every one is claimed, handled and marked done: the layer's full
//! cost of two Redis round trips per message, shared over the multiplexed
//! connection). Rounds alternate: idempotent, plain, idempotent, plain.

use std::time::Duration;

use rabbitry_core::{Consumer, Idempotency, RetryPolicy};
use rabbitry_redis::RedisStore;

use crate::env::{Env, Meter, bench_queue, delete, purge, raw_publish_with_ids};
use crate::report::{Report, Target};

const PREFETCH: u16 = 1000;
/// Handlers at once on both sides: enough to overlap the Redis round trips.
const CONCURRENCY: usize = 256;

pub(crate) async fn run(env: &Env) -> Result<Report, String> {
    let broker = env.broker().await?;
    let raw = env.raw().await?;
    let redis_url = rabbitry_testkit::services().redis_url.clone();
    let store = RedisStore::builder(redis_url)
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let queue = bench_queue(&broker, "bench-idem").await?;
    let payload = env.payload();
    let mut report = Report::new("consume-idempotent", Some(Target { min_ratio: 0.8 }));
    // Client CPU per message of each side, in microseconds, per round.
    let mut cpu: (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
    for round in 0..env.rounds {
        let ids = format!("{queue}-{round}");
        purge(&raw, &queue).await?;
        raw_publish_with_ids(&raw, &queue, &payload, env.messages, &format!("{ids}-a")).await?;
        // Keys expire by themselves soon after the run.
        let idem = Idempotency::builder(store.clone())
            .prefix(format!("rabbitry-bench:{ids}"))
            .retention(Duration::from_secs(120))
            .build()
            .map_err(|e| e.to_string())?;
        report
            .sdk
            .push(round_rate(env, &broker, &queue, Some(&idem), &mut cpu.0).await?);
        let m = idem.metrics();
        if m.completed != env.messages as u64 {
            return Err(format!(
                "the idempotent side handled {} of {}",
                m.completed, env.messages
            ));
        }

        purge(&raw, &queue).await?;
        raw_publish_with_ids(&raw, &queue, &payload, env.messages, &format!("{ids}-b")).await?;
        report
            .baseline
            .push(round_rate(env, &broker, &queue, None, &mut cpu.1).await?);
    }
    delete(&raw, &queue).await;
    report
        .extra
        .insert("prefetch".into(), serde_json::json!(PREFETCH));
    report
        .extra
        .insert("concurrency".into(), serde_json::json!(CONCURRENCY));
    let us = |v: &[f64]| crate::report::median(v).map(|m| (m * 10.0).round() / 10.0);
    report.extra.insert(
        "client_cpu_us_per_msg".into(),
        serde_json::json!({ "sdk": us(&cpu.0), "baseline": us(&cpu.1) }),
    );
    report.extra.insert(
        "baseline_is".into(),
        serde_json::json!("the same consumer without the layer"),
    );
    Ok(report)
}

async fn round_rate(
    env: &Env,
    broker: &rabbitry_core::Broker,
    queue: &str,
    idem: Option<&Idempotency>,
    cpu_us: &mut Vec<f64>,
) -> Result<f64, String> {
    let mut builder = Consumer::builder(broker.clone(), queue)
        .prefetch(PREFETCH)
        .concurrency(CONCURRENCY)
        .retry(RetryPolicy::none());
    if let Some(idem) = idem {
        builder = builder.idempotent(idem.layer());
    }
    let consumer = builder.build().map_err(|e| e.to_string())?;
    let meter = Meter::start();
    let rate = super::consume::timed_round(consumer, env.messages).await?;
    // The round's own rate; the meter for the CPU per message.
    meter.rate(env.messages, cpu_us);
    Ok(rate)
}
