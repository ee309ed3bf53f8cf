//! The no-loss harness: a real producer (`Publisher` with the Postgres
//! outbox, and the outbox relay), a real idempotent consumer (Redis
//! tokens), and the [`Ledger`] that counts what happened.
//!
//! Each service can be reached through a [`FaultProxy`], so that a test
//! can cut, reset or blackhole it while the load runs.
#![allow(dead_code, unreachable_pub, unused_imports)]

pub mod ledger;
pub mod load;
pub mod stack;

use std::sync::Arc;
use std::time::Duration;

use rabbitry::postgres::{OutboxStore, Relay, RelayConfig};
use rabbitry::{
    Backoff, Broker, BrokerConfig, Consumer, ConsumerState, Delivery, Idempotency, Publisher,
    Queue, Topology,
};
use rabbitry_redis::RedisStore;
use rabbitry_testkit::{BrokerCleanup, FaultProxy, TestDatabase, services, unique};
use tokio_util::sync::CancellationToken;

pub use ledger::{Ledger, Outcome, Summary};
pub use load::{Load, produce};
pub use stack::{Endpoints, Stack};

/// Whether the long variants run (`RABBITRY_SOAK=1`).
pub fn soak() -> bool {
    std::env::var("RABBITRY_SOAK").as_deref() == Ok("1")
}

/// `url` with its host and port replaced by 127.0.0.1:`port` (a proxy's),
/// the rest (credentials, path) kept.
pub fn via(url: &str, port: u16) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let user = authority.rsplit_once('@').map(|(u, _)| format!("{u}@"));
    format!(
        "{scheme}://{}127.0.0.1:{port}{path}",
        user.unwrap_or_default()
    )
}

/// The `host:port` of `url` (to start a proxy in front of it).
pub fn addr_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, a)| a)
        .to_owned()
}

/// A proxy in front of the service at `url`, and the URL through it.
pub async fn proxied(url: &str) -> (FaultProxy, String) {
    let proxy = FaultProxy::start(addr_of(url)).await;
    let through = via(url, proxy.port());
    (proxy, through)
}

/// One run's queue, outbox database, Redis key prefix and ledger.
pub struct Rig {
    pub queue: String,
    pub topology: Topology,
    pub db: TestDatabase,
    pub ledger: Arc<Ledger>,
    pub prefix: String,
    cleanup: BrokerCleanup,
}

impl Rig {
    /// A fresh queue (quorum, declared on the broker under test) and a
    /// migrated outbox database.
    pub async fn new(name: &str) -> Self {
        let mut rig = Self::on(name, services().amqp_url()).await;
        rig.cleanup.consumer_queue(&rig.queue);
        rig
    }

    /// Like [`new`](Self::new), with the queue declared on the broker at
    /// `amqp` (see [`broker`] for several nodes), which deletes nothing
    /// afterwards: the test cleans that broker up.
    pub async fn on(name: &str, amqp: &str) -> Self {
        rabbitry_testkit::init_tracing();
        let queue = unique(name);
        let topology = Topology::new().queue(Queue::new(&queue));
        let broker = broker(amqp, name, Duration::from_secs(10));
        broker.declare(&topology).await.expect("declare the queue");
        broker.close().await;
        let db = TestDatabase::create().await;
        let store = OutboxStore::connect(db.url()).await.expect("outbox store");
        store.migrate().await.expect("migrate the outbox");
        store.pool().close().await;
        Self {
            queue,
            topology,
            db,
            ledger: Arc::new(Ledger::default()),
            prefix: unique("rabbitry-noloss"),
            cleanup: BrokerCleanup::new(),
        }
    }

    /// An outbox store on `url` (the rig's database, maybe through a proxy)
    /// with short bounds, so that an unreachable Postgres is noticed fast.
    pub fn store(&self, url: &str) -> OutboxStore {
        OutboxStore::builder()
            .acquire_timeout(Duration::from_secs(2))
            .call_timeout(Duration::from_secs(5))
            .defer_timeout(Duration::from_secs(2))
            .defer_delay(Duration::from_millis(100))
            .statement_timeout(Duration::from_secs(5))
            .connect_lazy(url)
            .expect("outbox store")
    }

    /// A publisher that defers to `outbox` what the broker did not confirm.
    pub fn publisher(&self, broker: &Broker, outbox: Option<OutboxStore>) -> Publisher {
        let mut builder = Publisher::builder(broker.clone()).timeout(Duration::from_secs(3));
        if let Some(store) = outbox {
            builder = builder.outbox(store);
        }
        builder.build().expect("publisher")
    }

    /// Runs the outbox relay on `store`, publishing through `broker`.
    pub fn start_relay(&self, store: OutboxStore, broker: &Broker) -> RelayRun {
        let relay = self.relay(store, broker);
        let stop = CancellationToken::new();
        let task = relay.spawn(stop.clone());
        RelayRun { relay, stop, task }
    }

    /// The outbox relay on `store`, publishing through `broker`.
    pub fn relay(&self, store: OutboxStore, broker: &Broker) -> Relay {
        let config = RelayConfig::default()
            .batch_size(200)
            .concurrency(2)
            .poll_interval(Duration::from_millis(100))
            .backoff(Backoff::new(
                Duration::from_millis(100),
                Duration::from_secs(2),
            ));
        Relay::new(store, self.publisher(broker, None), config).expect("relay")
    }

    /// The Redis idempotency layer's settings, on the Redis at `url`.
    pub fn idempotency(&self, url: &str) -> Idempotency {
        let store = RedisStore::builder(url)
            .response_timeout(Duration::from_millis(500))
            .connect_timeout(Duration::from_millis(500))
            .build()
            .expect("redis store");
        Idempotency::builder(store)
            .prefix(&self.prefix)
            .lease(Duration::from_secs(5))
            .store_timeout(Duration::from_millis(500))
            .retry_delay(Duration::from_millis(100))
            .retention(Duration::from_secs(600))
            .build()
            .expect("idempotency")
    }

    /// Runs an idempotent consumer of the rig's queue whose handler's only
    /// effect is a line in the ledger.
    pub fn consume(&self, broker: &Broker, idempotency: &Idempotency) -> Running {
        let consumer = Consumer::builder(broker.clone(), &self.queue)
            .topology(self.topology.clone())
            .prefetch(200)
            .concurrency(32)
            .idempotent(idempotency.layer())
            .build()
            .expect("consumer");
        let mut states = consumer.watch_state();
        let ledger = self.ledger.clone();
        tokio::spawn(async move {
            while states.changed().await.is_ok() {
                let consuming = *states.borrow_and_update() == ConsumerState::Consuming;
                if consuming {
                    ledger.consuming();
                }
            }
        });
        let ledger = self.ledger.clone();
        let shutdown = CancellationToken::new();
        let (c, s) = (consumer.clone(), shutdown.clone());
        let task = tokio::spawn(async move {
            c.run(
                move |d: Delivery| {
                    let ledger = ledger.clone();
                    async move {
                        ledger.effect(d.id());
                        Ok(())
                    }
                },
                s,
            )
            .await
        });
        Running { shutdown, task }
    }

    /// Waits (up to `limit`) until every accepted message had its effect,
    /// the outbox is empty and the queue is drained; then a moment more, so
    /// that a late duplicate would still be counted.
    pub async fn drain(&self, store: &OutboxStore, broker: &Broker, limit: Duration) -> bool {
        let done = rabbitry_testkit::eventually(limit, || async {
            self.ledger.all_accepted_consumed()
                && store.stats().await.is_ok_and(|s| s.pending == 0)
                && broker
                    .queue_stats(&self.queue)
                    .await
                    .is_ok_and(|q| q.messages == 0)
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        done
    }

    /// Deletes the queue and the Redis keys.
    pub async fn cleanup(mut self) {
        self.cleanup.cleanup().await;
        if let Ok(client) = redis::Client::open(services().redis_url.as_str())
            && let Ok(Ok(mut conn)) = tokio::time::timeout(
                Duration::from_secs(5),
                client.get_multiplexed_async_connection(),
            )
            .await
        {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}:*", self.prefix))
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            for chunk in keys.chunks(1000) {
                let _: redis::RedisResult<i64> =
                    redis::cmd("DEL").arg(chunk).query_async(&mut conn).await;
            }
        }
    }
}

/// A running relay.
pub struct RelayRun {
    pub relay: Relay,
    stop: CancellationToken,
    pub task: tokio::task::JoinHandle<rabbitry::postgres::Result<()>>,
}

impl RelayRun {
    /// Shuts it down (bounded).
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
    }
}

/// A running consumer.
pub struct Running {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<rabbitry::Result<()>>,
}

impl Running {
    /// Stops it (bounded).
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
    }
}

/// A broker handle for `urls` (one URL, or a cluster's, comma-separated),
/// named `name`, with `heartbeat`. It connects lazily, so that it can be
/// made while its endpoint is down.
pub fn broker(urls: &str, name: &str, heartbeat: Duration) -> Broker {
    let config = BrokerConfig::builder()
        .endpoints(urls.split(','))
        .connection_name(format!("rabbitry-noloss-{name}"))
        .heartbeat(heartbeat)
        .connect_timeout(Duration::from_secs(2))
        .operation_timeout(Duration::from_secs(5))
        .build()
        .expect("broker config");
    Broker::lazy(config).expect("broker")
}
