//! What happens to a delivery: the one vocabulary of the consumer.
//!
//! Every delivery ends in exactly one [`Disposition`]. A handler's result
//! maps to one (`Ok` is [`Disposition::Ack`], an error picks by its kind), a
//! layer may short-circuit with one, and a manual handler settles with one
//! ([`Delivery::settle`](super::Delivery::settle)).

use std::time::Duration;

/// The end of one delivery.
///
/// ```
/// use std::time::Duration;
/// use rabbitry_core::{Disposition, FailureKind, HandlerError, HandlerResult};
///
/// let ok: HandlerResult = Ok(());
/// assert_eq!(Disposition::from(ok), Disposition::Ack);
///
/// let busy: HandlerResult = Err(HandlerError::retryable("rate limited").after(Duration::from_secs(30)));
/// assert_eq!(
///     Disposition::from(busy),
///     Disposition::Retry { after: Some(Duration::from_secs(30)), reason: "rate limited".into() },
/// );
///
/// let bad: HandlerResult = Err(HandlerError::permanent("unknown customer"));
/// assert!(matches!(Disposition::from(bad), Disposition::DeadLetter { kind: FailureKind::Permanent, .. }));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Disposition {
    /// Done: the broker removes the message.
    Ack,
    /// Try again. `after: None` follows the [`RetryPolicy`](super::RetryPolicy):
    /// in-process retries first, then its delay queues, then the error
    /// exchange. `after: Some(d)` skips the in-process retries and waits `d`
    /// in a delay queue; it still uses up one of the policy's delayed
    /// retries, so a handler that always asks again ends in the error queue.
    Retry {
        /// How long to wait; `None` for the policy's schedule.
        after: Option<Duration>,
        /// Why, kept in `x-exception-message` if it ends in the error queue.
        reason: String,
    },
    /// Put it back in the queue now; the broker delivers it again (to any
    /// consumer) and counts the delivery, so the poison-message guard and a
    /// queue's delivery limit bound a message that is requeued forever.
    Requeue,
    /// Give up: a faithful copy goes to the error exchange with the failure
    /// headers, then the delivery is acked.
    DeadLetter {
        /// Why, in `x-exception-message`.
        reason: String,
        /// In `x-exception-kind`.
        kind: FailureKind,
    },
}

impl Disposition {
    /// A retry on the policy's schedule.
    pub fn retry(reason: impl Into<String>) -> Self {
        Self::Retry {
            after: None,
            reason: reason.into(),
        }
    }

    /// A retry after `after`, through a delay queue.
    pub fn retry_after(after: Duration, reason: impl Into<String>) -> Self {
        Self::Retry {
            after: Some(after),
            reason: reason.into(),
        }
    }

    /// Dead-letter as a permanent failure.
    pub fn dead_letter(reason: impl Into<String>) -> Self {
        Self::DeadLetter {
            reason: reason.into(),
            kind: FailureKind::Permanent,
        }
    }

    /// A short name, for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Ack => "ack",
            Self::Retry { .. } => "retry",
            Self::Requeue => "requeue",
            Self::DeadLetter { .. } => "dead-letter",
        }
    }
}

/// The kind of a handler failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// Try again (immediately, then after delays).
    Retryable,
    /// Do not retry: dead-letter at once.
    Permanent,
    /// The payload could not be decoded: dead-letter at once.
    Decode,
    /// The broker delivered it too often without a decision (the consumer
    /// crashed, hung or lost its connection mid-handler): the
    /// poison-message guard dead-lettered it without running the handler.
    Poison,
}

impl FailureKind {
    /// The name in `x-exception-kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Retryable => "retryable",
            FailureKind::Permanent => "permanent",
            FailureKind::Decode => "decode",
            FailureKind::Poison => "poison",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumer::{HandlerError, HandlerResult};

    #[test]
    fn every_handler_result_maps_to_one_disposition() {
        let r = |e: HandlerError| Disposition::from(Err::<(), _>(e));
        assert_eq!(Disposition::from(HandlerResult::Ok(())), Disposition::Ack);
        assert_eq!(r(HandlerError::retryable("x")), Disposition::retry("x"));
        assert_eq!(
            r(HandlerError::retryable("x").after(Duration::from_secs(2))),
            Disposition::retry_after(Duration::from_secs(2), "x")
        );
        assert_eq!(r(HandlerError::requeue("x")), Disposition::Requeue);
        assert_eq!(
            r(HandlerError::decode("bad json")),
            Disposition::DeadLetter {
                reason: "bad json".into(),
                kind: FailureKind::Decode
            }
        );
        assert_eq!(
            r(HandlerError::permanent("no")),
            Disposition::dead_letter("no")
        );
    }
}
