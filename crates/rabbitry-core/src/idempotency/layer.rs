//! The idempotency layer: claim the delivery's key, run the handler under
//! the lease, then mark the key done or give it back.
//!
//! It fails closed: when the store cannot answer, the handler does not run
//! and the delivery is not acked. It waits, holding its place, and asks
//! again with backoff; after `max_wait` it is requeued. Waiting in process
//! rather than through a delay queue keeps an outage of the store from using
//! up the retry policy's delayed retries and sending good messages to the
//! error queue, and it slows intake while the store is away (every handler
//! slot waits), which is what a consumer that cannot check should do.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use tokio::time::{Instant, sleep, timeout};

use super::config::{Idempotency, Inner, MissingKey};
use super::lease::{Leased, run_leased};
use super::metrics::Counters;
use super::store::Claim;
use crate::consumer::{Delivery, Disposition, Next};
use crate::publisher::BoxFuture;

/// The longest pause between two claims of a waiting delivery.
const MAX_PAUSE: Duration = Duration::from_secs(5);

impl Idempotency {
    /// The layer to give [`ConsumerBuilder::idempotent`](crate::ConsumerBuilder::idempotent).
    pub fn layer(
        &self,
    ) -> impl Fn(Delivery, Next) -> BoxFuture<'static, Disposition> + Send + Sync + 'static {
        let inner = self.inner.clone();
        move |d, next: Next| Box::pin(guard(inner.clone(), d, move |d| next.run(d)))
    }
}

/// The layer, over any rest-of-chain `run` (unit tests pass a closure).
pub(crate) async fn guard<F, Fut>(inner: Arc<Inner>, d: Delivery, run: F) -> Disposition
where
    F: FnOnce(Delivery) -> Fut,
    Fut: Future<Output = Disposition>,
{
    let c = &inner.counters;
    let key = match (Idempotency {
        inner: inner.clone(),
    })
    .key_of(&d)
    {
        Some(key) => key,
        None => {
            Counters::bump(&c.missing_key);
            return match inner.settings.missing_key {
                MissingKey::Run => {
                    tracing::warn!(
                        queue = d.queue(),
                        "delivery without an idempotency key (no message id): running it unprotected"
                    );
                    run(d).await
                }
                _ => Disposition::dead_letter(
                    "no idempotency key: the message has no message id (set one when publishing, or give the idempotency layer a business key)",
                ),
            };
        }
    };
    let token = token();
    let claimed_at = match claim(&inner, &d, &key, &token).await {
        Ok(asked) => asked,
        Err(disposition) => return disposition,
    };
    Counters::bump(&c.claimed);
    let s = &inner.settings;
    let store = inner.store.as_ref();
    let run = run_leased(
        store,
        (&key, &token),
        claimed_at,
        s.lease,
        s.store_timeout,
        run(d.clone()),
    );
    let disposition = match run.await {
        Leased::Finished(disposition) => disposition,
        Leased::Lost => {
            Counters::bump(&c.lease_lost);
            // Not released: the key may be another consumer's now. A retry
            // finds it done, or busy, or free once that lease ends.
            return Disposition::retry("lost the idempotency lease while the handler ran");
        }
    };
    let bound = s.store_timeout;
    if disposition == Disposition::Ack {
        match timeout(bound, store.complete(&key, &token, s.retention)).await {
            Ok(Ok(true)) => Counters::bump(&c.completed),
            Ok(Ok(false)) => {
                Counters::bump(&c.lease_lost);
                tracing::warn!(
                    message_id = d.id(),
                    "handler finished after another consumer took its idempotency key"
                );
            }
            // The work is done: acking is right, running it again is not.
            // The lease stays until it expires; a duplicate after that runs.
            Ok(Err(error)) => mark_failed(c, &d, &error.to_string()),
            Err(_) => mark_failed(c, &d, "timed out"),
        }
    } else {
        match timeout(bound, store.release(&key, &token)).await {
            Ok(Ok(_)) => Counters::bump(&c.released),
            // The lease ends by itself; the retry waits for it.
            Ok(Err(error)) => {
                tracing::warn!(%error, "releasing an idempotency lease failed; it will expire");
            }
            Err(_) => tracing::warn!("releasing an idempotency lease timed out; it will expire"),
        }
    }
    disposition
}

fn mark_failed(c: &Counters, d: &Delivery, error: &str) {
    Counters::bump(&c.mark_failed);
    tracing::warn!(
        message_id = d.id(),
        error,
        "handled, but the idempotency store did not record it: acking anyway"
    );
}

/// A claim token: unique per claim across every consumer (a random
/// process part, then a counter), without a random draw per delivery.
fn token() -> String {
    static PROCESS: LazyLock<String> = LazyLock::new(|| uuid::Uuid::now_v7().simple().to_string());
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{}-{:x}", *PROCESS, NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Claims `key`, waiting while another consumer holds it or the store is
/// away. `Ok`: when the successful claim was asked (the lease runs from no
/// later than then). `Err`: what to do with the delivery instead.
async fn claim(
    inner: &Inner,
    d: &Delivery,
    key: &str,
    token: &str,
) -> Result<Instant, Disposition> {
    let (s, c) = (&inner.settings, &inner.counters);
    let started = Instant::now();
    let mut pause = s.retry_delay;
    loop {
        let asked = Instant::now();
        let answer = timeout(s.store_timeout, inner.store.claim(key, token, s.lease)).await;
        match answer {
            Ok(Ok(Claim::Acquired)) => return Ok(asked),
            Ok(Ok(Claim::Done)) => {
                Counters::bump(&c.duplicates);
                tracing::debug!(message_id = d.id(), "duplicate: already handled, acking");
                return Err(Disposition::Ack);
            }
            Ok(Ok(_)) => Counters::bump(&c.busy),
            Ok(Err(error)) => {
                Counters::bump(&c.store_unavailable);
                tracing::warn!(%error, message_id = d.id(), "idempotency store unavailable: the handler waits");
            }
            Err(_) => {
                Counters::bump(&c.store_unavailable);
                tracing::warn!(after = ?s.store_timeout, message_id = d.id(), "idempotency store did not answer: the handler waits");
            }
        }
        if started.elapsed() + pause > s.max_wait {
            Counters::bump(&c.gave_back);
            tracing::warn!(
                message_id = d.id(),
                "gave up waiting for the idempotency key: requeueing"
            );
            return Err(Disposition::Requeue);
        }
        sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}
