//! A broker memory alarm (`connection.blocked`): the publisher waits a
//! bounded time, then defers to the outbox; nothing is lost, and consumers
//! (on their own connection) keep draining.
//!
//! This is its own test binary with one test: raising the alarm blocks every
//! publisher on the broker while it lasts.

mod common;

use std::time::Duration;

use rabbitry::{ConnectionState, Message, PublishOutcome, Publisher, Role};
use rabbitry_testkit::rabbitmqctl;

/// Restores the broker's memory watermark even if the test panics.
struct AlarmGuard;

impl AlarmGuard {
    fn raise() -> Self {
        rabbitmqctl(&["set_vm_memory_high_watermark", "0.000001"]);
        AlarmGuard
    }
}

impl Drop for AlarmGuard {
    fn drop(&mut self) {
        rabbitmqctl(&["set_vm_memory_high_watermark", "0.4"]);
    }
}

#[tokio::test]
async fn a_blocked_publisher_defers_to_the_outbox_and_nothing_is_lost() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "alarm").await;
    let (_db, store) = common::outbox().await;
    let publisher = Publisher::builder(broker.clone())
        .timeout(Duration::from_secs(2))
        .blocked_timeout(Duration::from_millis(500))
        .outbox(store.clone())
        .build()
        .expect("publisher");
    let first = publisher
        .publish(Message::bytes("", &queue, "before"))
        .await
        .expect("publish");
    assert!(first.is_confirmed());

    let mut outcomes = Vec::new();
    {
        let _alarm = AlarmGuard::raise();
        for i in 0..3 {
            outcomes.push(
                publisher
                    .publish(Message::bytes("", &queue, format!("during {i}")))
                    .await
                    .expect("deferred, not lost"),
            );
        }
        assert!(
            matches!(broker.state(Role::Publish), ConnectionState::Blocked { .. }),
            "state: {}",
            broker.state(Role::Publish)
        );
        // Consuming is on its own connection and is not blocked.
        assert!(broker.state(Role::Consume).is_connected());
        let drained = rabbitry_testkit::drain(&queue).await;
        assert_eq!(
            drained.len(),
            1,
            "the consumer side still works during the alarm"
        );
    }
    for outcome in &outcomes {
        assert!(
            matches!(outcome, PublishOutcome::Deferred { .. }),
            "{outcome:?}"
        );
    }
    // The last ones waited for the alarm and gave up with Blocked.
    assert!(
        outcomes.iter().any(|o| matches!(
            o,
            PublishOutcome::Deferred {
                cause: rabbitry::Error::Blocked { .. },
                ..
            }
        )),
        "{outcomes:?}"
    );
    assert_eq!(store.stats().await.expect("stats").pending, 3);

    // After the alarm, the resend loop delivers them (plus whatever the
    // broker accepted before blocking: at-least-once).
    assert!(
        common::eventually(Duration::from_secs(20), || async {
            broker.state(Role::Publish).is_connected()
        })
        .await
    );
    let relay = rabbitry::postgres::Relay::new(
        store.clone(),
        Publisher::builder(broker.clone())
            .build()
            .expect("publisher"),
        rabbitry::postgres::RelayConfig::default(),
    )
    .expect("relay");
    // Deferred rows wait for their first backoff (about a second) before
    // they are due.
    let published = &std::sync::atomic::AtomicUsize::new(0);
    let relay = &relay;
    assert!(
        common::eventually(Duration::from_secs(20), || async move {
            let n = relay.run_batch().await.map_or(0, |r| r.published);
            published.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n == 3
        })
        .await,
        "the three deferred messages are published"
    );
    let got = common::collect(&queue, 3, Duration::from_secs(10)).await;
    let bodies: std::collections::HashSet<_> = got
        .iter()
        .map(|d| String::from_utf8_lossy(&d.data).into_owned())
        .collect();
    for i in 0..3 {
        assert!(bodies.contains(&format!("during {i}")), "{bodies:?}");
    }
}
