//! The Redis store against the real Redis: the claim, the token checks,
//! lease expiry, and an unreachable or silent Redis (through a proxy).

use std::time::Duration;

use rabbitry_core::{Claim, IdempotencyStore};
use rabbitry_redis::RedisStore;
use rabbitry_testkit::{FaultProxy, services};

const LEASE: Duration = Duration::from_secs(5);
const KEEP: Duration = Duration::from_secs(60);

fn store() -> RedisStore {
    rabbitry_testkit::init_tracing();
    RedisStore::builder(services().redis_url.clone())
        .build()
        .expect("store")
}

fn key(name: &str) -> String {
    rabbitry_testkit::unique(&format!("rabbitry-test:{name}"))
}

/// Redis's view of a key: its value and TTL in ms.
async fn peek(key: &str) -> (Option<String>, i64) {
    let client = redis::Client::open(services().redis_url.as_str()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let value: Option<String> = redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("get");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("pttl");
    (value, ttl)
}

async fn delete(key: &str) {
    let client = redis::Client::open(services().redis_url.as_str()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let _: i64 = redis::cmd("DEL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("del");
}

#[tokio::test]
async fn a_key_is_leased_then_done_with_its_retention_and_holds_no_payload() {
    let (s, k) = (store(), key("life"));
    assert_eq!(s.claim(&k, "a", LEASE).await.ok(), Some(Claim::Acquired));
    let (value, ttl) = peek(&k).await;
    assert_eq!(value.as_deref(), Some("processing:a"));
    assert!(ttl > 0 && ttl <= 5000, "lease TTL {ttl}");
    assert_eq!(s.claim(&k, "b", LEASE).await.ok(), Some(Claim::Busy));
    assert_eq!(s.release(&k, "b").await.ok(), Some(false), "not b's");
    assert_eq!(s.renew(&k, "b", KEEP).await.ok(), Some(false), "not b's");
    assert_eq!(s.renew(&k, "a", KEEP).await.ok(), Some(true));
    assert!(peek(&k).await.1 > 5000, "renewed");
    assert_eq!(s.complete(&k, "a", KEEP).await.ok(), Some(true));
    let (value, ttl) = peek(&k).await;
    assert_eq!(value.as_deref(), Some("done"));
    assert!(ttl > 50_000 && ttl <= 60_000, "retention TTL {ttl}");
    assert_eq!(s.claim(&k, "c", LEASE).await.ok(), Some(Claim::Done));
    delete(&k).await;
}

#[tokio::test]
async fn a_released_key_can_be_claimed_again_and_an_expired_lease_by_anyone() {
    let (s, k) = (store(), key("expiry"));
    assert_eq!(s.claim(&k, "a", LEASE).await.ok(), Some(Claim::Acquired));
    assert_eq!(s.release(&k, "a").await.ok(), Some(true));
    assert_eq!(
        s.claim(&k, "b", Duration::from_millis(300)).await.ok(),
        Some(Claim::Acquired)
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(s.claim(&k, "c", LEASE).await.ok(), Some(Claim::Acquired));
    assert_eq!(s.renew(&k, "b", LEASE).await.ok(), Some(false), "b lost it");
    assert_eq!(
        s.complete(&k, "b", KEEP).await.ok(),
        Some(false),
        "c held it"
    );
    // b's work is done, so the key is done: c's retry acks instead of
    // running a third time, and c cannot give a done key back.
    assert_eq!(peek(&k).await.0.as_deref(), Some("done"));
    assert_eq!(s.release(&k, "c").await.ok(), Some(false), "done stays");
    assert_eq!(s.claim(&k, "d", LEASE).await.ok(), Some(Claim::Done));
    delete(&k).await;
}

#[tokio::test]
async fn an_unreachable_or_silent_redis_is_an_error_within_the_bound_and_then_recovers() {
    let proxy = FaultProxy::start("127.0.0.1:6379").await;
    let s = RedisStore::builder(format!("redis://127.0.0.1:{}", proxy.port()))
        .response_timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(300))
        .build()
        .expect("store");
    let k = key("outage");
    s.ping().await.expect("reachable through the proxy");
    for fault in ["down", "blackhole"] {
        match fault {
            "down" => proxy.set_down(true),
            _ => proxy.set_blackhole(true),
        }
        let started = std::time::Instant::now();
        let answer = s.claim(&k, "a", LEASE).await;
        assert!(answer.is_err(), "{fault}: {answer:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{fault}: bounded"
        );
        let shown = answer.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(!shown.contains("127.0.0.1"), "no address in {shown}");
        match fault {
            "down" => proxy.set_down(false),
            _ => proxy.set_blackhole(false),
        }
        let back = rabbitry_testkit::eventually(Duration::from_secs(10), || async {
            s.ping().await.is_ok()
        })
        .await;
        assert!(back, "{fault}: the store reconnects by itself");
    }
    assert_eq!(s.claim(&k, "a", LEASE).await.ok(), Some(Claim::Acquired));
    delete(&k).await;
}

#[tokio::test]
async fn concurrent_claims_batched_together_give_one_key_to_one_claimant() {
    let s = store();
    let (hot, cold) = (key("hot"), key("cold"));
    let claims = (0..100).map(|i| {
        let s = s.clone();
        let k = if i % 2 == 0 {
            hot.clone()
        } else {
            format!("{cold}-{i}")
        };
        async move {
            let answer = s.claim(&k, &format!("t{i}"), LEASE).await;
            (k, answer)
        }
    });
    let answers = futures_join_all(claims).await;
    let on_hot = answers.iter().filter(|(k, _)| *k == hot);
    let won = on_hot
        .clone()
        .filter(|(_, a)| matches!(a, Ok(Claim::Acquired)))
        .count();
    assert_eq!(won, 1, "one claimant of the hot key");
    assert!(on_hot.clone().all(|(_, a)| a.is_ok()));
    let others = answers.iter().filter(|(k, _)| *k != hot);
    assert!(
        others
            .clone()
            .all(|(_, a)| matches!(a, Ok(Claim::Acquired)))
    );
    delete(&hot).await;
    for (k, _) in others {
        delete(k).await;
    }
}

/// Runs every future at once (tasks, so the batcher sees them together).
async fn futures_join_all<T: Send + 'static>(
    futures: impl Iterator<Item = impl std::future::Future<Output = T> + Send + 'static>,
) -> Vec<T> {
    let tasks: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("join"));
    }
    out
}
