//! An in-memory [`IdempotencyStore`], for unit tests and single-process
//! services. It forgets everything when the process ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::store::{Claim, IdempotencyStore, StoreResult};
use crate::publisher::BoxFuture;

#[derive(Debug)]
enum State {
    Leased(String),
    Done,
}

#[derive(Debug)]
struct Entry {
    state: State,
    until: Instant,
}

/// An in-memory store. Cheap to clone (clones share their keys). Uses
/// tokio's clock, so tests with `tokio::time::pause()` can expire leases.
///
/// A std `Mutex` is enough: it is held for a map lookup, never across an
/// await.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    keys: Arc<Mutex<HashMap<String, Entry>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Live keys (leased or done), for tests.
    pub fn len(&self) -> usize {
        let now = Instant::now();
        self.with(|keys| keys.values().filter(|e| e.until > now).count())
    }

    /// Whether no key is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Entry>) -> T) -> T {
        f(&mut self.keys.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The live entry's state holder: `Some(true)` ours, `Some(false)`
    /// another's or done, `None` absent or expired.
    fn held_by(keys: &HashMap<String, Entry>, key: &str, token: &str) -> Option<bool> {
        keys.get(key)
            .filter(|e| e.until > Instant::now())
            .map(|e| matches!(&e.state, State::Leased(t) if t == token))
    }
}

impl IdempotencyStore for MemoryStore {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, StoreResult<Claim>> {
        let claim = self.with(|keys| {
            let now = Instant::now();
            match keys.get(key).filter(|e| e.until > now) {
                Some(Entry {
                    state: State::Done, ..
                }) => Claim::Done,
                Some(_) => Claim::Busy,
                None => {
                    keys.insert(
                        key.to_owned(),
                        Entry {
                            state: State::Leased(token.to_owned()),
                            until: now + lease,
                        },
                    );
                    Claim::Acquired
                }
            }
        });
        Box::pin(async move { Ok(claim) })
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        retention: Duration,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        let done = self.with(|keys| {
            let ours = Self::held_by(keys, key, token) != Some(false);
            keys.insert(
                key.to_owned(),
                Entry {
                    state: State::Done,
                    until: Instant::now() + retention,
                },
            );
            ours
        });
        Box::pin(async move { Ok(done) })
    }

    fn release<'a>(&'a self, key: &'a str, token: &'a str) -> BoxFuture<'a, StoreResult<bool>> {
        let released = self.with(|keys| {
            let ours = Self::held_by(keys, key, token) == Some(true);
            if ours {
                keys.remove(key);
            }
            ours
        });
        Box::pin(async move { Ok(released) })
    }

    fn renew<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        let renewed = self.with(|keys| {
            let ours = Self::held_by(keys, key, token) == Some(true);
            if let (true, Some(e)) = (ours, keys.get_mut(key)) {
                e.until = Instant::now() + lease;
            }
            ours
        });
        Box::pin(async move { Ok(renewed) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(10);
    const KEEP: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn a_lease_blocks_others_until_it_expires() {
        let s = MemoryStore::new();
        assert_eq!(s.claim("k", "a", LEASE).await.ok(), Some(Claim::Acquired));
        assert_eq!(s.claim("k", "b", LEASE).await.ok(), Some(Claim::Busy));
        assert_eq!(s.release("k", "b").await.ok(), Some(false), "not b's");
        tokio::time::advance(LEASE).await;
        assert_eq!(s.claim("k", "b", LEASE).await.ok(), Some(Claim::Acquired));
        assert_eq!(
            s.renew("k", "a", LEASE).await.ok(),
            Some(false),
            "a lost it"
        );
        // a's work is done: the key is marked, though it was b's lease.
        assert_eq!(s.complete("k", "a", KEEP).await.ok(), Some(false));
        assert_eq!(s.release("k", "b").await.ok(), Some(false), "done stays");
        assert_eq!(s.complete("k", "b", KEEP).await.ok(), Some(false));
        assert_eq!(s.claim("k", "c", LEASE).await.ok(), Some(Claim::Done));
        tokio::time::advance(KEEP).await;
        assert_eq!(s.claim("k", "c", LEASE).await.ok(), Some(Claim::Acquired));
    }

    #[tokio::test(start_paused = true)]
    async fn release_and_renew_need_the_token() {
        let s = MemoryStore::new();
        assert_eq!(s.claim("k", "a", LEASE).await.ok(), Some(Claim::Acquired));
        tokio::time::advance(LEASE / 2).await;
        assert_eq!(s.renew("k", "a", LEASE).await.ok(), Some(true));
        tokio::time::advance(LEASE * 3 / 4).await;
        assert_eq!(s.claim("k", "b", LEASE).await.ok(), Some(Claim::Busy));
        assert_eq!(s.release("k", "a").await.ok(), Some(true));
        assert_eq!(s.claim("k", "b", LEASE).await.ok(), Some(Claim::Acquired));
    }
}
