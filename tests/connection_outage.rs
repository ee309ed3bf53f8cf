//! A broker that goes away and comes back, through the fault proxy: the
//! state says so while it lasts, and consuming resumes on the new
//! connection.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rabbitry::{
    Broker, BrokerConfig, ConnectionState, Consumer, ConsumerState, Delivery, Message, Publisher,
    Queue, Role, Topology,
};
use rabbitry_testkit::{BrokerCleanup, FaultProxy, services, unique};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const HEARTBEAT: Duration = Duration::from_secs(2);

async fn wait_for<T>(rx: &mut watch::Receiver<T>, limit: Duration, f: impl Fn(&T) -> bool) -> bool {
    tokio::time::timeout(limit, rx.wait_for(|s| f(s)))
        .await
        .is_ok_and(|r| r.is_ok())
}

#[tokio::test]
async fn a_broker_outage_shows_in_the_state_and_consuming_resumes_after_it() {
    rabbitry_testkit::init_tracing();
    let proxy = FaultProxy::start(services().amqp_addr()).await;
    let broker = Broker::connect(
        BrokerConfig::builder()
            .endpoint(services().amqp_url_via("127.0.0.1", proxy.port()))
            .connection_name("rabbitry-tests-outage")
            .heartbeat(HEARTBEAT)
            .connect_timeout(Duration::from_secs(2))
            .operation_timeout(Duration::from_secs(5))
            .build()
            .expect("config"),
    )
    .await
    .expect("connect through the proxy");
    let queue = unique("outage");
    let mut cleanup = BrokerCleanup::new();
    cleanup.queue(&queue);
    for retry_queue in rabbitry::RetryPolicy::default().retry_queues(&queue) {
        cleanup.queue(retry_queue);
    }
    let topology = Topology::new().queue(Queue::new(&queue));
    broker.declare(&topology).await.expect("declare");

    let handled: Arc<Mutex<Vec<String>>> = Arc::default();
    let consumer = Consumer::builder(broker.clone(), &queue)
        .topology(topology)
        .build()
        .expect("consumer");
    let shutdown = CancellationToken::new();
    let task = {
        let (consumer, shutdown, handled) = (consumer.clone(), shutdown.clone(), handled.clone());
        tokio::spawn(async move {
            consumer
                .run(
                    move |d: Delivery| {
                        let handled = handled.clone();
                        async move {
                            handled.lock().expect("lock").push(d.id().to_owned());
                            Ok(())
                        }
                    },
                    shutdown,
                )
                .await
        })
    };
    let mut consumer_state = consumer.watch_state();
    assert!(
        wait_for(&mut consumer_state, Duration::from_secs(10), |s| *s
            == ConsumerState::Consuming)
        .await
    );

    let mut publish = broker.watch_state(Role::Publish);
    let mut consume = broker.watch_state(Role::Consume);
    proxy.set_down(true);
    for (role, rx) in [("publish", &mut publish), ("consume", &mut consume)] {
        assert!(
            wait_for(rx, HEARTBEAT, |s| !s.is_connected()).await,
            "the {role} state still says {} after the broker went away",
            *rx.borrow()
        );
    }
    assert!(
        wait_for(&mut consumer_state, HEARTBEAT, |s| matches!(
            s,
            ConsumerState::Recovering { .. }
        ))
        .await,
        "the consumer still says {:?} without a connection",
        *consumer_state.borrow()
    );
    // Down for a while: the state keeps saying so.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!broker.state(Role::Publish).is_connected());
    assert!(!broker.state(Role::Consume).is_connected());
    assert!(matches!(consumer.state(), ConsumerState::Recovering { .. }));

    proxy.set_down(false);
    for (role, rx) in [("publish", &mut publish), ("consume", &mut consume)] {
        assert!(
            wait_for(rx, Duration::from_secs(15), ConnectionState::is_connected).await,
            "the {role} connection did not come back: {}",
            *rx.borrow()
        );
    }
    assert!(
        wait_for(&mut consumer_state, Duration::from_secs(15), |s| *s
            == ConsumerState::Consuming)
        .await,
        "the consumer did not subscribe again: {:?}",
        *consumer_state.borrow()
    );
    let publisher = Publisher::builder(broker.clone())
        .build()
        .expect("publisher");
    let msg = Message::bytes("", &queue, "after the outage");
    tokio::time::timeout(Duration::from_secs(15), publisher.send(msg.clone()))
        .await
        .expect("publish bounded")
        .expect("publishing works on the new connection");
    let got = common::eventually(Duration::from_secs(15), || async {
        handled.lock().expect("lock").contains(&msg.id().to_owned())
    })
    .await;
    assert!(
        got,
        "the consumer did not handle a message after the outage"
    );

    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(40), task).await;
    broker.close().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    cleanup.cleanup().await;
}

/// A connection that goes silent (no FIN, no RST: a dead node behind a
/// switch, a network partition) is caught by missed heartbeats. lapin calls
/// a connection dead after two heartbeat intervals without a frame, as the
/// AMQP spec says; the state says so at that moment.
#[tokio::test]
async fn a_silent_connection_is_caught_by_heartbeats() {
    rabbitry_testkit::init_tracing();
    let heartbeat = Duration::from_secs(1);
    let proxy = FaultProxy::start(services().amqp_addr()).await;
    let broker = Broker::connect(
        BrokerConfig::builder()
            .endpoint(services().amqp_url_via("127.0.0.1", proxy.port()))
            .connection_name("rabbitry-tests-silent")
            .heartbeat(heartbeat)
            .connect_timeout(Duration::from_secs(2))
            .build()
            .expect("config"),
    )
    .await
    .expect("connect through the proxy");
    let mut publish = broker.watch_state(Role::Publish);
    proxy.set_blackhole(true);
    let started = std::time::Instant::now();
    assert!(
        wait_for(&mut publish, heartbeat * 4, |s| !s.is_connected()).await,
        "the state still says {} {:?} after the connection went silent",
        *publish.borrow(),
        started.elapsed()
    );
    proxy.set_blackhole(false);
    assert!(
        wait_for(
            &mut publish,
            Duration::from_secs(15),
            ConnectionState::is_connected
        )
        .await,
        "the connection did not come back: {}",
        *publish.borrow()
    );
    broker
        .open_channel(Role::Publish)
        .await
        .expect("usable again");
    broker.close().await;
}
