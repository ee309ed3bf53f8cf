//! Retries that keep order: a failing message is run again in place, with
//! backoff, holding its key's lane (or its partition, when handled
//! serially); it is never requeued behind later messages and never sent to
//! a delay queue.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;

use super::delivery::Delivery;
use super::disposition::{Disposition, FailureKind};
use super::layer::{Layer, Next, from_fn};

/// What happens when an ordered message has used up its attempts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum WhenExhausted {
    /// Dead-letter it to the error exchange and let its key move on: the
    /// key's later messages are handled without it. The default.
    #[default]
    DeadLetter,
    /// Stop its key: keep retrying it at the longest backoff, logging an
    /// error each time, so no later message of the key (of the partition,
    /// with serial handling) runs until the cause is fixed or an operator
    /// removes the message. Bounded by the broker's consumer timeout and the
    /// poison-message guard: see `docs/ordering.md`.
    Stop,
}

/// In-place retries for ordered consumption
/// ([`ConsumerBuilder::ordered`](super::ConsumerBuilder::ordered)).
///
/// A retryable failure (or a requeue, which would put the message behind
/// later ones) runs the handler again in place after a pause that doubles
/// from `backoff` up to `max_backoff` (a handler's own
/// [`after`](super::HandlerError::after) is used as the pause, at most
/// `max_backoff`). A panic in a layer counts as a retryable failure. The
/// retries end early when the delivery's channel is lost: the broker
/// delivers the message again, so running it here too would run it twice.
/// After
/// `attempts` runs, [`WhenExhausted`] decides. Permanent and decode
/// failures dead-letter at once, as always.
///
/// Defaults: 5 attempts, 100 ms doubling to 10 s, dead-letter when
/// exhausted.
///
/// ```
/// use std::time::Duration;
/// use rabbitry_core::{OrderedRetry, WhenExhausted};
///
/// let retry = OrderedRetry::default()
///     .attempts(8)
///     .backoff(Duration::from_millis(50), Duration::from_secs(5))
///     .when_exhausted(WhenExhausted::Stop);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct OrderedRetry {
    pub(crate) attempts: u32,
    pub(crate) backoff: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) exhausted: WhenExhausted,
}

impl Default for OrderedRetry {
    fn default() -> Self {
        Self {
            attempts: 5,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            exhausted: WhenExhausted::DeadLetter,
        }
    }
}

impl OrderedRetry {
    /// Handler runs before [`WhenExhausted`] applies (at least 1).
    pub fn attempts(mut self, n: u32) -> Self {
        self.attempts = n.max(1);
        self
    }
    /// The first pause, and the longest.
    pub fn backoff(mut self, first: Duration, max: Duration) -> Self {
        self.backoff = first;
        self.max_backoff = max.max(first);
        self
    }
    /// What happens after the last attempt.
    pub fn when_exhausted(mut self, then: WhenExhausted) -> Self {
        self.exhausted = then;
        self
    }

    /// The pause after run `made` (from 1) failed.
    pub(crate) fn pause(&self, made: u32) -> Duration {
        let doubled = self
            .backoff
            .saturating_mul(2u32.saturating_pow(made.saturating_sub(1).min(16)));
        doubled.min(self.max_backoff)
    }
}

/// What to do after a run of an ordered message ended in `disposition`,
/// with `made` runs made in place so far.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Done: this is the final disposition.
    Finish(Disposition),
    /// Run it again after the pause.
    Again(Duration),
}

pub(crate) fn step(retry: &OrderedRetry, made: u32, disposition: Disposition) -> Step {
    let (reason, asked) = match disposition {
        Disposition::Retry { reason, after } => (reason, after),
        Disposition::Requeue => ("the handler asked to requeue".to_owned(), None),
        other => return Step::Finish(other),
    };
    if made < retry.attempts {
        // A handler's own pause is capped too: the key waits behind it.
        let pause = asked.map_or_else(|| retry.pause(made), |a| a.min(retry.max_backoff));
        return Step::Again(pause);
    }
    match retry.exhausted {
        WhenExhausted::DeadLetter => Step::Finish(Disposition::DeadLetter {
            reason,
            kind: FailureKind::Retryable,
        }),
        WhenExhausted::Stop => Step::Again(retry.max_backoff),
    }
}

/// The layer: runs the rest in place until [`step`] says it is done, or
/// the delivery's channel is lost.
pub(crate) fn ordered_retries(retry: OrderedRetry) -> Layer {
    from_fn(move |d: Delivery, next: Next| async move {
        let first = d.attempt();
        let mut made = 0u32;
        loop {
            d.set_attempt(first.saturating_add(made));
            // A panic in a layer after this one (the user's) is a retryable
            // failure: retried in place, and `Stop` holds.
            let disposition = AssertUnwindSafe(next.clone().run(d.clone()))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| {
                    tracing::error!(message_id = d.id(), "a consumer layer panicked");
                    Disposition::retry("a consumer layer panicked")
                });
            made = made.saturating_add(1);
            let pause = match step(&retry, made, disposition) {
                Step::Finish(disposition) => return disposition,
                Step::Again(pause) => pause,
            };
            if made >= retry.attempts {
                tracing::error!(
                    message_id = d.id(),
                    queue = d.queue(),
                    attempt = d.attempt(),
                    "ordered message keeps failing; its key is stopped until it succeeds or is removed"
                );
            } else {
                tracing::debug!(
                    attempt = d.attempt(),
                    ?pause,
                    "handler failed; retrying in place"
                );
            }
            if !pause_while_usable(&d, pause).await {
                tracing::warn!(
                    message_id = d.id(),
                    queue = d.queue(),
                    "the delivery's channel was lost; no more retries here, the broker delivers it again"
                );
                // Settling on a lost channel does nothing; a requeue at
                // least republishes nothing.
                return Disposition::Requeue;
            }
        }
    })
}

/// How often a pause looks at the delivery's channel.
const CHANNEL_CHECK: Duration = Duration::from_secs(1);

/// Sleeps `pause`, or less if the delivery's channel is lost (false then).
async fn pause_while_usable(d: &Delivery, pause: Duration) -> bool {
    let until = tokio::time::Instant::now() + pause;
    loop {
        if !d.channel_usable() {
            return false;
        }
        let now = tokio::time::Instant::now();
        if now >= until {
            return true;
        }
        tokio::time::sleep((until - now).min(CHANNEL_CHECK)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_retry_in_place_then_dead_letter_or_stop() {
        let r = OrderedRetry::default()
            .attempts(3)
            .backoff(Duration::from_millis(100), Duration::from_millis(300));
        let fail = || Disposition::retry("flaky");
        assert_eq!(step(&r, 1, fail()), Step::Again(Duration::from_millis(100)));
        assert_eq!(step(&r, 2, fail()), Step::Again(Duration::from_millis(200)));
        assert_eq!(
            step(&r, 3, fail()),
            Step::Finish(Disposition::DeadLetter {
                reason: "flaky".into(),
                kind: FailureKind::Retryable
            })
        );
        let stop = r.when_exhausted(WhenExhausted::Stop);
        assert_eq!(
            step(&stop, 3, fail()),
            Step::Again(Duration::from_millis(300))
        );
        assert_eq!(
            step(&stop, 300, fail()),
            Step::Again(Duration::from_millis(300))
        );
    }

    #[test]
    fn a_requeue_or_an_asked_delay_stays_in_place_and_other_ends_pass() {
        let r = OrderedRetry::default();
        assert_eq!(step(&r, 1, Disposition::Requeue), Step::Again(r.pause(1)));
        assert_eq!(
            step(
                &r,
                1,
                Disposition::retry_after(Duration::from_secs(2), "busy")
            ),
            Step::Again(Duration::from_secs(2))
        );
        assert_eq!(
            step(&r, 1, Disposition::Ack),
            Step::Finish(Disposition::Ack)
        );
        let dl = Disposition::dead_letter("no");
        assert_eq!(step(&r, 1, dl.clone()), Step::Finish(dl));
        assert_eq!(OrderedRetry::default().attempts(0).attempts, 1);
        assert_eq!(r.pause(40), r.max_backoff);
    }

    #[test]
    fn a_handlers_own_pause_is_capped_at_the_longest_backoff() {
        let r =
            OrderedRetry::default().backoff(Duration::from_millis(100), Duration::from_secs(10));
        let asked = Disposition::retry_after(Duration::from_secs(3600), "later");
        assert_eq!(step(&r, 1, asked), Step::Again(Duration::from_secs(10)));
    }

    /// Runs `ordered_retries(retry)` and a user layer that calls `user` on
    /// each run, before a handler that succeeds; the channel is usable while
    /// `alive` holds. Returns the disposition and the runs made.
    async fn run_ordered(
        retry: OrderedRetry,
        user: impl Fn(u32) -> Disposition + Send + Sync + 'static,
        alive: impl Fn(u32) -> bool + Send + Sync + 'static,
    ) -> (Disposition, u32) {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU32, Ordering};

        use crate::consumer::layer::Chain;
        use crate::consumer::telemetry::Counters;
        use crate::message::Message;

        let runs = Arc::new(AtomicU32::new(0));
        let (r, r2) = (runs.clone(), runs.clone());
        let user = Arc::new(user);
        let layer = from_fn(move |d: Delivery, next: Next| {
            let user = user.clone();
            let run = r.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                match user(run) {
                    Disposition::Ack => next.run(d).await,
                    other => other,
                }
            }
        });
        let chain = Chain::new(
            vec![ordered_retries(retry), layer],
            Arc::new(|_d: Delivery| async { crate::consumer::HandlerResult::Ok(()) }),
            None,
            Arc::new(Counters::default()),
        );
        let m = Message::bytes("", "rk", "x").partition_key("k");
        let d = Delivery::for_test("rk", "x", m.properties().clone())
            .with_alive(Arc::new(move || alive(r2.load(Ordering::SeqCst))));
        let disposition = chain.start().run(d).await;
        (disposition, runs.load(Ordering::SeqCst))
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_layer_is_retried_in_place_and_stop_holds() {
        let retry = OrderedRetry::default().attempts(5);
        let panics_twice = |run: u32| {
            assert!(run > 2, "a user layer panics");
            Disposition::Ack
        };
        let (disposition, runs) = run_ordered(retry, panics_twice, |_| true).await;
        assert_eq!((disposition, runs), (Disposition::Ack, 3));

        // Exhausted with `Stop`: still in place, never dead-lettered; it
        // ends only when the channel is lost (here after 40 runs).
        let stop = retry.attempts(2).when_exhausted(WhenExhausted::Stop);
        let always = |_run: u32| -> Disposition { panic!("a user layer panics") };
        let (disposition, runs) = run_ordered(stop, always, |runs| runs < 40).await;
        assert_eq!((disposition, runs), (Disposition::Requeue, 40));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_end_when_the_channel_is_lost_and_nothing_is_dead_lettered() {
        let retry = OrderedRetry::default()
            .attempts(10)
            .backoff(Duration::from_secs(5), Duration::from_secs(5));
        let fails = |_run: u32| Disposition::retry("db down");
        let started = tokio::time::Instant::now();
        let (disposition, runs) = run_ordered(retry, fails, |runs| runs < 2).await;
        assert_eq!((disposition, runs), (Disposition::Requeue, 2));
        assert!(
            started.elapsed() <= Duration::from_secs(6),
            "the pause after the second run ends at once: {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn ordered_consumption_is_refused_outside_the_auto_ack_mode() {
        use crate::{AckMode, Consumer};
        let broker = crate::consumer::unreachable_broker();
        for mode in [AckMode::Manual, AckMode::None] {
            let e = Consumer::builder(broker.clone(), "q")
                .ack_mode(mode)
                .ordered(OrderedRetry::default())
                .build()
                .expect_err("refused");
            assert!(e.to_string().contains("auto ack mode"), "{e}");
        }
        let ok = Consumer::builder(broker.clone(), "q")
            .dispatch(crate::Lanes::new(4))
            .ordered(OrderedRetry::default())
            .build();
        assert!(ok.is_ok());
        let serial = Consumer::builder(broker.clone(), "q")
            .concurrency(1)
            .ordered(OrderedRetry::default())
            .build();
        assert!(serial.is_ok());
    }

    #[tokio::test]
    async fn ordered_consumption_is_refused_with_a_dispatch_that_reorders_keys() {
        use crate::Consumer;
        let broker = crate::consumer::unreachable_broker();
        for builder in [
            Consumer::builder(broker.clone(), "q"),
            Consumer::builder(broker.clone(), "q").concurrency(4),
        ] {
            let e = builder
                .ordered(OrderedRetry::default())
                .build()
                .expect_err("refused");
            assert!(e.to_string().contains("keeps order per key"), "{e}");
        }
    }
}
