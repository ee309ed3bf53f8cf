//! `ordered`: ordered consumption with per-key lanes (1,000 keys,
//! concurrency 16, in-place retries) against the plain unordered consumer
//! (concurrency 16), draining the same pre-filled queue of keyed messages
//! in the same run.

use rabbitry_core::{Consumer, Lanes, Message, OrderedRetry, Publisher, RetryPolicy};

use super::consume::timed_round;
use crate::env::{Env, bench_queue, delete, purge};
use crate::report::{Report, Target};

const KEYS: usize = 1000;
const CONCURRENCY: usize = 16;
const PREFETCH: u16 = 1000;

pub(crate) async fn run(env: &Env) -> Result<Report, String> {
    let broker = env.broker().await?;
    let raw = env.raw().await?;
    let queue = bench_queue(&broker, "bench-ordered").await?;
    let publisher = Publisher::builder(broker.clone())
        .build()
        .map_err(|e| e.to_string())?;
    let payload = env.payload();
    let messages: Vec<Message> = (0..env.messages)
        .map(|i| {
            Message::bytes("", &queue, payload.clone()).partition_key(format!("key-{}", i % KEYS))
        })
        .collect();
    let fill = async || -> Result<(), String> {
        purge(&raw, &queue).await?;
        for chunk in messages.chunks(1000) {
            for r in publisher.send_all(chunk).await {
                r.map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    };
    let mut report = Report::new("ordered", Some(Target { min_ratio: 0.9 }));
    for _ in 0..env.rounds {
        fill().await?;
        let lanes = Consumer::builder(broker.clone(), &queue)
            .prefetch(PREFETCH)
            .dispatch(Lanes::new(CONCURRENCY))
            .ordered(OrderedRetry::default())
            .build()
            .map_err(|e| e.to_string())?;
        report.sdk.push(timed_round(lanes, env.messages).await?);

        fill().await?;
        let plain = Consumer::builder(broker.clone(), &queue)
            .prefetch(PREFETCH)
            .concurrency(CONCURRENCY)
            .retry(RetryPolicy::none())
            .build()
            .map_err(|e| e.to_string())?;
        report
            .baseline
            .push(timed_round(plain, env.messages).await?);
    }
    delete(&raw, &queue).await;
    for (k, v) in [("keys", KEYS), ("concurrency", CONCURRENCY)] {
        report.extra.insert(k.into(), serde_json::json!(v));
    }
    Ok(report)
}
