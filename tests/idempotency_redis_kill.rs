//! A consumer killed mid-handler: its lease stays in Redis until it
//! expires, the broker gives the message to another consumer, which waits
//! for the lease to end and then does the work once.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rabbitry::{Broker, BrokerConfig, Consumer, Delivery, Idempotency, Message, Publisher};
use rabbitry_redis::RedisStore;
use rabbitry_testkit::{FaultProxy, services};

fn idempotency(prefix: &str) -> Idempotency {
    let store = RedisStore::builder(services().redis_url.clone())
        .build()
        .expect("store");
    Idempotency::builder(store)
        .prefix(prefix)
        .lease(Duration::from_secs(3))
        .store_timeout(Duration::from_millis(500))
        .retry_delay(Duration::from_millis(100))
        .retention(Duration::from_secs(60))
        .build()
        .expect("idempotency")
}

async fn delete_keys(prefix: &str) {
    let client = redis::Client::open(services().redis_url.as_str()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
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

#[tokio::test]
async fn a_consumer_killed_mid_handler_leaves_a_lease_that_expires_then_the_work_is_done_once() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "idem-kill").await;
    let prefix = rabbitry_testkit::unique("rabbitry-test:idem");
    // The consumer to kill reaches the broker through a proxy: cutting it
    // is the broker's view of a process that died.
    let proxy = FaultProxy::start(services().amqp_addr()).await;
    let doomed_broker = Broker::connect(
        BrokerConfig::builder()
            .endpoint(services().amqp_url_via("127.0.0.1", proxy.port()))
            .connection_name("rabbitry-tests-doomed")
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("config"),
    )
    .await
    .expect("connect through the proxy");
    let started = Arc::new(AtomicUsize::new(0));
    let doomed = Consumer::builder(doomed_broker.clone(), &queue)
        .idempotent(idempotency(&prefix).layer())
        .build()
        .expect("consumer");
    let s = started.clone();
    let (_doomed_shutdown, doomed_task) = common::spawn_consumer(&doomed, move |_d: Delivery| {
        let s = s.clone();
        async move {
            s.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        }
    });
    let publisher = Publisher::builder(broker.clone())
        .build()
        .expect("publisher");
    let m = Message::bytes("", &queue, "ship it").message_id("order-11");
    publisher.send(m).await.expect("published");
    let began = common::eventually(Duration::from_secs(20), || {
        let n = started.load(Ordering::SeqCst);
        async move { n == 1 }
    })
    .await;
    assert!(began, "the first consumer started the handler");
    // Killed: its tasks (renewal included) are gone, its connection cut.
    doomed_task.abort();
    proxy.set_down(true);
    let killed_at = std::time::Instant::now();
    let ran_at = Arc::new(std::sync::Mutex::new(None));

    let survivor_layer = idempotency(&prefix);
    let survivor = Consumer::builder(broker.clone(), &queue)
        .idempotent(survivor_layer.layer())
        .build()
        .expect("consumer");
    let done = Arc::new(AtomicUsize::new(0));
    let (d, at) = (done.clone(), ran_at.clone());
    let (shutdown, task) = common::spawn_consumer(&survivor, move |_m: Delivery| {
        let (d, at) = (d.clone(), at.clone());
        async move {
            at.lock().expect("lock").get_or_insert(killed_at.elapsed());
            d.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    });
    let finished = common::eventually(Duration::from_secs(30), || {
        let n = done.load(Ordering::SeqCst);
        async move { n >= 1 }
    })
    .await;
    assert!(finished, "{:?}", survivor_layer.metrics());
    // The lease was renewed at most a third of it (1 s) before the kill,
    // so it lived at least 2 s more; the broker redelivered at once.
    let waited = ran_at.lock().expect("lock").unwrap_or_default();
    assert!(
        waited >= Duration::from_millis(1500),
        "it waited for the dead consumer's lease: ran {waited:?} after the kill"
    );
    assert!(survivor_layer.metrics().busy > 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(done.load(Ordering::SeqCst), 1, "done once");
    assert_eq!(started.load(Ordering::SeqCst), 1);
    assert_eq!(survivor_layer.metrics().completed, 1);
    common::stop_consumer(shutdown, task).await;
    doomed_broker.close().await;
    delete_keys(&prefix).await;
}
