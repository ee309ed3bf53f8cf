//! Idempotent consuming with the Redis store, against the real broker and
//! Redis: duplicates acked without the handler, a failure that gives the
//! key back, consumers racing on one message id, a lease left by a consumer
//! that died, and Redis going away mid-stream.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rabbitry::{
    Consumer, Delivery, HandlerError, Idempotency, IdempotencyStore, Message, Publisher,
    RetryPolicy,
};
use rabbitry_redis::RedisStore;
use rabbitry_testkit::{FaultProxy, services};

/// Per message id: handler runs, running now, most at once.
type Counts = (usize, usize, usize);

/// Handler runs per message id, and the most that ran at once per id.
#[derive(Clone, Default)]
struct Runs(Arc<Mutex<HashMap<String, Counts>>>);

impl Runs {
    /// Runs the handler's body for `d` for `takes`, counting.
    async fn run(&self, d: &Delivery, takes: Duration) {
        let id = d.id().to_owned();
        self.update(&id, |(runs, now, most)| {
            *runs += 1;
            *now += 1;
            *most = (*most).max(*now);
        });
        tokio::time::sleep(takes).await;
        self.update(&id, |(_, now, _)| *now -= 1);
    }
    fn update(&self, id: &str, f: impl FnOnce(&mut Counts)) {
        f(self
            .0
            .lock()
            .expect("lock")
            .entry(id.to_owned())
            .or_default());
    }
    fn of(&self, id: &str) -> (usize, usize) {
        let all = self.0.lock().expect("lock");
        all.get(id).map_or((0, 0), |(runs, _, most)| (*runs, *most))
    }
    fn total(&self) -> usize {
        self.0.lock().expect("lock").values().map(|r| r.0).sum()
    }
}

/// A test's key prefix; `clean`, called at the end, deletes its keys.
struct Keys(String);

impl Keys {
    fn new() -> Self {
        Self(rabbitry_testkit::unique("rabbitry-test:idem"))
    }
    async fn clean(&self) {
        let client = redis::Client::open(services().redis_url.as_str()).expect("client");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.0))
            .query_async(&mut conn)
            .await
            .expect("keys");
        if !keys.is_empty() {
            let _: i64 = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .expect("del");
        }
    }
}

fn store() -> RedisStore {
    RedisStore::builder(services().redis_url.clone())
        .build()
        .expect("store")
}

fn idempotency(store: RedisStore, keys: &Keys) -> Idempotency {
    Idempotency::builder(store)
        .prefix(&keys.0)
        .retention(Duration::from_secs(120))
        .retry_delay(Duration::from_millis(100))
        .build()
        .expect("idempotency")
}

async fn send(broker: &rabbitry::Broker, queue: &str, ids: &[&str]) {
    let publisher = Publisher::builder(broker.clone())
        .build()
        .expect("publisher");
    for id in ids {
        let m = Message::bytes("", queue, format!("body of {id}")).message_id(*id);
        publisher.send(m).await.expect("published");
    }
}

async fn eventually(secs: u64, check: impl Fn() -> bool) -> bool {
    common::eventually(Duration::from_secs(secs), || {
        let ok = check();
        async move { ok }
    })
    .await
}

/// A consumer of `queue` behind `idem`'s layer whose handler only counts
/// its runs; returns it, the counts, and its shutdown token and task.
fn counting(
    broker: &rabbitry::Broker,
    queue: &str,
    idem: &rabbitry::Idempotency,
) -> (
    Consumer,
    Runs,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<rabbitry::Result<()>>,
) {
    let consumer = Consumer::builder(broker.clone(), queue)
        .idempotent(idem.layer())
        .build()
        .expect("consumer");
    let runs = Runs::default();
    let r = runs.clone();
    let (shutdown, task) = common::spawn_consumer(&consumer, move |d: Delivery| {
        let r = r.clone();
        async move {
            r.run(&d, Duration::ZERO).await;
            Ok(())
        }
    });
    (consumer, runs, shutdown, task)
}

#[tokio::test]
async fn a_message_delivered_three_times_runs_the_handler_once() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "idem-dup").await;
    let keys = Keys::new();
    let idem = idempotency(store(), &keys);
    let (consumer, runs, shutdown, task) = counting(&broker, &queue, &idem);
    send(&broker, &queue, &["order-1", "order-1", "order-1"]).await;
    assert!(eventually(30, || consumer.metrics().delivered == 3).await);
    assert!(eventually(30, || runs.total() > 0).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(runs.of("order-1").0, 1, "the handler ran once");
    assert!(
        eventually(10, || idem.metrics().duplicates == 2).await,
        "{:?}",
        idem.metrics()
    );
    assert_eq!(idem.metrics().completed, 1);
    assert_eq!(
        rabbitry_testkit::queue_depth(&queue).await,
        Some(0),
        "all acked"
    );
    common::stop_consumer(shutdown, task).await;
    keys.clean().await;
}

#[tokio::test]
async fn a_failed_handler_releases_its_lease_and_the_retry_runs() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "idem-fail").await;
    let keys = Keys::new();
    let idem = idempotency(store(), &keys);
    let consumer = Consumer::builder(broker.clone(), &queue)
        .retry(
            RetryPolicy::default()
                .immediate(1)
                .immediate_backoff(Duration::from_millis(10)),
        )
        .idempotent(idem.layer())
        .build()
        .expect("consumer");
    let runs = Runs::default();
    let r = runs.clone();
    let (shutdown, task) = common::spawn_consumer(&consumer, move |d: Delivery| {
        let r = r.clone();
        async move {
            r.run(&d, Duration::ZERO).await;
            if d.attempt() == 1 {
                return Err(HandlerError::retryable("warehouse busy"));
            }
            Ok(())
        }
    });
    send(&broker, &queue, &["order-2"]).await;
    // Without the release, the retry would wait for the 30 s lease to end.
    assert!(
        eventually(15, || runs.of("order-2").0 == 2).await,
        "failed once, then the retry ran"
    );
    assert!(
        eventually(10, || idem.metrics().completed == 1).await,
        "{:?}",
        idem.metrics()
    );
    assert_eq!(idem.metrics().released, 1);
    // Handled now: one more copy is a duplicate.
    send(&broker, &queue, &["order-2"]).await;
    assert!(eventually(30, || idem.metrics().duplicates == 1).await);
    assert_eq!(runs.of("order-2").0, 2);
    common::stop_consumer(shutdown, task).await;
    keys.clean().await;
}

#[tokio::test]
async fn two_consumers_racing_on_one_message_id_never_run_it_at_the_same_time() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "idem-race").await;
    let keys = Keys::new();
    let runs = Runs::default();
    // Two services, each with its own store connection and layer.
    let mut running = Vec::new();
    let mut layers = Vec::new();
    let mut consumers = Vec::new();
    for _ in 0..2 {
        let idem = idempotency(store(), &keys);
        let consumer = Consumer::builder(broker.clone(), &queue)
            .prefetch(2)
            .concurrency(2)
            .idempotent(idem.layer())
            .build()
            .expect("consumer");
        let r = runs.clone();
        running.push(common::spawn_consumer(&consumer, move |d: Delivery| {
            let r = r.clone();
            async move {
                r.run(&d, Duration::from_millis(800)).await;
                Ok(())
            }
        }));
        layers.push(idem);
        consumers.push(consumer);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids = ["race-1", "race-1", "race-2", "race-2", "race-3", "race-3"];
    send(&broker, &queue, &ids).await;
    let duplicates = || layers.iter().map(|i| i.metrics().duplicates).sum::<u64>();
    let delivered = || consumers.iter().map(|c| c.metrics().delivered).sum::<u64>();
    assert!(eventually(60, || delivered() == 6).await);
    // Every copy has had time to be claimed, waited on and settled.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in ["race-1", "race-2", "race-3"] {
        assert_eq!(runs.of(id), (1, 1), "{id}: ran once, never two at a time");
    }
    assert!(
        eventually(30, || duplicates() == 3).await,
        "duplicates: {}",
        duplicates()
    );
    assert!(
        layers.iter().map(|i| i.metrics().busy).sum::<u64>() > 0,
        "the copies did race"
    );
    for (shutdown, task) in running {
        common::stop_consumer(shutdown, task).await;
    }
    keys.clean().await;
}

#[tokio::test]
async fn a_lease_left_by_a_consumer_killed_mid_handler_expires_and_the_work_is_done_once() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "idem-dead").await;
    let keys = Keys::new();
    // The consumer that died held this lease; nothing renews it now.
    let dead = store();
    let key = format!("{}:{queue}:order-9", keys.0);
    let lease = Duration::from_secs(3);
    assert_eq!(
        dead.claim(&key, "killed-consumer", lease).await.ok(),
        Some(rabbitry::Claim::Acquired)
    );
    let idem = idempotency(store(), &keys);
    let (_consumer, runs, shutdown, task) = counting(&broker, &queue, &idem);
    send(&broker, &queue, &["order-9"]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(runs.of("order-9").0, 0, "not while the lease lives");
    assert!(idem.metrics().busy > 0);
    assert!(
        eventually(30, || idem.metrics().completed == 1).await,
        "{:?}",
        idem.metrics()
    );
    send(&broker, &queue, &["order-9"]).await;
    assert!(eventually(30, || idem.metrics().duplicates == 1).await);
    assert_eq!(runs.of("order-9").0, 1, "done once");
    common::stop_consumer(shutdown, task).await;
    keys.clean().await;
}

#[tokio::test]
async fn with_redis_away_no_handler_runs_nothing_is_acked_and_work_resumes_when_it_returns() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "idem-outage").await;
    let keys = Keys::new();
    let proxy = FaultProxy::start("127.0.0.1:6379").await;
    let via_proxy = RedisStore::builder(format!("redis://127.0.0.1:{}", proxy.port()))
        .response_timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(300))
        .build()
        .expect("store");
    let idem = Idempotency::builder(via_proxy)
        .prefix(&keys.0)
        .store_timeout(Duration::from_millis(500))
        .retry_delay(Duration::from_millis(100))
        // Short, so that some deliveries are also given back and come again.
        .max_wait(Duration::from_secs(2))
        .build()
        .expect("idempotency");
    let (consumer, runs, shutdown, task) = counting(&broker, &queue, &idem);
    proxy.set_down(true);
    let ids = ["out-1", "out-2", "out-3", "out-4", "out-5"];
    send(&broker, &queue, &ids).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        runs.total(),
        0,
        "no handler ran while the check could not happen"
    );
    assert!(
        eventually(20, || idem.metrics().gave_back > 0).await,
        "{:?}",
        idem.metrics()
    );
    assert_eq!(consumer.metrics().succeeded, 0);
    assert!(idem.metrics().store_unavailable > 0);
    proxy.set_down(false);
    assert!(
        eventually(60, || runs.total() == 5).await,
        "{:?}",
        idem.metrics()
    );
    for id in ids {
        assert_eq!(runs.of(id).0, 1, "{id}: not lost, handled once");
    }
    assert!(eventually(10, || idem.metrics().completed == 5).await);
    let dead = rabbitry_testkit::queue_depth(&format!("{queue}.dlq")).await;
    assert_eq!(dead, Some(0), "nothing went to the error queue");
    assert_eq!(rabbitry_testkit::queue_depth(&queue).await, Some(0));
    common::stop_consumer(shutdown, task).await;
    keys.clean().await;
}
