//! Postgres and the broker unreachable at once: the publisher cannot
//! confirm and cannot defer, so every publish returns an error to the
//! caller, within its timeout, and none reports success. Then both come
//! back and publishing works again, with nothing lost.

mod noloss_support;

use std::time::{Duration, Instant};

use noloss_support::{Endpoints, Outcome, Rig, Stack, proxied};
use rabbitry_testkit::{FaultProxy, services};

/// Publishes `n` messages with both services faulted by `fault`, and checks
/// that every one failed, none slower than the publisher's bounds.
async fn outage(rig: &Rig, stack: &Stack, proxies: [&FaultProxy; 2], fault: fn(&FaultProxy)) {
    let failed_before = rig.ledger.count(Outcome::Failed);
    let accepted_before = rig.ledger.summary(0, None).accepted;
    for p in proxies {
        fault(p);
    }
    let n = 300;
    let load = stack.produce(rig, n, 100, Duration::ZERO);
    load.finish(Duration::from_secs(120)).await;
    let slowest = rig.ledger.slowest_failure();
    for p in proxies {
        p.pass();
    }
    let accepted = rig.ledger.summary(0, None).accepted;
    assert_eq!(accepted, accepted_before, "a publish reported success");
    assert_eq!(
        rig.ledger.count(Outcome::Failed) - failed_before,
        n as usize,
        "every publish returned an error"
    );
    // The publisher's timeout (3 s) plus its outbox timeout (5 s), plus
    // scheduling slack: a bound, not a speed.
    assert!(
        slowest <= Duration::from_secs(9),
        "a publish took {slowest:?} to return its error"
    );
    eprintln!("slowest error: {slowest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_postgres_and_the_broker_unreachable_every_publish_errors_in_time() {
    let rig = Rig::new("noloss-unreachable").await;
    let (broker_proxy, amqp) = proxied(services().amqp_url()).await;
    let (db_proxy, db) = proxied(rig.db.url()).await;
    let mut at = Endpoints::direct(&rig);
    at.producer_amqp = amqp;
    at.database = db;
    let stack = Stack::start(&rig, &at);
    stack
        .produce(&rig, 1_000, 100, Duration::ZERO)
        .finish(Duration::from_secs(60))
        .await;

    // Refused (connections reset, new ones refused), then silent
    // (blackholed: accepted, never answered).
    outage(&rig, &stack, [&broker_proxy, &db_proxy], |p| {
        p.set_down(true)
    })
    .await;
    outage(&rig, &stack, [&broker_proxy, &db_proxy], |p| {
        p.set_blackhole(true);
    })
    .await;
    let healed = Instant::now();
    stack
        .produce(&rig, 1_000, 100, Duration::ZERO)
        .finish(Duration::from_secs(60))
        .await;

    let (drained, summary) = stack.finish(&rig, &[healed]).await;
    rig.cleanup().await;

    assert!(drained, "not drained: {summary:?}");
    assert_eq!(summary.failed, 600);
    summary.assert_no_loss("Postgres and the broker unreachable (refused, then silent)");
}
