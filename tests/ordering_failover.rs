//! Killing the active consumer of the partitions mid-stream: the standby
//! instance takes over with nothing lost and every key still in order. A
//! gap or a reorder fails; a redelivered duplicate (handled by the killed
//! instance, its ack lost with the connection) is allowed and counted.
//! Acks are coalesced, so a key can see more than its last message again
//! (seen: 0 to 51 duplicates over 6,000 messages), always as a replay of
//! what it already had, in order.

mod common;

use std::time::Duration;

use common::ordering::{Instance, Recorder, partitions, publish_streams, recording};
use rabbitry::{Broker, BrokerConfig, ConsumerState, OrderedRetry, Route};
use rabbitry_testkit::{FaultProxy, services};

const KEYS: usize = 20;
const PER_KEY: u32 = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_standby_takes_over_a_killed_consumer_with_nothing_lost_and_order_kept() {
    let direct = common::broker().await;
    let (p, mut cleanup) = partitions(&direct, 4, Route::Jump).await;
    let proxy = FaultProxy::start(services().amqp_addr()).await;
    let via_proxy = Broker::connect(
        BrokerConfig::builder()
            .endpoint(services().amqp_url_via("127.0.0.1", proxy.port()))
            .connection_name("rabbitry-tests-doomed")
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("config"),
    )
    .await
    .expect("connect through the proxy");
    let recorder = Recorder::default();
    let work = Duration::from_millis(1);
    let retry = OrderedRetry::default();

    // The doomed instance subscribes first, so it is the active consumer
    // of every partition; the other stands by.
    let doomed = Instance::start(
        &via_proxy,
        &p,
        "doomed",
        8,
        retry,
        recording(&recorder, "doomed", work),
    );
    for c in &doomed.consumers {
        let mut state = c.watch_state();
        tokio::time::timeout(
            Duration::from_secs(30),
            state.wait_for(|s| *s == ConsumerState::Consuming),
        )
        .await
        .expect("subscribed in time")
        .expect("state");
    }
    let standby = Instance::start(
        &direct,
        &p,
        "standby",
        8,
        retry,
        recording(&recorder, "standby", work),
    );

    let publishing = {
        let (direct, p) = (direct.clone(), p.clone());
        tokio::spawn(async move { publish_streams(&direct, &p, KEYS, PER_KEY).await })
    };
    let midway = common::eventually(Duration::from_secs(60), || async {
        recorder.by_instance("doomed") >= 1_500
    })
    .await;
    assert!(midway, "the doomed instance handled its share");
    assert_eq!(recorder.by_instance("standby"), 0, "the standby stood by");
    // Kill: its connection is cut and it cannot come back.
    proxy.set_down(true);

    tokio::time::timeout(Duration::from_secs(120), publishing)
        .await
        .expect("published in time")
        .expect("publisher");
    let done = common::eventually(Duration::from_secs(120), || async {
        recorder.complete(KEYS, PER_KEY)
    })
    .await;

    assert!(
        recorder.faults().is_empty(),
        "gap or reorder: {:?}",
        recorder.faults()
    );
    assert!(done, "every key reached {PER_KEY}");
    let (doomed_n, standby_n) = (
        recorder.by_instance("doomed"),
        recorder.by_instance("standby"),
    );
    let duplicates = recorder.duplicates();
    eprintln!("doomed handled {doomed_n}, standby {standby_n}, duplicates {duplicates}");
    assert!(standby_n > 0, "the standby took over");
    assert_eq!(
        recorder.handled(),
        KEYS as u64 * u64::from(PER_KEY) + duplicates,
        "each message once, plus the counted duplicates"
    );
    // Only what the killed instance held unacknowledged can come twice.
    assert!(duplicates <= 4 * 32, "{duplicates} duplicates");
    standby.stop().await;
    doomed.stop().await;
    drop(proxy);
    cleanup.cleanup().await;
}
