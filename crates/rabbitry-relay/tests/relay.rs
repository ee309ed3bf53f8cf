//! The relay binary, run as a process against the real broker and Postgres:
//! delivery exactly once, two relays at once, SIGTERM mid-batch, an outage.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use rabbitry_testkit::{FaultProxy, collect, eventually, message_ids, services};

use support::{enqueue, env, pending, start, terminate};

#[tokio::test]
async fn rows_enqueued_before_start_are_delivered_exactly_once() {
    let e = env("relay-once").await;
    let sent = enqueue(&e.store, &e.queue, 300).await;
    let relay = start(e.db.url(), services().amqp_url(), &[]);
    let got = collect(&e.queue, 300, Duration::from_secs(30)).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            pending(&e.store).await == 0
        })
        .await
    );
    let out = terminate(relay);
    assert!(
        out.status.success(),
        "exit: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let ids = message_ids(&got);
    assert_eq!(ids.len(), 300, "no duplicates, nothing lost");
    assert_eq!(ids.into_iter().collect::<HashSet<_>>(), sent);
    assert_eq!(pending(&e.store).await, 0, "table ends empty");
    drop(e.broker);
}

#[tokio::test]
async fn two_relays_at_once_deliver_every_row_once() {
    let e = env("relay-two").await;
    let sent = enqueue(&e.store, &e.queue, 2000).await;
    let a = start(e.db.url(), services().amqp_url(), &["--batch-size", "100"]);
    let b = start(e.db.url(), services().amqp_url(), &["--batch-size", "100"]);
    assert!(
        eventually(Duration::from_secs(60), || async {
            pending(&e.store).await == 0
        })
        .await,
        "outbox not drained"
    );
    let got = collect(&e.queue, 2000, Duration::from_secs(10)).await;
    assert!(terminate(a).status.success());
    assert!(terminate(b).status.success());
    let ids = message_ids(&got);
    let unique_ids: HashSet<_> = ids.iter().cloned().collect();
    assert_eq!(
        ids.len(),
        2000,
        "{} duplicates",
        ids.len() - unique_ids.len()
    );
    assert_eq!(unique_ids, sent);
}

#[tokio::test]
async fn sigterm_mid_batch_leaves_nothing_claimed_and_a_restart_delivers_the_rest() {
    let e = env("relay-term").await;
    let sent = enqueue(&e.store, &e.queue, 6000).await;
    let relay = start(
        e.db.url(),
        services().amqp_url(),
        &[
            "--batch-size",
            "200",
            "--channels",
            "1",
            "--concurrency",
            "1",
        ],
    );
    assert!(
        eventually(Duration::from_secs(30), || async {
            rabbitry_testkit::queue_depth(&e.queue).await.unwrap_or(0) > 0
        })
        .await
    );
    let out = terminate(relay);
    assert!(out.status.success(), "graceful exit: {:?}", out.status);
    let left = pending(&e.store).await;
    assert!(left > 0, "stopped mid-way (left {left})");

    // No row is still locked: every remaining row can be locked at once.
    let locked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT id FROM rabbitry_outbox FOR UPDATE SKIP LOCKED) t",
    )
    .fetch_one(e.store.pool())
    .await
    .expect("lock check");
    assert_eq!(locked, left, "rows still claimed after shutdown");

    let relay = start(e.db.url(), services().amqp_url(), &[]);
    assert!(
        eventually(Duration::from_secs(60), || async {
            pending(&e.store).await == 0
        })
        .await
    );
    let got = collect(&e.queue, 6000, Duration::from_secs(10)).await;
    assert!(terminate(relay).status.success());
    let ids = message_ids(&got);
    assert_eq!(
        ids.iter().cloned().collect::<HashSet<_>>(),
        sent,
        "nothing lost"
    );
    assert_eq!(ids.len(), 6000, "nothing published twice");
}

#[tokio::test]
async fn a_broker_outage_keeps_rows_pending_until_recovery() {
    let e = env("relay-outage").await;
    let proxy = FaultProxy::start(services().amqp_addr()).await;
    let proxied = services().amqp_url_via("127.0.0.1", proxy.port());
    proxy.set_down(true);
    let sent = enqueue(&e.store, &e.queue, 100).await;
    let relay = start(
        e.db.url(),
        &proxied,
        &["--backoff-base-ms", "100", "--backoff-max-ms", "1000"],
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        pending(&e.store).await,
        100,
        "nothing leaves while the broker is away"
    );
    assert_eq!(rabbitry_testkit::queue_depth(&e.queue).await, Some(0));

    proxy.set_down(false);
    assert!(
        eventually(Duration::from_secs(60), || async {
            pending(&e.store).await == 0
        })
        .await,
        "outbox not drained after recovery"
    );
    let got = collect(&e.queue, 100, Duration::from_secs(10)).await;
    let out = terminate(relay);
    assert!(out.status.success());
    assert_eq!(message_ids(&got).into_iter().collect::<HashSet<_>>(), sent);
    assert_eq!(got.len(), 100);
}
