//! A known limit, pinned: lapin 4.12.3 parses header tables recursively on
//! its I/O thread, and a message whose headers nest a few hundred tables
//! deep (which RabbitMQ accepts from any client) overflows that thread's
//! stack and aborts the whole process. rabbitry cannot catch an abort; see
//! docs/security.md. Depths up to 64 are handled
//! (`tests/hostile_input_headers.rs`).
//!
//! The consuming side runs in a child process (this test binary again,
//! running `consumer_child` with `RABBITRY_DEEP_QUEUE` set), so that its
//! abort is observed, not suffered. When lapin stops overflowing, the parent
//! fails and says to update the docs and turn this into a survival test.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rabbitry::{Broker, BrokerConfig, Consumer, Delivery, Queue, Topology};
use rabbitry_testkit::{BrokerCleanup, RawClient, RawProperties, RawValue, services, unique};

const DEPTH: usize = 2000;
const CHILD_ENV: &str = "RABBITRY_DEEP_QUEUE";

/// Publishes one message whose header nests `depth` tables, on a thread
/// with a large stack (the raw client encodes recursively too).
fn publish_deep(queue: String, depth: usize) {
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut value = RawValue::LongString(b"bottom".to_vec());
                for _ in 0..depth {
                    value = RawValue::Table(vec![(b"n".to_vec(), value)]);
                }
                let properties = RawProperties {
                    headers: Some(vec![(b"deep".to_vec(), value)]),
                    ..RawProperties::default()
                };
                let mut client = RawClient::connect_test_broker().await.expect("raw connect");
                client
                    .publish("", &queue, &properties, b"{}")
                    .await
                    .expect("the broker takes it");
                client.close().await.expect("raw close");
            });
        })
        .expect("thread")
        .join()
        .expect("publisher thread");
}

async fn broker() -> Broker {
    Broker::connect(
        BrokerConfig::builder()
            .endpoint(services().amqp_url())
            .connection_name("rabbitry-tests-nesting")
            .build()
            .expect("config"),
    )
    .await
    .expect("connect")
}

#[tokio::test]
async fn headers_nested_thousands_deep_abort_a_lapin_consumer() {
    let queue = unique("hostile-deep");
    let mut cleanup = BrokerCleanup::new();
    cleanup.queue(&queue);
    broker()
        .await
        .declare(&Topology::new().queue(Queue::classic(&queue)))
        .await
        .expect("declare");
    publish_deep(queue.clone(), DEPTH);

    let mut child = Command::new(std::env::current_exe().expect("this test binary"))
        .args(["consumer_child", "--exact", "--nocapture"])
        .env(CHILD_ENV, &queue)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("child");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            panic!("the child neither aborted nor finished within 90 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use std::io::Read;
        let _ = pipe.read_to_string(&mut stderr);
    }
    assert!(
        !status.success() && stderr.contains("has overflowed its stack"),
        "lapin no longer overflows on {DEPTH} nested tables ({status}): update \
         docs/security.md and make this a test that the consumer survives.\n{stderr}"
    );
    eprintln!("pinned: the child aborted ({status}) on headers {DEPTH} tables deep");
    cleanup.cleanup().await;
}

/// The child half of the test above: runs a consumer on the queue it is
/// given and returns after 20 s. Without `RABBITRY_DEEP_QUEUE` it is not
/// the child and does nothing.
#[tokio::test]
async fn consumer_child() {
    let Ok(queue) = std::env::var(CHILD_ENV) else {
        return;
    };
    let broker = broker().await;
    let consumer = Consumer::builder(broker, &queue).build().expect("consumer");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let run = consumer.run(|_d: Delivery| async { Ok(()) }, shutdown.clone());
    let _ = tokio::time::timeout(Duration::from_secs(20), run).await;
    eprintln!("the consumer survived");
}
