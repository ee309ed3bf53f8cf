//! The whole system under test, wired to endpoints the test chooses
//! (direct, or through fault proxies): a producer with the outbox, the
//! relay, and an idempotent consumer.

use std::time::{Duration, Instant};

use rabbitry::postgres::OutboxStore;
use rabbitry::{Broker, Idempotency};
use rabbitry_testkit::services;

use super::load::{Load, produce};
use super::{RelayRun, Rig, Running, Summary, broker};

/// Where each part reaches its services.
pub struct Endpoints {
    pub producer_amqp: String,
    pub consumer_amqp: String,
    pub relay_amqp: String,
    pub database: String,
    pub relay_database: String,
    pub redis: String,
    pub heartbeat: Duration,
}

impl Endpoints {
    /// Everything direct, to the services under test.
    pub fn direct(rig: &Rig) -> Self {
        let amqp = services().amqp_url().to_owned();
        Self {
            producer_amqp: amqp.clone(),
            consumer_amqp: amqp.clone(),
            relay_amqp: amqp,
            database: rig.db.url().to_owned(),
            relay_database: rig.db.url().to_owned(),
            redis: services().redis_url.clone(),
            heartbeat: Duration::from_secs(10),
        }
    }

    /// Every broker connection through `amqp`.
    pub fn amqp(mut self, amqp: &str) -> Self {
        amqp.clone_into(&mut self.producer_amqp);
        amqp.clone_into(&mut self.consumer_amqp);
        amqp.clone_into(&mut self.relay_amqp);
        self
    }
}

/// The running system.
pub struct Stack {
    pub producing: Broker,
    pub consuming: Broker,
    pub relaying: Broker,
    /// The producer's outbox (the relay has its own handle).
    pub store: OutboxStore,
    pub relay: RelayRun,
    pub idempotency: Idempotency,
    consumer: Running,
}

impl Stack {
    /// Starts the relay and the consumer; the producer starts with
    /// [`produce`](Self::produce).
    pub fn start(rig: &Rig, at: &Endpoints) -> Self {
        let producing = broker(&at.producer_amqp, "producer", at.heartbeat);
        let consuming = broker(&at.consumer_amqp, "consumer", at.heartbeat);
        let relaying = broker(&at.relay_amqp, "relay", at.heartbeat);
        let store = rig.store(&at.database);
        let relay = rig.start_relay(rig.store(&at.relay_database), &relaying);
        let idempotency = rig.idempotency(&at.redis);
        let consumer = rig.consume(&consuming, &idempotency);
        Self {
            producing,
            consuming,
            relaying,
            store,
            relay,
            idempotency,
            consumer,
        }
    }

    /// Publishes `total` messages in batches of `batch`, `pause` apart.
    pub fn produce(&self, rig: &Rig, total: u64, batch: usize, pause: Duration) -> Load {
        produce(
            rig.publisher(&self.producing, Some(self.store.clone())),
            &rig.queue,
            rig.ledger.clone(),
            total,
            batch,
            pause,
        )
    }

    /// Starts the main load (`total` messages, batches of 100, `pause`
    /// apart) and waits until `warm` of them had their effect.
    pub async fn warm_load(&self, rig: &Rig, total: u64, pause: Duration, warm: usize) -> Load {
        let load = self.produce(rig, total, 100, pause);
        let going = rabbitry_testkit::eventually(Duration::from_secs(30), || async {
            rig.ledger.effects() >= warm
        })
        .await;
        assert!(going, "the consumer did not get going");
        load
    }

    /// Waits for `load`, then sends 1,000 messages more: sent after the
    /// fault ended, they are what the recovery time is measured on.
    pub async fn after_fault(&self, rig: &Rig, load: Load) {
        load.finish(Duration::from_secs(120)).await;
        self.produce(rig, 1_000, 100, Duration::from_millis(20))
            .finish(Duration::from_secs(60))
            .await;
    }

    /// Waits for the drain (see [`Rig::drain`]), stops everything, and
    /// returns whether it drained and the figures. The recovery time is the
    /// slowest after any of `heals` (when each fault ended), `None` if the
    /// system did not recover after one of them.
    pub async fn finish(self, rig: &Rig, heals: &[Instant]) -> (bool, Summary) {
        let drained = rig
            .drain(&self.store, &self.consuming, Duration::from_secs(90))
            .await;
        let recovery = heals
            .iter()
            .map(|t| rig.ledger.recovered_after(*t))
            .try_fold(Duration::ZERO, |worst, r| r.map(|r| worst.max(r)));
        let summary = rig
            .ledger
            .summary(self.idempotency.metrics().duplicates, recovery);
        eprintln!(
            "relay {:?}; idempotency {:?}",
            self.relay.relay.metrics(),
            self.idempotency.metrics()
        );
        self.consumer.stop().await;
        self.relay.stop().await;
        for b in [&self.producing, &self.consuming, &self.relaying] {
            b.close().await;
        }
        (drained, summary)
    }
}
