//! Redis unreachable under load: the idempotent consumer fails closed. No
//! handler runs without a claim, nothing is acked as done, messages wait in
//! the queue; once Redis answers again, consumption resumes with nothing
//! lost and no effect twice.

mod noloss_support;

use std::time::{Duration, Instant};

use noloss_support::{Endpoints, Rig, Stack, proxied, soak};
use rabbitry_testkit::{eventually, queue_depth, services};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redis_unreachable_consumers_fail_closed_then_resume() {
    let rig = Rig::new("noloss-redis").await;
    let (proxy, redis) = proxied(&services().redis_url).await;
    let mut at = Endpoints::direct(&rig);
    at.redis = redis;
    let stack = Stack::start(&rig, &at);

    let total = if soak() { 40_000 } else { 5_000 };
    let load = stack
        .warm_load(&rig, total, Duration::from_millis(30), 500)
        .await;

    proxy.set_down(true);
    // A handler whose claim was answered just before the cut may still
    // finish; after that, none may run.
    tokio::time::sleep(Duration::from_secs(1)).await;
    rig.ledger.forbid_effects();
    let effects_at_cut = rig.ledger.effects();
    let backlog = eventually(Duration::from_secs(10), || async {
        queue_depth(&rig.queue).await.is_some_and(|n| n >= 200)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let forbidden = rig.ledger.forbidden_effects();
    let unavailable = stack.idempotency.metrics().store_unavailable;
    rig.ledger.allow_effects();
    proxy.set_down(false);
    let healed = Instant::now();

    stack.after_fault(&rig, load).await;
    let (drained, summary) = stack.finish(&rig, &[healed]).await;
    eprintln!(
        "effects at the cut {effects_at_cut}, during the outage {forbidden}, \
         store unavailable {unavailable}"
    );
    rig.cleanup().await;

    assert_eq!(forbidden, 0, "a handler ran without a claim");
    assert!(unavailable > 0, "the consumer never met the outage");
    assert!(backlog, "messages were acked while Redis was away");
    assert!(drained, "not drained: {summary:?}");
    assert_eq!(summary.failed, 0);
    summary.assert_no_loss("Redis unreachable for 4 s");
}
