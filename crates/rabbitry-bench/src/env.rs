//! Shared setup: connections, queues, payloads.

use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    QueuePurgeOptions,
};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rabbitry_core::{Broker, BrokerConfig, Queue, Topology};

pub(crate) struct Env {
    pub(crate) amqp_url: String,
    pub(crate) messages: usize,
    pub(crate) size: usize,
    pub(crate) rounds: usize,
    /// Run one side only.
    pub(crate) only: Option<Side>,
}

/// A side of a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Side {
    /// The SDK path.
    Sdk,
    /// The baseline.
    Baseline,
}

impl Env {
    /// Whether the `side` runs (both do unless `--only` names one).
    pub(crate) fn runs(&self, side: Side) -> bool {
        self.only.is_none_or(|only| only == side)
    }

    pub(crate) async fn broker(&self) -> Result<Broker, String> {
        Broker::connect(
            BrokerConfig::builder()
                .endpoint(&self.amqp_url)
                .connection_name("rabbitry-bench")
                .connect_timeout(Duration::from_secs(5))
                .build()
                .map_err(|e| e.to_string())?,
        )
        .await
        .map_err(|e| e.to_string())
    }

    pub(crate) async fn raw(&self) -> Result<Connection, String> {
        Connection::connect(&self.amqp_url, ConnectionProperties::default())
            .await
            .map_err(|e| format!("raw lapin connect: {e}"))
    }

    pub(crate) fn payload(&self) -> Vec<u8> {
        vec![b'x'; self.size]
    }
}

/// A quorum queue for one scenario, deleted on drop of the returned guard.
pub(crate) async fn bench_queue(broker: &Broker, prefix: &str) -> Result<String, String> {
    let name = format!(
        "{prefix}-{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    );
    broker
        .declare(&Topology::new().queue(Queue::new(&name)))
        .await
        .map_err(|e| e.to_string())?;
    Ok(name)
}

pub(crate) async fn purge(conn: &Connection, queue: &str) -> Result<(), String> {
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    ch.queue_purge(queue.into(), QueuePurgeOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let _ = ch.close(200, "ok".into()).await;
    Ok(())
}

/// Messages ready in `queue`, by a passive declare on `ch` (cheap for the
/// broker, nothing for Postgres: progress is watched on this side).
pub(crate) async fn queue_depth(ch: &lapin::Channel, queue: &str) -> Result<u32, String> {
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(q.message_count())
}

pub(crate) async fn delete(conn: &Connection, queue: &str) {
    for q in [queue.to_owned(), format!("{queue}.dlq")] {
        if let Ok(ch) = conn.create_channel().await {
            let _ = ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
    if let Ok(ch) = conn.create_channel().await {
        let _ = ch
            .exchange_delete(format!("{queue}.dlx").as_str().into(), Default::default())
            .await;
    }
}

/// Raw lapin: one confirm channel, `window` messages in flight. Returns
/// per-message confirm latencies in milliseconds.
pub(crate) async fn raw_publish(
    conn: &Connection,
    queue: &str,
    payload: &[u8],
    n: usize,
    window: usize,
) -> Result<Vec<f64>, String> {
    publish_confirmed(conn, queue, payload, (n, window), None).await
}

/// Raw lapin on `channels` confirm channels of the one connection, each
/// with `window` in flight and its share of `n`: what a careful user of
/// lapin writes to match the SDK's channels. Returns confirm latencies.
pub(crate) async fn raw_publish_channels(
    conn: &Connection,
    queue: &str,
    payload: &[u8],
    n: usize,
    (channels, window): (usize, usize),
) -> Result<Vec<f64>, String> {
    let channels = channels.max(1);
    let shares = (0..channels).map(|i| n / channels + usize::from(i < n % channels));
    let runs = shares.map(|share| publish_confirmed(conn, queue, payload, (share, window), None));
    let mut latencies = Vec::with_capacity(n);
    for run in futures_util::future::join_all(runs).await {
        latencies.extend(run?);
    }
    Ok(latencies)
}

/// As [`raw_publish`] with 1000 in flight, each message with the id
/// `<prefix>-<i>`.
pub(crate) async fn raw_publish_with_ids(
    conn: &Connection,
    queue: &str,
    payload: &[u8],
    n: usize,
    prefix: &str,
) -> Result<(), String> {
    publish_confirmed(conn, queue, payload, (n, 1000), Some(prefix)).await?;
    Ok(())
}

async fn publish_confirmed(
    conn: &Connection,
    queue: &str,
    payload: &[u8],
    (n, window): (usize, usize),
    ids: Option<&str>,
) -> Result<Vec<f64>, String> {
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut inflight = std::collections::VecDeque::with_capacity(window);
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n {
        if inflight.len() >= window {
            let (start, confirm): (std::time::Instant, lapin::PublisherConfirm) =
                inflight.pop_front().expect("non-empty");
            confirm.await.map_err(|e| e.to_string())?;
            latencies.push(start.elapsed().as_secs_f64() * 1000.0);
        }
        let mut properties = BasicProperties::default().with_delivery_mode(2);
        if let Some(prefix) = ids {
            properties = properties.with_message_id(format!("{prefix}-{i}").into());
        }
        let start = std::time::Instant::now();
        let confirm = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                payload,
                properties,
            )
            .await
            .map_err(|e| e.to_string())?;
        inflight.push_back((start, confirm));
    }
    for (start, confirm) in inflight {
        confirm.await.map_err(|e| e.to_string())?;
        latencies.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    let _ = ch.close(200, "ok".into()).await;
    Ok(latencies)
}

/// A delivery's message id ("" when it has none).
pub(crate) fn message_id(d: &lapin::message::Delivery) -> String {
    d.properties
        .message_id()
        .as_ref()
        .map(|s| s.to_string())
        .unwrap_or_default()
}

/// This process's CPU time so far (user + system), from `/proc/self/stat`;
/// `None` where that file does not exist. Resolution: one clock tick.
pub(crate) fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces), from field 3.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    // utime and stime are fields 14 and 15: indices 11 and 12 here.
    let total = ticks(11)? + ticks(12)?;
    // Linux reports in USER_HZ, 100 on every architecture it supports.
    Some(Duration::from_millis(total * 10))
}

/// Wall time and this process's CPU over one round.
pub(crate) struct Meter {
    start: std::time::Instant,
    cpu: Option<std::time::Duration>,
}

impl Meter {
    pub(crate) fn start() -> Self {
        Self {
            start: std::time::Instant::now(),
            cpu: process_cpu(),
        }
    }

    /// Messages per second over `n`; pushes the CPU microseconds per
    /// message onto `cpu_us` when they can be read.
    pub(crate) fn rate(self, n: usize, cpu_us: &mut Vec<f64>) -> f64 {
        let rate = n as f64 / self.start.elapsed().as_secs_f64();
        if let (Some(a), Some(b)) = (self.cpu, process_cpu()) {
            cpu_us.push((b - a).as_secs_f64() * 1e6 / n as f64);
        }
        rate
    }
}
