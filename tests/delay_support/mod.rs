//! Helpers for the delayed-message tests: a cascade of their own, and a
//! consumer that notes when each message arrived.
#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use rabbitry::lapin::options::BasicConsumeOptions;
use rabbitry::lapin::types::{AMQPValue, FieldTable};
use rabbitry::{Broker, Delays, Publisher, Role};
use rabbitry_testkit::BrokerCleanup;

/// Deletes a cascade's exchanges and queues (and fixed delay queues) at the
/// end of a test.
pub fn cascade_cleanup(prefix: &str, levels: u32) -> BrokerCleanup {
    let mut cleanup = BrokerCleanup::new();
    for level in 0..levels {
        let name = format!("{prefix}.level-{level:02}");
        cleanup.queue(&name).exchange(&name);
    }
    for name in ["delivery", "unroutable", "plugin"] {
        cleanup.exchange(format!("{prefix}.{name}"));
    }
    cleanup.queue(format!("{prefix}.unroutable"));
    cleanup
}

/// Delays over a fresh publisher on `broker`, with a cascade of `levels`.
pub async fn delays(broker: &Broker, prefix: &str, levels: u32) -> Delays {
    delays_with_fixed(broker, prefix, levels, &[]).await
}

/// [`delays`] with fixed delays too.
pub async fn delays_with_fixed(
    broker: &Broker,
    prefix: &str,
    levels: u32,
    fixed: &[Duration],
) -> Delays {
    let mut builder = rabbitry::Delays::builder(
        Publisher::builder(broker.clone())
            .build()
            .expect("publisher"),
    )
    .prefix(prefix)
    .levels(levels);
    for delay in fixed {
        builder = builder.fixed(*delay);
    }
    builder.build().await.expect("delays")
}

/// A message as it arrived.
#[derive(Clone, Debug)]
pub struct Arrival {
    pub id: String,
    pub at: Instant,
    pub wall: SystemTime,
    pub due: Option<SystemTime>,
    pub routing_key: String,
}

/// Notes every message that arrives in a queue (no-ack consumer).
#[derive(Clone, Default)]
pub struct Arrivals {
    seen: Arc<Mutex<Vec<Arrival>>>,
}

impl Arrivals {
    /// Starts consuming `queue` on `broker`'s consuming connection.
    pub async fn watch(broker: &Broker, queue: &str) -> Self {
        let channel = broker.open_channel(Role::Consume).await.expect("channel");
        let mut consumer = tokio::time::timeout(
            Duration::from_secs(5),
            channel.basic_consume(
                queue.into(),
                format!("arrivals-{queue}").as_str().into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await
        .expect("consume in time")
        .expect("consume");
        let arrivals = Self::default();
        let seen = arrivals.seen.clone();
        tokio::spawn(async move {
            let _channel = channel;
            while let Some(Ok(d)) = consumer.next().await {
                let at = Instant::now();
                let wall = SystemTime::now();
                let due = d
                    .properties
                    .headers()
                    .as_ref()
                    .and_then(|h| h.inner().get(rabbitry::DUE_AT_HEADER).cloned())
                    .and_then(|v| match v {
                        AMQPValue::LongLongInt(ms) => u64::try_from(ms).ok(),
                        _ => None,
                    })
                    .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
                let id = rabbitry_testkit::message_ids(std::slice::from_ref(&d)).remove(0);
                seen.lock().expect("lock").push(Arrival {
                    id,
                    at,
                    wall,
                    due,
                    routing_key: d.routing_key.to_string(),
                });
            }
        });
        arrivals
    }

    /// Waits until `n` messages arrived (or `limit` passes); returns them.
    pub async fn wait(&self, n: usize, limit: Duration) -> Vec<Arrival> {
        rabbitry_testkit::eventually(limit, || async {
            self.seen.lock().expect("lock").len() >= n
        })
        .await;
        self.seen.lock().expect("lock").clone()
    }

    /// What arrived so far.
    pub fn now(&self) -> Vec<Arrival> {
        self.seen.lock().expect("lock").clone()
    }
}

/// How much earlier than asked the broker may deliver `delay`: nothing,
/// unless its Erlang VM is still catching up with a step of the host's
/// clock. RabbitMQ runs in `no_time_warp` mode, where the VM's clock, once
/// behind the OS clock, runs up to 1% fast until it has caught up, and so
/// do the TTL timers a delay relies on (seen on a fresh machine: the VM
/// 26.7 s behind, catching up 53 ms every 5 s, and a 3 s delay delivered
/// after 2.979 s). Then up to 1% of `delay` (and a millisecond) early.
#[allow(dead_code)] // not every delay test checks early arrivals
pub fn early_allowance(delay: Duration) -> Duration {
    static LAG_MS: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let lag = *LAG_MS.get_or_init(|| {
        rabbitry_testkit::rabbitmqctl(&[
            "-q",
            "eval",
            "erlang:system_time(millisecond) - os:system_time(millisecond).",
        ])
        .trim()
        .parse()
        .unwrap_or(0)
    });
    if lag < -5 {
        delay / 100 + Duration::from_millis(1)
    } else {
        Duration::ZERO
    }
}
