//! Helpers for the ordering tests: sequenced per-key messages, a recorder
//! that fails on a gap or a reorder of successful runs and counts
//! duplicates, and partition
//! consumer instances.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rabbitry::{
    Broker, Consumer, Delivery, Handler, Lanes, Message, OrderedRetry, PartitionedPublisher,
    Partitions, Publisher,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One step of a key's stream.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Step {
    pub key: String,
    pub seq: u32,
}

pub fn key(i: usize) -> String {
    format!("user-{i}")
}

/// Publishes `per_key` steps (seq 1..=per_key) for each of `keys` keys,
/// each key's steps one after the other (confirmed), the keys in parallel.
pub async fn publish_streams(broker: &Broker, partitions: &Partitions, keys: usize, per_key: u32) {
    let publisher = PartitionedPublisher::new(
        Publisher::builder(broker.clone())
            .build()
            .expect("publisher"),
        partitions.clone(),
    )
    .expect("partitioned publisher");
    let mut tasks = Vec::new();
    for k in 0..keys {
        let publisher = publisher.clone();
        tasks.push(tokio::spawn(async move {
            for seq in 1..=per_key {
                let step = Step { key: key(k), seq };
                let m = Message::json("", "", &step)
                    .expect("json")
                    .partition_key(key(k));
                let outcome = publisher.publish(m).await.expect("published");
                assert!(outcome.is_confirmed());
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("published in time")
            .expect("publisher task");
    }
}

#[derive(Default)]
struct State {
    last: HashMap<String, u32>,
    in_flight: HashSet<String>,
    handled: u64,
    duplicates: u64,
    faults: Vec<String>,
    by_instance: HashMap<String, u64>,
}

/// Every handler run, and every successful one checked against its key's
/// stream: a run that starts and is then given back does not count as
/// handled in order, only its success does.
#[derive(Clone, Default)]
pub struct Recorder(Arc<Mutex<State>>);

impl Recorder {
    /// Records that `instance` starts handling a message.
    pub fn start(&self, instance: &str) {
        let mut s = self.0.lock().expect("recorder");
        s.handled += 1;
        *s.by_instance.entry(instance.to_owned()).or_default() += 1;
    }
    /// Records that `step` was handled successfully: the next of its key is
    /// fine, an earlier one is a duplicate (counted), a later one a gap or
    /// a reorder (a fault).
    pub fn succeeded(&self, step: &Step) {
        let mut s = self.0.lock().expect("recorder");
        let last = s.last.get(&step.key).copied().unwrap_or(0);
        if step.seq == last + 1 {
            s.last.insert(step.key.clone(), step.seq);
        } else if step.seq <= last {
            s.duplicates += 1;
        } else {
            let fault = format!("{}: {} succeeded after {last}", step.key, step.seq);
            s.faults.push(fault);
        }
    }
    /// Marks `key` running in `instance`; a fault if it already was (two
    /// of one key at once in one instance). Across instances this is not
    /// checked: a killed instance's handler may still be running when the
    /// standby starts the redelivered copy.
    pub fn enter(&self, instance: &str, key: &str) {
        let mut s = self.0.lock().expect("recorder");
        if !s.in_flight.insert(format!("{instance}/{key}")) {
            s.faults
                .push(format!("{key}: two handlers at once in {instance}"));
        }
    }
    pub fn exit(&self, instance: &str, key: &str) {
        let mut s = self.0.lock().expect("recorder");
        s.in_flight.remove(&format!("{instance}/{key}"));
    }
    /// Whether every key reached `per_key`, or a fault ends the wait.
    pub fn complete(&self, keys: usize, per_key: u32) -> bool {
        let s = self.0.lock().expect("recorder");
        !s.faults.is_empty() || (0..keys).all(|k| s.last.get(&key(k)) == Some(&per_key))
    }
    pub fn faults(&self) -> Vec<String> {
        self.0.lock().expect("recorder").faults.clone()
    }
    pub fn duplicates(&self) -> u64 {
        self.0.lock().expect("recorder").duplicates
    }
    pub fn handled(&self) -> u64 {
        self.0.lock().expect("recorder").handled
    }
    pub fn by_instance(&self, instance: &str) -> u64 {
        let s = self.0.lock().expect("recorder");
        s.by_instance.get(instance).copied().unwrap_or(0)
    }
}

/// One service instance: a consumer per partition queue, sharing one set
/// of lanes, all in ordered mode.
pub struct Instance {
    pub consumers: Vec<Consumer>,
    pub shutdown: CancellationToken,
    pub tasks: Vec<JoinHandle<rabbitry::Result<()>>>,
}

impl Instance {
    pub fn start<H: Handler + Clone>(
        broker: &Broker,
        partitions: &Partitions,
        name: &str,
        lanes: usize,
        retry: OrderedRetry,
        handler: H,
    ) -> Self {
        let shared = Lanes::new(lanes);
        let shutdown = CancellationToken::new();
        let mut consumers = Vec::new();
        let mut tasks = Vec::new();
        for queue in partitions.queue_names() {
            let consumer = Consumer::builder(broker.clone(), &queue)
                .name(format!("{name}-{queue}"))
                .dispatch(shared.clone())
                // Above the 40 messages of the Stop test: a stopped key keeps
                // every later message of it unsettled (docs/ordering.md, "a
                // hot or stopped key holds the prefetch").
                .prefetch(64)
                .shutdown_timeout(Duration::from_secs(2))
                .ordered(retry)
                .layer(rabbitry::check_partition_count(partitions.count()))
                .build()
                .expect("consumer");
            let (c, s, h) = (consumer.clone(), shutdown.clone(), handler.clone());
            tasks.push(tokio::spawn(async move { c.run(h, s).await }));
            consumers.push(consumer);
        }
        Self {
            consumers,
            shutdown,
            tasks,
        }
    }

    /// Stops the consumers and waits (bounded) for them to return.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            match tokio::time::timeout(Duration::from_secs(60), t).await {
                Ok(joined) => drop(joined.expect("join")),
                Err(_) => panic!("a consumer did not stop within 60 s"),
            }
        }
    }
}

/// A handler that decodes a [`Step`] and records it for `instance`.
pub fn recording(
    recorder: &Recorder,
    instance: &str,
    work: Duration,
) -> impl Handler + Clone + use<> {
    let (recorder, instance) = (recorder.clone(), instance.to_owned());
    move |d: Delivery| {
        let (recorder, instance) = (recorder.clone(), instance.clone());
        async move {
            let step: Step = d.json().map_err(rabbitry::HandlerError::decode)?;
            recorder.start(&instance);
            recorder.enter(&instance, &step.key);
            tokio::time::sleep(work).await;
            recorder.exit(&instance, &step.key);
            recorder.succeeded(&step);
            Ok(())
        }
    }
}

/// Partitions with a unique base name, declared, with their cleanup.
pub async fn partitions(
    broker: &Broker,
    count: u32,
    route: rabbitry::Route,
) -> (Partitions, rabbitry_testkit::BrokerCleanup) {
    let partitions = Partitions::new(rabbitry_testkit::unique("ordered"), count).route(route);
    let mut cleanup = rabbitry_testkit::BrokerCleanup::new();
    for q in partitions.queue_names() {
        cleanup.queue(q);
    }
    cleanup.exchange(partitions.exchange_name());
    broker
        .declare(&partitions.topology().expect("valid partitions"))
        .await
        .expect("declare partitions");
    (partitions, cleanup)
}

/// Consumes up to `n` messages from `queue` (a partition queue refuses
/// `basic.get`: RabbitMQ does not support it on a quorum queue with a
/// single active consumer), acking each, for at most `limit`.
pub async fn take_steps(queue: &str, n: usize, limit: Duration) -> Vec<Step> {
    use futures_util::StreamExt;
    use rabbitry::lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
    use rabbitry::lapin::{Connection, ConnectionProperties, types::FieldTable};
    let conn = Connection::connect(
        rabbitry_testkit::services().amqp_url(),
        ConnectionProperties::default(),
    )
    .await
    .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.basic_qos(100, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "take-steps".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while out.len() < n {
        match tokio::time::timeout_at(deadline, consumer.next()).await {
            Ok(Some(Ok(d))) => {
                d.acker.ack(BasicAckOptions::default()).await.expect("ack");
                out.push(serde_json::from_slice(&d.data).expect("step"));
            }
            _ => break,
        }
    }
    let _ = conn.close(200, "done".into()).await;
    out
}
