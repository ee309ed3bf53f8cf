//! rabbitry's own layers, outermost first: the poison-message guard,
//! redelivery accounting on classic queues, and immediate retries.

use std::sync::Arc;
use std::time::Duration;

use super::decision::run_again;
use super::delivery::Delivery;
use super::disposition::{Disposition, FailureKind};
use super::executor::Executor;
use super::layer::{Layer, Next, from_fn};
use super::policy::RetryPolicy;

/// The attempt a delivery starts on: one more than the handler runs it
/// already had (as recorded before its last delayed retry; else each
/// delayed retry after all its immediate retries) and the deliveries the
/// broker counted without a decision.
pub(crate) fn first_attempt(d: &Delivery, policy: &RetryPolicy) -> u32 {
    d.attempts_made()
        .unwrap_or_else(|| {
            d.retries()
                .saturating_mul(policy.immediate.saturating_add(1))
        })
        .saturating_add(d.delivery_count())
        .saturating_add(1)
}

/// A message the broker delivered `max` times without a decision (the
/// consumer crashed, hung or lost its connection mid-handler) is
/// dead-lettered without running the handler again.
pub(crate) fn poison_guard(max: u32) -> Layer {
    from_fn(move |d: Delivery, next: Next| async move {
        let count = d.delivery_count();
        if count >= max {
            return Disposition::DeadLetter {
                reason: format!(
                    "delivered {count} times without a decision (the consumer crashed, hung or lost its connection mid-handler): poison-message guard"
                ),
                kind: FailureKind::Poison,
            };
        }
        next.run(d).await
    })
}

/// Classic queues do not count redeliveries: a redelivered message is
/// republished with its count in a header (confirmed), this delivery is
/// acked, and the copy is handled when it comes back.
pub(crate) fn redelivery_accounting(executor: Arc<Executor>) -> Layer {
    from_fn(move |d: Delivery, next: Next| {
        let executor = executor.clone();
        async move {
            if !d.redelivered() || d.broker_counts_deliveries() {
                return next.run(d).await;
            }
            match executor.count_redelivery(&d).await {
                Ok(()) => Disposition::Ack,
                Err(error) => {
                    tracing::error!(%error, "counting a redelivery failed; giving the message back");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Disposition::Requeue
                }
            }
        }
    })
}

/// Runs the rest again, in process, while the policy has immediate retries
/// left for a retry on its schedule.
pub(crate) fn immediate_retries(policy: RetryPolicy) -> Layer {
    let policy = Arc::new(policy);
    from_fn(move |d: Delivery, next: Next| {
        let policy = policy.clone();
        async move {
            let first = d.attempt();
            let mut made = 0u32;
            loop {
                d.set_attempt(first.saturating_add(made));
                let disposition = next.clone().run(d.clone()).await;
                match run_again(&policy, made, &disposition) {
                    Some(pause) => {
                        if let Disposition::Retry { reason, .. } = &disposition {
                            tracing::debug!(
                                error = reason,
                                attempt = d.attempt(),
                                "handler failed; retrying at once"
                            );
                        }
                        tokio::time::sleep(pause).await;
                        made += 1;
                    }
                    None => return disposition,
                }
            }
        }
    })
}
