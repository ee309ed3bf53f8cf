//! Per-user event streams over 4 partitions, handled in order by two
//! service instances: each partition queue has one active consumer (the
//! other instance stands by), and within a partition each user has a lane
//! of their own.
//!
//! Needs RabbitMQ (the local default, or `AMQP_URL`):
//!
//! ```sh
//! cargo run --example partitioned
//! ```

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rabbitry::{
    Broker, BrokerConfig, Consumer, Delivery, HandlerError, Lanes, Message, OrderedRetry,
    PartitionedPublisher, Partitions, Publisher, Role, check_partition_count,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Serialize, Deserialize)]
struct UserEvent {
    user: String,
    seq: u32,
    what: String,
}

const USERS: u32 = 6;
const EVENTS: u32 = 5;

/// Who handled what, per user, in the order handled.
type Seen = Arc<Mutex<BTreeMap<String, Vec<(u32, String)>>>>;

#[tokio::main]
async fn main() -> rabbitry::Result<ExitCode> {
    support::init_logging();
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let connect = |name: &str| {
        let config = BrokerConfig::builder()
            .endpoint(url.clone())
            .connection_name(name)
            .connect_timeout(Duration::from_secs(5))
            .build();
        async move { Broker::connect(config?).await }
    };
    let base = format!("user-events-{}", std::process::id());
    let partitions = Partitions::new(&base, 4);
    let instances = [connect("instance-a").await?, connect("instance-b").await?];
    instances[0].declare(&partitions.topology()?).await?;

    // Two instances, each subscribing to all four partitions.
    let seen: Seen = Arc::default();
    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();
    for (broker, name) in instances.iter().zip(["a", "b"]) {
        let lanes = Lanes::new(8);
        for queue in partitions.queue_names() {
            let consumer = Consumer::builder(broker.clone(), &queue)
                .name(format!("instance-{name}-{queue}"))
                .dispatch(lanes.clone())
                .prefetch(32)
                .ordered(OrderedRetry::default())
                .layer(check_partition_count(partitions.count()))
                .build()?;
            let (seen, instance) = (seen.clone(), format!("{name}/{queue}"));
            let handler = move |d: Delivery| {
                let (seen, instance) = (seen.clone(), instance.clone());
                async move {
                    let e: UserEvent = d.json().map_err(HandlerError::decode)?;
                    let mut seen = seen.lock().map_err(|_| HandlerError::retryable("lock"))?;
                    seen.entry(e.user).or_default().push((e.seq, instance));
                    Ok(())
                }
            };
            tasks.push(consumer.spawn(handler, shutdown.clone()));
        }
    }

    let publisher = PartitionedPublisher::new(
        Publisher::builder(instances[0].clone()).build()?,
        partitions.clone(),
    )?;
    let whats = ["signed-up", "verified", "ordered", "paid", "shipped"];
    for seq in 1..=EVENTS {
        for u in 1..=USERS {
            let user = format!("user-{u}");
            let what = whats[(seq as usize - 1) % whats.len()].to_owned();
            let event = UserEvent {
                user: user.clone(),
                seq,
                what,
            };
            let message = Message::json("", "", &event)?.partition_key(user);
            if !publisher.publish(message).await?.is_confirmed() {
                eprintln!("a publish was not confirmed");
                return Ok(ExitCode::FAILURE);
            }
        }
    }

    let total = (USERS * EVENTS) as usize;
    let all = tokio::time::timeout(Duration::from_secs(30), async {
        while seen
            .lock()
            .map(|s| s.values().map(Vec::len).sum::<usize>())
            .unwrap_or(0)
            < total
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    shutdown.cancel();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }
    for (user, events) in seen.lock().unwrap_or_else(PoisonError::into_inner).iter() {
        let seqs: Vec<String> = events.iter().map(|(s, _)| s.to_string()).collect();
        let by = &events.first().map_or("", |(_, by)| by.as_str());
        println!(
            "{user} (partition {}, handled by {by}): {}",
            partitions.index_of(user),
            seqs.join(" ")
        );
    }
    remove(&instances[0], &partitions).await;
    if all.is_err() {
        eprintln!("not every event arrived within 30 s");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The example's queues are its own: remove them (and their dead-letter
/// pairs), each step bounded.
async fn remove(broker: &Broker, partitions: &Partitions) {
    let Ok(Ok(ch)) =
        tokio::time::timeout(Duration::from_secs(5), broker.open_channel(Role::Publish)).await
    else {
        return;
    };
    for queue in partitions.queue_names() {
        for q in [queue.clone(), format!("{queue}.dlq")] {
            let delete = ch.queue_delete(q.as_str().into(), Default::default());
            let _ = tokio::time::timeout(Duration::from_secs(5), delete).await;
        }
        let delete = ch.exchange_delete(format!("{queue}.dlx").as_str().into(), Default::default());
        let _ = tokio::time::timeout(Duration::from_secs(5), delete).await;
    }
}
