//! The layer against in-memory stores, on tokio's paused clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use super::layer::guard;
use super::{Claim, Idempotency, IdempotencyStore, MemoryStore, StoreError, StoreResult};
use crate::consumer::{Delivery, Disposition};
use crate::message::Message;
use crate::publisher::BoxFuture;

fn delivery(id: &str) -> Delivery {
    let m = Message::bytes("", "orders", "{}").message_id(id);
    Delivery::for_test("orders", "{}", m.properties().clone())
}

/// A handler that counts its runs and the most that ran at once.
#[derive(Clone, Default)]
struct Probe {
    runs: Arc<AtomicUsize>,
    now: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

impl Probe {
    async fn run(&self, takes: Duration, ends: Disposition) -> Disposition {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(n, Ordering::SeqCst);
        tokio::time::sleep(takes).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        ends
    }
    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }
}

async fn handle(
    idem: &Idempotency,
    d: Delivery,
    p: &Probe,
    takes: Duration,
    ends: Disposition,
) -> Disposition {
    guard(idem.inner.clone(), d, |_| p.run(takes, ends)).await
}

#[tokio::test(start_paused = true)]
async fn three_deliveries_of_one_message_run_the_handler_once() {
    let idem = Idempotency::builder(MemoryStore::new())
        .build()
        .expect("valid");
    let p = Probe::default();
    for _ in 0..3 {
        let out = handle(&idem, delivery("m1"), &p, Duration::ZERO, Disposition::Ack).await;
        assert_eq!(out, Disposition::Ack);
    }
    assert_eq!(p.runs(), 1);
    let m = idem.metrics();
    assert_eq!((m.claimed, m.duplicates, m.completed), (1, 2, 1));
}

#[tokio::test(start_paused = true)]
async fn a_failed_handler_gives_the_key_back_and_the_retry_runs() {
    let idem = Idempotency::builder(MemoryStore::new())
        .build()
        .expect("valid");
    let p = Probe::default();
    let failed = handle(
        &idem,
        delivery("m1"),
        &p,
        Duration::ZERO,
        Disposition::retry("x"),
    )
    .await;
    assert_eq!(failed, Disposition::retry("x"));
    let ok = handle(&idem, delivery("m1"), &p, Duration::ZERO, Disposition::Ack).await;
    assert_eq!(ok, Disposition::Ack);
    assert_eq!(p.runs(), 2);
    assert_eq!(idem.metrics().released, 1);
}

#[tokio::test(start_paused = true)]
async fn racing_deliveries_never_run_at_once_and_the_loser_acks_as_a_duplicate() {
    let idem = Idempotency::builder(MemoryStore::new())
        .build()
        .expect("valid");
    let p = Probe::default();
    let slow = Duration::from_secs(3);
    let (a, b) = tokio::join!(
        handle(&idem, delivery("m1"), &p, slow, Disposition::Ack),
        handle(&idem, delivery("m1"), &p, slow, Disposition::Ack),
    );
    assert_eq!((a, b), (Disposition::Ack, Disposition::Ack));
    assert_eq!(p.runs(), 1);
    assert_eq!(p.most.load(Ordering::SeqCst), 1);
    let m = idem.metrics();
    assert!(m.busy >= 1 && m.duplicates == 1, "{m:?}");
}

#[tokio::test(start_paused = true)]
async fn a_handler_longer_than_its_lease_renews_it() {
    let idem = Idempotency::builder(MemoryStore::new())
        .lease(Duration::from_secs(6))
        .build()
        .expect("valid");
    let p = Probe::default();
    let long = Duration::from_secs(20);
    let (a, b) = tokio::join!(
        handle(&idem, delivery("m1"), &p, long, Disposition::Ack),
        async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            handle(&idem, delivery("m1"), &p, long, Disposition::Ack).await
        },
    );
    assert_eq!((a, b), (Disposition::Ack, Disposition::Ack));
    assert_eq!(
        p.runs(),
        1,
        "the second waited for the first, past its first lease"
    );
    assert_eq!(idem.metrics().lease_lost, 0);
}

/// A store whose claims work and whose renewals say the lease was lost.
struct Stolen(MemoryStore);

impl IdempotencyStore for Stolen {
    fn claim<'a>(
        &'a self,
        k: &'a str,
        t: &'a str,
        l: Duration,
    ) -> BoxFuture<'a, StoreResult<Claim>> {
        self.0.claim(k, t, l)
    }
    fn complete<'a>(
        &'a self,
        k: &'a str,
        t: &'a str,
        r: Duration,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        self.0.complete(k, t, r)
    }
    fn release<'a>(&'a self, k: &'a str, t: &'a str) -> BoxFuture<'a, StoreResult<bool>> {
        self.0.release(k, t)
    }
    fn renew<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: Duration,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(async { Ok(false) })
    }
}

#[tokio::test(start_paused = true)]
async fn a_handler_that_lost_its_lease_is_stopped_and_retried() {
    let idem = Idempotency::builder(Stolen(MemoryStore::new()))
        .lease(Duration::from_secs(6))
        .build()
        .expect("valid");
    let p = Probe::default();
    let out = handle(
        &idem,
        delivery("m1"),
        &p,
        Duration::from_secs(60),
        Disposition::Ack,
    )
    .await;
    assert!(
        matches!(out, Disposition::Retry { after: None, .. }),
        "{out:?}"
    );
    assert_eq!(p.now.load(Ordering::SeqCst), 1, "stopped mid-run");
    assert_eq!(idem.metrics().lease_lost, 1);
}

/// A store that fails every call while `down`.
#[derive(Clone, Default)]
struct Flaky {
    store: MemoryStore,
    down: Arc<AtomicBool>,
}

impl Flaky {
    fn check(&self) -> StoreResult<()> {
        match self.down.load(Ordering::SeqCst) {
            true => Err(StoreError::unavailable("connection refused")),
            false => Ok(()),
        }
    }
}

impl IdempotencyStore for Flaky {
    fn claim<'a>(
        &'a self,
        k: &'a str,
        t: &'a str,
        l: Duration,
    ) -> BoxFuture<'a, StoreResult<Claim>> {
        Box::pin(async move {
            self.check()?;
            self.store.claim(k, t, l).await
        })
    }
    fn complete<'a>(
        &'a self,
        k: &'a str,
        t: &'a str,
        r: Duration,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(async move {
            self.check()?;
            self.store.complete(k, t, r).await
        })
    }
    fn release<'a>(&'a self, k: &'a str, t: &'a str) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(async move {
            self.check()?;
            self.store.release(k, t).await
        })
    }
    fn renew<'a>(
        &'a self,
        k: &'a str,
        t: &'a str,
        l: Duration,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(async move {
            self.check()?;
            self.store.renew(k, t, l).await
        })
    }
}

#[tokio::test(start_paused = true)]
async fn an_unavailable_store_fails_closed_then_recovers() {
    let flaky = Flaky::default();
    flaky.down.store(true, Ordering::SeqCst);
    let idem = Idempotency::builder(flaky.clone())
        .max_wait(Duration::from_secs(20))
        .build()
        .expect("valid");
    let p = Probe::default();
    let out = handle(&idem, delivery("m1"), &p, Duration::ZERO, Disposition::Ack).await;
    assert_eq!(out, Disposition::Requeue, "given back, never acked");
    assert_eq!(p.runs(), 0);
    let m = idem.metrics();
    assert!(m.store_unavailable >= 3 && m.gave_back == 1, "{m:?}");
    // Back within the wait: the delivery that waited runs.
    let (out, ()) = tokio::join!(
        handle(&idem, delivery("m1"), &p, Duration::ZERO, Disposition::Ack),
        async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            flaky.down.store(false, Ordering::SeqCst);
        },
    );
    assert_eq!(out, Disposition::Ack);
    assert_eq!(p.runs(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_message_without_an_id_is_dead_lettered_or_run_as_configured() {
    let p = Probe::default();
    let strict = Idempotency::builder(MemoryStore::new())
        .build()
        .expect("valid");
    let out = handle(&strict, delivery(""), &p, Duration::ZERO, Disposition::Ack).await;
    assert!(matches!(out, Disposition::DeadLetter { .. }), "{out:?}");
    assert_eq!(p.runs(), 0);
    let lax = Idempotency::builder(MemoryStore::new())
        .on_missing_key(super::MissingKey::Run)
        .build()
        .expect("valid");
    let out = handle(&lax, delivery(""), &p, Duration::ZERO, Disposition::Ack).await;
    assert_eq!(out, Disposition::Ack);
    assert_eq!(p.runs(), 1);
    assert_eq!(lax.metrics().missing_key, 1);
}

#[test]
fn keys_are_namespaced_by_prefix_group_and_key() {
    let store = MemoryStore::new();
    let by_id = Idempotency::builder(store.clone()).build().expect("valid");
    assert_eq!(
        by_id.key_of(&delivery("m1")).as_deref(),
        Some("rabbitry:idem:test:m1")
    );
    let by_order = Idempotency::builder(store)
        .prefix("shop")
        .group("billing")
        .key(|d| {
            d.header("order")
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        })
        .build()
        .expect("valid");
    assert_eq!(by_order.key_of(&delivery("m1")), None);
    assert!(
        Idempotency::builder(MemoryStore::new())
            .prefix("")
            .build()
            .is_err()
    );
    assert!(
        Idempotency::builder(MemoryStore::new())
            .lease(Duration::from_secs(1))
            .build()
            .is_err()
    );
}
