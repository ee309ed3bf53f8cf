//! `relay`: the relay process draining a pre-filled outbox, against the
//! SDK's direct confirmed publish of the same messages. Also the relay's
//! peak RSS, and commit-to-delivery latency with `wake()` at a moderate rate.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use rabbitry_core::{Message, Publisher};
use rabbitry_postgres::OutboxStore;
use rabbitry_testkit::TestDatabase;
use serde_json::json;

use crate::env::{Env, bench_queue, delete, purge, queue_depth};
use crate::report::{Report, Target, percentile};
use crate::scenarios::publish::sdk_publish;

pub(crate) async fn run(env: &Env) -> Result<Report, String> {
    let broker = env.broker().await?;
    let raw = env.raw().await?;
    let queue = bench_queue(&broker, "bench-relay").await?;
    let db = TestDatabase::create().await;
    let store = OutboxStore::connect(db.url())
        .await
        .map_err(|e| e.to_string())?;
    store.migrate().await.map_err(|e| e.to_string())?;
    let publisher = Publisher::builder(broker.clone())
        .channels(4)
        .build()
        .map_err(|e| e.to_string())?;
    let payload = env.payload();
    let (program, process_kind) = relay_program();
    let mut report = Report::new("relay", Some(Target { min_ratio: 0.9 }));
    let mut peak_rss = 0.0f64;
    let mut startup: Vec<f64> = Vec::new();
    for _ in 0..env.rounds {
        purge(&raw, &queue).await?;
        fill(&store, &queue, &payload, env.messages).await?;
        let start = Instant::now();
        let child = spawn_relay(&program, db.url(), &env.amqp_url)?;
        // Progress is read off the queue: counting the outbox's pending rows
        // every few milliseconds would take Postgres CPU from the relay.
        // Drained = every message in the queue and no row left pending.
        // The rate runs from the first relayed message: the process's start
        // (connecting to Postgres and the broker) is reported apart.
        let watch = raw.create_channel().await.map_err(|e| e.to_string())?;
        let mut first: Option<Instant> = None;
        loop {
            let depth = queue_depth(&watch, &queue).await?;
            if depth > 0 && first.is_none() {
                first = Some(Instant::now());
                startup.push(start.elapsed().as_secs_f64() * 1000.0);
            }
            if depth as usize >= env.messages
                && store.stats().await.map_err(|e| e.to_string())?.pending == 0
            {
                break;
            }
            if start.elapsed() > Duration::from_secs(300) {
                stop(child);
                return Err(format!(
                    "relay did not drain the outbox ({depth} of {} in the queue)",
                    env.messages
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = watch.close(200, "ok".into()).await;
        let from = first.unwrap_or(start);
        report
            .sdk
            .push(env.messages as f64 / from.elapsed().as_secs_f64());
        peak_rss = peak_rss.max(peak_rss_mib(child.id()).unwrap_or(0.0));
        stop(child);

        purge(&raw, &queue).await?;
        let start = Instant::now();
        sdk_publish(&publisher, &queue, &payload, env.messages).await?;
        report
            .baseline
            .push(env.messages as f64 / start.elapsed().as_secs_f64());
    }
    purge(&raw, &queue).await?;
    let (p50, p99) = notify_latency(&program, &db, &store, &env.amqp_url, &raw, &queue).await?;
    delete(&raw, &queue).await;
    report
        .extra
        .insert("rss_mib".into(), json!((peak_rss * 10.0).round() / 10.0));
    report
        .extra
        .insert("rss_process".into(), json!(process_kind));
    report.extra.insert(
        "startup_ms_to_first_message".into(),
        json!(percentile(&startup, 0.5).map(f64::round)),
    );
    report.extra.insert("notify_p50_ms".into(), json!(p50));
    report.extra.insert("notify_p99_ms".into(), json!(p99));
    report
        .checks
        .push(("rss_mib <= 64".into(), peak_rss > 0.0 && peak_rss <= 64.0));
    Ok(report)
}

/// The `rabbitry-relay` binary next to this one if it was built, else this
/// binary in `relay-worker` mode (the same library loop, without the HTTP
/// endpoint and the CLI).
fn relay_program() -> (Vec<String>, &'static str) {
    let me = std::env::current_exe().unwrap_or_default();
    let sibling = me.with_file_name("rabbitry-relay");
    if sibling.exists() {
        let path = sibling.to_string_lossy().into_owned();
        (
            vec![
                path,
                "run".into(),
                "--metrics-addr".into(),
                "127.0.0.1:0".into(),
            ],
            "rabbitry-relay binary",
        )
    } else {
        (
            vec![me.to_string_lossy().into_owned(), "relay-worker".into()],
            "rabbitry-bench relay-worker (same loop)",
        )
    }
}

fn spawn_relay(program: &[String], database_url: &str, amqp_url: &str) -> Result<Child, String> {
    Command::new(&program[0])
        .args(&program[1..])
        .env("DATABASE_URL", database_url)
        .env("RABBITRY_AMQP_URL", amqp_url)
        // RABBITRY_BENCH_RELAY_LOG=rabbitry_postgres=debug shows each batch's phases.
        .env(
            "RUST_LOG",
            std::env::var("RABBITRY_BENCH_RELAY_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("start the relay: {e}"))
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// Peak resident set (VmHWM) of a live process, in MiB.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Bulk-fills the outbox with `n` rows in one statement.
async fn fill(store: &OutboxStore, queue: &str, payload: &[u8], n: usize) -> Result<(), String> {
    let template = Message::bytes("", queue, payload.to_vec());
    let properties = serde_json::to_value(template.properties()).map_err(|e| e.to_string())?;
    sqlx::query(
        "INSERT INTO rabbitry_outbox (message_id, exchange, routing_key, payload, properties)
         SELECT md5(random()::text || g::text), '', $1, $2, $3
         FROM generate_series(1, $4) AS g",
    )
    .bind(queue)
    .bind(payload)
    .bind(sqlx::types::Json(properties))
    .bind(n as i64)
    .execute(store.pool())
    .await
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// Enqueues 1000 messages at 200/s, each in its own transaction followed by
/// `wake()`, with the relay running and listening; measures commit to
/// delivery at a consumer.
async fn notify_latency(
    program: &[String],
    db: &TestDatabase,
    store: &OutboxStore,
    amqp_url: &str,
    raw: &lapin::Connection,
    queue: &str,
) -> Result<(Option<f64>, Option<f64>), String> {
    const N: usize = 1000;
    let child = spawn_relay(program, db.url(), amqp_url)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let committed: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let ch = raw.create_channel().await.map_err(|e| e.to_string())?;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "bench-latency".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let c = committed.clone();
    let reader = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(N);
        while latencies.len() < N {
            let Some(Ok(d)) = consumer.next().await else {
                break;
            };
            let arrived = Instant::now();
            let id = crate::env::message_id(&d);
            let _ = d.acker.ack(BasicAckOptions::default()).await;
            if let Some(t) = c.lock().ok().and_then(|m| m.get(&id).copied()) {
                latencies.push(arrived.duration_since(t).as_secs_f64() * 1000.0);
            }
        }
        latencies
    });
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    for i in 0..N {
        tick.tick().await;
        let msg = Message::bytes("", queue, format!("{i}"));
        let id = msg.id().to_owned();
        // Recorded just before the insert commits (it could arrive before
        // `enqueue` returns).
        if let Ok(mut m) = committed.lock() {
            m.insert(id, Instant::now());
        }
        store.enqueue(&msg).await.map_err(|e| e.to_string())?;
        // Enqueueing no longer notifies (a NOTIFY in the enqueuing
        // transaction serializes commits); a latency-sensitive caller wakes
        // the relay after the commit.
        store.wake().await;
    }
    let latencies = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .map_err(|_| "latency reader timed out".to_string())?
        .map_err(|e| e.to_string())?;
    stop(child);
    let _ = ch.close(200, "done".into()).await;
    let ms = |p| percentile(&latencies, p).map(|x| (x * 10.0).round() / 10.0);
    Ok((ms(0.5), ms(0.99)))
}
