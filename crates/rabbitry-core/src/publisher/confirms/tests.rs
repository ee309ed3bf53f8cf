//! The collector's matching, driven by hand: each publish is a future the
//! test resolves when and how it likes, with the return lapin would attach,
//! so the orders lapin can produce are reproduced exactly, with no broker.

use std::sync::Arc;
use std::time::Duration;

use lapin::message::{BasicReturnMessage, Delivery};
use lapin::{BasicProperties, Confirmation};
use tokio::sync::{Semaphore, oneshot};

use super::{Confirms, Reply, Verdict};

/// One publish submitted to `confirms`: resolve it through `resolve`, read
/// its verdict from `verdict`.
struct Pending {
    resolve: oneshot::Sender<lapin::Result<Confirmation>>,
    verdict: oneshot::Receiver<Reply>,
}

fn submit(confirms: &Confirms, window: &Arc<Semaphore>, message_id: &str) -> Pending {
    let (resolve, resolved) = oneshot::channel::<lapin::Result<Confirmation>>();
    let publish = Box::pin(async move { resolved.await.expect("the test resolves it") });
    let permit = window.clone().try_acquire_owned().expect("a permit");
    let verdict = confirms.submit(message_id, publish, permit, tokio::time::Instant::now());
    Pending { resolve, verdict }
}

/// The return of the message `message_id`, as lapin hands it over.
fn returned(message_id: &str) -> BasicReturnMessage {
    let mut delivery = Delivery::mock(0, "".into(), "nowhere".into(), false, Vec::new());
    delivery.properties = BasicProperties::default().with_message_id(message_id.into());
    BasicReturnMessage {
        delivery,
        reply_code: 312,
        reply_text: "NO_ROUTE".into(),
    }
}

fn ack(carrying: Option<&str>) -> lapin::Result<Confirmation> {
    Ok(Confirmation::Ack(carrying.map(returned)))
}

/// Lets the collector run everything it can.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

async fn verdict(receiver: oneshot::Receiver<Reply>) -> Verdict {
    tokio::time::timeout(Duration::from_secs(5), receiver)
        .await
        .expect("a verdict in time")
        .expect("the collector answers")
        .0
}

fn setup() -> (Confirms, Arc<Semaphore>) {
    (Confirms::spawn(), Arc::new(Semaphore::new(100)))
}

#[tokio::test]
async fn a_multiple_ack_resolved_in_hash_order_still_matches_each_return() {
    // m1 and m2 are both unroutable: lapin holds [R(m1), R(m2)] when a
    // multiple ack covers both, and resolves tag 2 first (hash order), so
    // m2's confirm carries R(m1) and m1's, resolved after it, carries R(m2).
    let (confirms, window) = setup();
    let m1 = submit(&confirms, &window, "m1");
    let mut m2 = submit(&confirms, &window, "m2");
    let _ = m2.resolve.send(ack(Some("m1")));
    settle().await;
    assert!(
        m2.verdict.try_recv().is_err(),
        "m2 must not be reported before the confirm that may carry its return"
    );
    let _ = m1.resolve.send(ack(Some("m2")));
    assert!(matches!(
        verdict(m1.verdict).await,
        Verdict::Unroutable { .. }
    ));
    assert!(matches!(
        verdict(m2.verdict).await,
        Verdict::Unroutable { .. }
    ));
}

#[tokio::test]
async fn a_return_carried_by_a_later_publish_is_matched_to_its_own_message() {
    // m (unroutable) was acked after x (routable), and x's confirm took the
    // waiting return of m.
    let (confirms, window) = setup();
    let m = submit(&confirms, &window, "m");
    let x = submit(&confirms, &window, "x");
    let _ = x.resolve.send(ack(Some("m")));
    settle().await;
    let _ = m.resolve.send(ack(None));
    assert!(matches!(
        verdict(m.verdict).await,
        Verdict::Unroutable { .. }
    ));
    assert!(matches!(verdict(x.verdict).await, Verdict::Confirmed));
}

#[tokio::test]
async fn verdicts_come_in_publish_order_and_nacks_stay_nacks() {
    let (confirms, window) = setup();
    let a = submit(&confirms, &window, "a");
    let mut b = submit(&confirms, &window, "b");
    let _ = b.resolve.send(Ok(Confirmation::Nack(None)));
    settle().await;
    assert!(b.verdict.try_recv().is_err(), "b waits for a");
    let _ = a.resolve.send(ack(None));
    assert!(matches!(verdict(a.verdict).await, Verdict::Confirmed));
    assert!(matches!(verdict(b.verdict).await, Verdict::Nacked));
    assert_eq!(window.available_permits(), 100, "every permit returned");
}

#[tokio::test]
async fn a_failed_channel_is_retired_and_its_unreported_verdicts_are_lost() {
    let (confirms, window) = setup();
    let a = submit(&confirms, &window, "a");
    let b = submit(&confirms, &window, "b");
    let _ = b.resolve.send(ack(None));
    let _ = a.resolve.send(Err(lapin::ErrorKind::InvalidChannelState(
        lapin::ChannelState::Closed,
        "basic.publish",
    )
    .into()));
    assert!(matches!(verdict(a.verdict).await, Verdict::Lost(_)));
    // b was acked, but a return for it may sit on a confirm of the failed
    // channel: it is not reported as confirmed.
    assert!(matches!(verdict(b.verdict).await, Verdict::Lost(_)));
    assert!(confirms.is_retired(), "the pool drops the channel");
}

#[tokio::test]
async fn a_confirm_that_resolves_after_its_retired_channel_reported_it_is_ignored() {
    // a fails: the channel retires and reports b as lost while b's confirm
    // is still out; b's confirm resolving later must not upset the
    // collector (it once panicked on the ticket below its base).
    let (confirms, window) = setup();
    let a = submit(&confirms, &window, "a");
    let b = submit(&confirms, &window, "b");
    let _ = a.resolve.send(Err(lapin::ErrorKind::InvalidChannelState(
        lapin::ChannelState::Closed,
        "basic.publish",
    )
    .into()));
    assert!(matches!(verdict(a.verdict).await, Verdict::Lost(_)));
    assert!(matches!(verdict(b.verdict).await, Verdict::Lost(_)));
    let _ = b.resolve.send(ack(None));
    settle().await;
    let c = submit(&confirms, &window, "c");
    let _ = c.resolve.send(ack(None));
    assert!(
        matches!(verdict(c.verdict).await, Verdict::Lost(_)),
        "the collector still answers, for the retired channel"
    );
}

#[tokio::test]
async fn a_channel_that_only_gets_nacks_leaves_the_pool_with_its_verdicts_intact() {
    let (confirms, window) = setup();
    let n = super::collector::NACKS_BEFORE_NEW_CHANNEL;
    let mut verdicts = Vec::new();
    for i in 0..n {
        let p = submit(&confirms, &window, &format!("n{i}"));
        let _ = p.resolve.send(Ok(Confirmation::Nack(None)));
        verdicts.push(p.verdict);
        if i + 1 < n {
            settle().await;
            assert!(!confirms.is_retired(), "not after {} nacks", i + 1);
        }
    }
    for v in verdicts {
        assert!(
            matches!(verdict(v).await, Verdict::Nacked),
            "still nacks, not lost"
        );
    }
    assert!(confirms.is_retired());

    // n - 1 nacks, an ack, n - 1 nacks: the ack starts the count again.
    let (confirms, window) = setup();
    for i in 0..2 * n - 1 {
        let p = submit(&confirms, &window, &format!("m{i}"));
        let outcome = if i == n - 1 {
            ack(None)
        } else {
            Ok(Confirmation::Nack(None))
        };
        let _ = p.resolve.send(outcome);
        let _ = verdict(p.verdict).await;
    }
    assert!(!confirms.is_retired());
}
