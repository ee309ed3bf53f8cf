//! What a publisher, a consumer and its idempotency layer record through the `metrics`
//! crate, read back from a recorder installed before they were built: every
//! counter agrees with the in-process `metrics()` snapshot, the handler
//! duration histogram has one sample per attempt, the confirm-latency
//! histogram one per confirmed publish, the in-flight gauge
//! follows the deliveries held, and the polled backlog gauges show the
//! queue's ready messages and consumers. Against the real broker.
//!
//! Its own test binary: a recorder is installed once per process.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::{CompositeKey, MetricKind};
use rabbitry::metric_names as names;
use rabbitry::{
    Consumer, Delivery, HandlerError, Idempotency, MemoryStore, Message, Publisher, QueueStats,
};
use tokio::sync::Semaphore;

/// A metric: its kind, name and labels.
type Ident = (MetricKind, String, Vec<(String, String)>);

/// Sums of every snapshot so far: the debugging recorder resets counters
/// and gauges when read.
#[derive(Default)]
struct Seen {
    values: HashMap<Ident, f64>,
    samples: HashMap<String, usize>,
    labelled_samples: HashMap<Ident, usize>,
    units: HashMap<String, metrics::Unit>,
}

impl Seen {
    fn take(&mut self, snapshotter: &Snapshotter) {
        for (key, unit, _help, value) in snapshotter.snapshot().into_vec() {
            let name = key.key().name().to_owned();
            if let Some(unit) = unit {
                self.units.insert(name.clone(), unit);
            }
            let id = ident(&key);
            match value {
                DebugValue::Counter(n) => *self.values.entry(id).or_default() += n as f64,
                DebugValue::Gauge(g) => *self.values.entry(id).or_default() += g.into_inner(),
                DebugValue::Histogram(xs) => {
                    *self.samples.entry(name).or_default() += xs.len();
                    *self.labelled_samples.entry(id).or_default() += xs.len();
                }
            }
        }
    }

    /// The sum over every series of `name`, whatever its labels.
    fn total(&self, kind: MetricKind, name: &str) -> f64 {
        self.values
            .iter()
            .filter(|((k, n, _), _)| *k == kind && n == name)
            .map(|(_, v)| *v)
            .sum()
    }

    /// Histogram samples of `name` with `label`.
    fn samples_with(&self, name: &str, label: (&str, &str)) -> usize {
        self.labelled_samples
            .iter()
            .filter(|((_, n, labels), _)| {
                n == name && labels.iter().any(|(a, b)| a == label.0 && b == label.1)
            })
            .map(|(_, v)| *v)
            .sum()
    }

    fn get(&self, kind: MetricKind, name: &str, label: (&str, &str)) -> f64 {
        self.values
            .iter()
            .filter(|((k, n, labels), _)| {
                *k == kind && n == name && labels.iter().any(|(a, b)| a == label.0 && b == label.1)
            })
            .map(|(_, v)| *v)
            .sum()
    }
}

fn ident(key: &CompositeKey) -> Ident {
    let labels = key
        .key()
        .labels()
        .map(|l| (l.key().to_owned(), l.value().to_owned()))
        .collect();
    (key.kind(), key.key().name().to_owned(), labels)
}

#[tokio::test]
async fn consumer_and_idempotency_metrics_agree_with_their_snapshots() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this binary");
    names::describe_metrics();

    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "metrics").await;
    let prefix = rabbitry_testkit::unique("metrics-idem");
    let idem = Idempotency::builder(MemoryStore::new())
        .prefix(&prefix)
        .build()
        .expect("idempotency");

    // 20 messages, one of them poison, and a second copy of m3.
    let publisher = Publisher::builder(broker.clone())
        .build()
        .expect("publisher");
    let mut messages: Vec<Message> = (0..20)
        .map(|i| {
            let body = if i == 7 {
                "poison".to_owned()
            } else {
                format!("{i}")
            };
            Message::bytes("", &queue, body).message_id(format!("m{i}"))
        })
        .collect();
    messages.push(Message::bytes("", &queue, "again").message_id("m3"));
    for r in publisher.send_all(&messages).await {
        r.expect("published");
    }

    let gate = Arc::new(Semaphore::new(0));
    let consumer = Consumer::builder(broker.clone(), &queue)
        .prefetch(1)
        .concurrency(1)
        .backlog_poll(Duration::from_millis(100))
        .idempotent(idem.layer())
        .build()
        .expect("consumer");
    let (shutdown, task) = common::spawn_consumer(&consumer, {
        let gate = gate.clone();
        move |d: Delivery| {
            let gate = gate.clone();
            async move {
                gate.acquire().await.expect("gate").forget();
                if d.payload() == b"poison" {
                    return Err(HandlerError::permanent("poison"));
                }
                Ok(())
            }
        }
    });

    // The first handler waits at the gate: one delivery held, 20 ready.
    let c = consumer.clone();
    let polled = common::eventually(Duration::from_secs(30), || {
        let b = c.backlog();
        async move {
            b == Some(QueueStats {
                messages: 20,
                consumers: 1,
            })
        }
    })
    .await;
    assert!(polled, "backlog polled: {:?}", consumer.backlog());
    let mut seen = Seen::default();
    seen.take(&snapshotter);
    let q = ("queue", queue.as_str());
    assert_eq!(seen.get(MetricKind::Gauge, names::QUEUE_READY, q), 20.0);
    assert_eq!(seen.get(MetricKind::Gauge, names::QUEUE_CONSUMERS, q), 1.0);
    assert_eq!(
        seen.get(MetricKind::Gauge, names::CONSUMER_IN_FLIGHT, q),
        1.0
    );

    gate.add_permits(1_000);
    let c = consumer.clone();
    let i = idem.clone();
    let done = common::eventually(Duration::from_secs(30), || {
        let (m, d) = (c.metrics(), i.metrics());
        async move { m.succeeded == 19 && m.dead_lettered == 1 && d.duplicates == 1 }
    })
    .await;
    assert!(done, "{:?} {:?}", consumer.metrics(), idem.metrics());
    common::stop_consumer(shutdown, task).await;
    seen.take(&snapshotter);

    let m = consumer.metrics();
    let count = |name| seen.get(MetricKind::Counter, name, q);
    assert_eq!(count(names::CONSUMER_DELIVERED), m.delivered as f64);
    assert_eq!(m.delivered, 21);
    assert_eq!(count(names::CONSUMER_SUCCEEDED), 19.0);
    assert_eq!(count(names::CONSUMER_FAILED_ATTEMPTS), 1.0);
    assert_eq!(count(names::CONSUMER_DEAD_LETTERED), 1.0);
    assert_eq!(count(names::CONSUMER_RETRIED), 0.0);
    // Every publisher of the process adds to one series: the test's 21
    // messages and the consumer's confirmed copy of the poison message to
    // its error exchange.
    assert_eq!(publisher.metrics().confirmed, 21);
    assert_eq!(
        seen.total(MetricKind::Counter, names::PUBLISHER_CONFIRMED),
        22.0
    );
    assert_eq!(
        seen.total(MetricKind::Counter, names::PUBLISHER_DEFERRED),
        0.0
    );
    assert_eq!(
        seen.samples_with(names::PUBLISHER_CONFIRM_LATENCY, ("outcome", "confirmed")),
        22,
        "one confirm-latency sample per confirmed publish"
    );
    assert_eq!(
        seen.samples.get(names::PUBLISHER_CONFIRM_LATENCY),
        Some(&22),
        "and no other outcome"
    );
    assert_eq!(
        seen.units.get(names::PUBLISHER_CONFIRM_LATENCY),
        Some(&metrics::Unit::Seconds),
        "described"
    );
    let p = ("prefix", prefix.as_str());
    assert_eq!(
        seen.get(MetricKind::Counter, names::IDEMPOTENCY_DUPLICATES, p),
        1.0
    );
    assert_eq!(
        seen.get(MetricKind::Counter, names::IDEMPOTENCY_CLAIMED, p),
        idem.metrics().claimed as f64
    );
    assert_eq!(
        seen.samples.get(names::CONSUMER_HANDLER_DURATION),
        Some(&20),
        "one sample per handler attempt (the duplicate never ran it)"
    );
    assert_eq!(
        seen.get(MetricKind::Gauge, names::CONSUMER_IN_FLIGHT, q),
        0.0,
        "nothing held after the stop"
    );
    assert_eq!(
        seen.units.get(names::CONSUMER_HANDLER_DURATION),
        Some(&metrics::Unit::Seconds),
        "described"
    );
}
