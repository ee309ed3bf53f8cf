//! `delay-precision`: messages with random delays of 1 to 10 s, through
//! the cascade (any delay, whole seconds rounded up) and through fixed
//! delay queues (one per whole second from 1 to 10), and how late each
//! arrives. Lateness is arrival − (publish call + delay); early must be 0.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use rabbitry_core::{Delays, Message, Publisher, Role};
use rand::Rng;
use serde_json::json;

use crate::env::{Env, bench_queue, delete};
use crate::report::Report;

/// Messages per strategy.
const PER_KIND: usize = 150;
const LEVELS: u32 = 4;
/// p99 lateness targets, in ms.
const CASCADE_P99_MS: f64 = 1_100.0;
const FIXED_P99_MS: f64 = 100.0;

pub(crate) async fn run(env: &Env) -> Result<Report, String> {
    let broker = env.broker().await?;
    let raw = env.raw().await?;
    let queue = bench_queue(&broker, "bench-delay").await?;
    let prefix = format!("{queue}.cascade");
    let fixed: Vec<Duration> = (1..=10).map(Duration::from_secs).collect();
    let publisher = Publisher::builder(broker.clone())
        .build()
        .map_err(|e| e.to_string())?;
    let delays = fixed
        .iter()
        .fold(
            Delays::builder(publisher).prefix(&prefix).levels(LEVELS),
            |b, d| b.fixed(*d),
        )
        .build()
        .await
        .map_err(|e| e.to_string())?;
    let arrived = watch(&broker, &queue).await?;

    // (message id) -> (kind, publish call started, delay)
    let mut sent = HashMap::new();
    let mut rng = rand::rng();
    for i in 0..2 * PER_KIND {
        let cascade = i % 2 == 0;
        let delay = match cascade {
            true => Duration::from_millis(rng.random_range(1_000..=10_000)),
            false => fixed[rng.random_range(0..fixed.len())],
        };
        let msg = Message::bytes("", &queue, env.payload());
        let id = msg.id().to_owned();
        let started = Instant::now();
        let outcome = delays
            .publish_after(msg, delay)
            .await
            .map_err(|e| e.to_string())?;
        if !outcome.is_confirmed() {
            return Err(format!("a delayed publish was not confirmed: {outcome:?}"));
        }
        sent.insert(
            id,
            (if cascade { "cascade" } else { "fixed" }, started, delay),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(40);
    while arrived.lock().map_or(0, |a| a.len()) < sent.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let arrived = arrived.lock().map_err(|_| "poisoned")?.clone();

    let mut report = Report::new("delay-precision", None);
    for kind in ["cascade", "fixed"] {
        let mut late_ms: Vec<f64> = Vec::new();
        let mut early = 0;
        for (id, at) in &arrived {
            let Some((k, started, delay)) = sent.get(id) else {
                continue;
            };
            if *k != kind {
                continue;
            }
            let due = *started + *delay;
            match at.checked_duration_since(due) {
                Some(late) => late_ms.push(late.as_secs_f64() * 1000.0),
                None => {
                    early += 1;
                    late_ms.push(-(due - *at).as_secs_f64() * 1000.0);
                }
            }
        }
        late_ms.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            late_ms
                .get(((late_ms.len() as f64 - 1.0) * p).round() as usize)
                .copied()
        };
        let (p50, p99, max) = (pct(0.5), pct(0.99), late_ms.last().copied());
        let round = |v: Option<f64>| v.map(|v| v.round());
        report
            .extra
            .insert(format!("{kind}_arrived"), json!(late_ms.len()));
        report.extra.insert(format!("{kind}_early"), json!(early));
        report
            .extra
            .insert(format!("{kind}_p50_ms"), json!(round(p50)));
        report
            .extra
            .insert(format!("{kind}_p99_ms"), json!(round(p99)));
        report
            .extra
            .insert(format!("{kind}_max_ms"), json!(round(max)));
        let target = if kind == "cascade" {
            CASCADE_P99_MS
        } else {
            FIXED_P99_MS
        };
        report.checks.push((
            format!("{kind} early = 0"),
            early == 0 && late_ms.len() == PER_KIND,
        ));
        report.checks.push((
            format!("{kind} p99 <= {target} ms"),
            p99.is_some_and(|p| p <= target),
        ));
    }

    delete(&raw, &queue).await;
    cleanup(&raw, &queue, &prefix, &fixed).await;
    Ok(report)
}

/// Notes when each message arrives in `queue`.
async fn watch(
    broker: &rabbitry_core::Broker,
    queue: &str,
) -> Result<Arc<Mutex<Vec<(String, Instant)>>>, String> {
    let channel = broker
        .open_channel(Role::Consume)
        .await
        .map_err(|e| e.to_string())?;
    let options = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut consumer = tokio::time::timeout(
        Duration::from_secs(5),
        channel.basic_consume(
            queue.into(),
            "bench-delay".into(),
            options,
            FieldTable::default(),
        ),
    )
    .await
    .map_err(|_| "basic.consume: no answer in 5 s".to_string())?
    .map_err(|e| e.to_string())?;
    let arrived = Arc::new(Mutex::new(Vec::new()));
    let seen = arrived.clone();
    tokio::spawn(async move {
        let _channel = channel;
        while let Some(Ok(d)) = consumer.next().await {
            let at = Instant::now();
            let id = crate::env::message_id(&d);
            if let Ok(mut seen) = seen.lock() {
                seen.push((id, at));
            }
        }
    });
    Ok(arrived)
}

/// Deletes the fixed delay queues and the cascade.
async fn cleanup(conn: &lapin::Connection, queue: &str, prefix: &str, fixed: &[Duration]) {
    let mut queues: Vec<String> = fixed
        .iter()
        .map(|d| format!("{queue}.delay.{}ms", d.as_millis()))
        .collect();
    let mut exchanges = vec![format!("{prefix}.delivery"), format!("{prefix}.unroutable")];
    queues.push(format!("{prefix}.unroutable"));
    for level in 0..LEVELS {
        queues.push(format!("{prefix}.level-{level:02}"));
        exchanges.push(format!("{prefix}.level-{level:02}"));
    }
    let Ok(ch) = conn.create_channel().await else {
        return;
    };
    for q in queues {
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for e in exchanges {
        let _ = ch
            .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = ch.close(200, "ok".into()).await;
}
