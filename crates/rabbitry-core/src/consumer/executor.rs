//! The executor: carries out a plan with confirmed republishes, and says
//! what to tell the broker about the delivery. A republish that fails is
//! tried again a few times; if it still fails the delivery is given back to
//! the queue, never acked: nothing is lost. In ordered consumption a
//! dead-letter republish is tried in place instead ([`Executor::in_place`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::decision::{Plan, plan};
use super::delivery::Delivery;
use super::disposition::{Disposition, FailureKind};
use super::policy::{RetryPolicy, retry_queue, retry_queue_name};
use super::republish;
use super::settle::Decision;
use super::telemetry::Counters;
use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::message::Message;
use crate::publisher::BoxFuture;
use crate::topology::Topology;

/// Where republished messages go: the consumer's confirmed publisher, or a
/// recording fake in unit tests.
pub(crate) trait Sink: Send + Sync + 'static {
    /// Publishes `message`; `Ok` once the broker confirmed it.
    fn send(&self, message: Message) -> BoxFuture<'_, Result<()>>;
    /// Declares `topology` (a delay queue asked for at run time).
    fn declare(&self, topology: Topology) -> BoxFuture<'_, Result<()>>;
}

/// Publish attempts for one republish before the delivery is given back.
const REPUBLISH_ATTEMPTS: u32 = 3;
/// The pause after the first failed attempt; it doubles.
const REPUBLISH_PAUSE: Duration = Duration::from_millis(250);
/// Delay queues one consumer uses at most: the policy's and those for
/// delays its handlers asked for (rounded onto a ladder of about a hundred).
const MAX_DELAY_QUEUES: usize = 128;
/// Ordered: the longest pause between tries of a dead-letter republish.
const IN_PLACE_MAX_PAUSE: Duration = Duration::from_secs(10);

pub(crate) struct Executor {
    sink: Arc<dyn Sink>,
    queue: String,
    error_exchange: String,
    consumer: String,
    policy: RetryPolicy,
    counters: Arc<Counters>,
    /// Delay queues known to exist (the policy's, and those declared since).
    declared: tokio::sync::Mutex<HashSet<Duration>>,
    /// Ordered consumption: a dead-letter republish is tried again in place
    /// until this is cancelled (handlers stopped at the shutdown timeout).
    in_place: Option<CancellationToken>,
}

impl Executor {
    pub(crate) fn new(
        sink: Arc<dyn Sink>,
        queue: String,
        error_exchange: String,
        consumer: String,
        policy: RetryPolicy,
        counters: Arc<Counters>,
        predeclared: bool,
    ) -> Self {
        let declared = match predeclared {
            true => policy.delays.iter().copied().collect(),
            false => HashSet::new(),
        };
        let declared = tokio::sync::Mutex::new(declared);
        Self {
            sink,
            queue,
            error_exchange,
            consumer,
            policy,
            counters,
            declared,
            in_place: None,
        }
    }

    /// Ordered consumption: the message's key waits behind it, so a
    /// dead-letter republish that fails is tried again in place (the pause
    /// doubling up to 10 s) rather than giving the delivery back, which
    /// would let the key's later messages overtake it. The tries end when
    /// the delivery's channel is lost or `stop` is cancelled.
    pub(crate) fn in_place(mut self, stop: CancellationToken) -> Self {
        self.in_place = Some(stop);
        self
    }

    /// Carries out `disposition` for `d`.
    pub(crate) async fn execute(&self, d: &Delivery, disposition: Disposition) -> Decision {
        match plan(&self.policy, d.retries(), disposition) {
            Plan::Settle(decision) => decision,
            Plan::Delay {
                delay,
                retries,
                reason,
            } => self.delay(d, delay, retries, &reason).await,
            Plan::DeadLetter { reason, kind } => self.dead_letter(d, &reason, kind).await,
        }
    }

    async fn delay(&self, d: &Delivery, delay: Duration, retries: u32, reason: &str) -> Decision {
        if let Err(error) = self.ensure_delay_queue(delay).await {
            if error.is_retryable() {
                return self.give_back(&error, "delay queue declaration").await;
            }
            // Retrying cannot make this delay queue usable: end the retries.
            let reason =
                format!("{reason} (and its {delay:?} delay queue cannot be used: {error})");
            return self.dead_letter(d, &reason, FailureKind::Retryable).await;
        }
        let retry_queue = retry_queue_name(&self.queue, delay);
        let message = republish::retry_message(d, &retry_queue, retries);
        match self.republish(message).await {
            Ok(()) => {
                Counters::bump(&self.counters.delayed_retries);
                tracing::info!(
                    consumer = self.consumer,
                    queue = self.queue,
                    message_id = d.id(),
                    error = reason,
                    attempt = d.attempt(),
                    retry_queue,
                    "handler failed; retrying later"
                );
                Decision::Ack
            }
            Err(error) => self.give_back(&error, "retry queue").await,
        }
    }

    /// Dead-letters `d` with the failure headers.
    async fn dead_letter(&self, d: &Delivery, reason: &str, kind: FailureKind) -> Decision {
        if self.in_place.is_some() && !d.channel_usable() {
            // The broker delivers it again: a copy now would be a second.
            tracing::warn!(
                message_id = d.id(),
                "the delivery's channel was lost; not dead-lettering it here"
            );
            return Decision::GiveBack;
        }
        let message = republish::dead_letter_message(
            d,
            &self.error_exchange,
            reason,
            kind,
            d.attempt(),
            &self.consumer,
        );
        let published = match &self.in_place {
            Some(stop) => self.republish_in_place(d, message, stop).await,
            None => self.republish(message).await,
        };
        match published {
            Ok(()) => {
                Counters::bump(&self.counters.dead_lettered);
                tracing::error!(
                    consumer = self.consumer,
                    queue = self.queue,
                    message_id = d.id(),
                    reason,
                    kind = kind.as_str(),
                    attempts = d.attempt(),
                    error_exchange = self.error_exchange,
                    "message dead-lettered: `rabbitry-relay errors list` shows it, `errors replay` sends it back"
                );
                Decision::Ack
            }
            Err(error) if error.is_retryable() => self.give_back(&error, "error exchange").await,
            Err(error) => {
                // The copy itself is refused (a hostile header, a header
                // frame over the broker's limit): giving it back would loop
                // forever. The broker dead-letters the delivery itself,
                // byte for byte, through the queue's dead-letter exchange.
                tracing::error!(
                    %error,
                    message_id = d.id(),
                    "the error-queue copy was refused; rejecting the delivery so that the broker dead-letters it"
                );
                Decision::Reject
            }
        }
    }

    /// A classic queue redelivered `d`: republishes it with its count in a
    /// header (confirmed), so that this delivery can be acked and the copy
    /// handled when it comes back.
    pub(crate) async fn count_redelivery(&self, d: &Delivery) -> Result<()> {
        self.republish(republish::counted_redelivery(d, d.delivery_count()))
            .await
    }

    async fn republish(&self, message: Message) -> Result<()> {
        let mut pauses = Backoff::new(REPUBLISH_PAUSE, REPUBLISH_PAUSE * 4).jitter(false);
        let mut attempt = 1;
        loop {
            match self.sink.send(message.clone()).await {
                Ok(()) => return Ok(()),
                Err(error) if attempt < REPUBLISH_ATTEMPTS && error.is_retryable() => {
                    tracing::debug!(%error, attempt, "republishing failed; trying again");
                    tokio::time::sleep(pauses.next_delay()).await;
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// See [`Executor::in_place`]. A refused copy ends the tries at once.
    async fn republish_in_place(
        &self,
        d: &Delivery,
        message: Message,
        stop: &CancellationToken,
    ) -> Result<()> {
        let mut pauses = Backoff::new(REPUBLISH_PAUSE, IN_PLACE_MAX_PAUSE).jitter(false);
        loop {
            let error = match self.sink.send(message.clone()).await {
                Err(error) if error.is_retryable() => error,
                done => return done,
            };
            tracing::warn!(%error, message_id = d.id(), "dead-lettering an ordered message failed; trying again, its key waits");
            tokio::select! {
                () = stop.cancelled() => return Err(error),
                () = tokio::time::sleep(pauses.next_delay()) => {}
            }
            if !d.channel_usable() {
                return Err(error);
            }
        }
    }

    /// Declares the delay queue for `delay` unless it is known to exist.
    /// Declarations are rare (a new delay) and one at a time.
    async fn ensure_delay_queue(&self, delay: Duration) -> Result<()> {
        let mut declared = self.declared.lock().await;
        if declared.contains(&delay) {
            return Ok(());
        }
        if declared.len() >= MAX_DELAY_QUEUES {
            return Err(Error::Config(format!(
                "more than {MAX_DELAY_QUEUES} distinct retry delays"
            )));
        }
        self.sink
            .declare(Topology::new().queue(retry_queue(&self.queue, delay)))
            .await?;
        declared.insert(delay);
        Ok(())
    }

    /// A republish failed for good: give the delivery back to the queue,
    /// after a pause so that a broker outage does not become a hot loop.
    async fn give_back(&self, error: &Error, target: &str) -> Decision {
        tracing::error!(%error, target, "republishing failed; giving the message back to the queue");
        tokio::time::sleep(Duration::from_secs(1)).await;
        Decision::GiveBack
    }
}

#[cfg(test)]
#[path = "executor_tests.rs"]
mod tests;
