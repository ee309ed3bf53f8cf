//! Handlers and what their results mean.

use std::future::Future;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::delivery::Delivery;
use super::disposition::{Disposition, FailureKind};
use crate::publisher::BoxFuture;

/// Why a handler failed, and whether trying again can help.
///
/// `?` on any error converts it to a *retryable* failure. Use
/// [`HandlerError::permanent`] for failures no retry can fix (invalid
/// business data): the message goes to the error queue at once.
#[derive(Debug)]
pub struct HandlerError {
    kind: FailureKind,
    source: Box<dyn std::error::Error + Send + Sync>,
    after: Option<Duration>,
    requeue: bool,
}

impl HandlerError {
    /// A failure worth retrying.
    pub fn retryable(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self {
            kind: FailureKind::Retryable,
            source: e.into(),
            after: None,
            requeue: false,
        }
    }
    /// A failure no retry can fix.
    pub fn permanent(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self {
            kind: FailureKind::Permanent,
            source: e.into(),
            after: None,
            requeue: false,
        }
    }
    /// The payload could not be decoded.
    pub fn decode(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self {
            kind: FailureKind::Decode,
            source: e.into(),
            after: None,
            requeue: false,
        }
    }
    /// A retryable failure that asks to be tried again by putting the
    /// message back in the queue at once ([`Disposition::Requeue`]), not on
    /// the retry schedule.
    ///
    /// [`Disposition::Requeue`]: super::Disposition::Requeue
    pub fn requeue(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self {
            requeue: true,
            ..Self::retryable(e)
        }
    }
    /// Asks for the next try after `delay`, through a delay queue (a
    /// retryable failure; see [`Disposition::Retry`]). The delay is rounded
    /// up onto a small ladder of delay queues (whole seconds up to 10 s,
    /// then tens of seconds, minutes, hours), never early, and is at most a
    /// day: a longer delay is cut to a day.
    ///
    /// [`Disposition::Retry`]: super::Disposition::Retry
    #[must_use]
    pub fn after(mut self, delay: Duration) -> Self {
        self.kind = FailureKind::Retryable;
        self.after = Some(delay);
        self
    }
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        self.after
    }
    pub(crate) fn wants_requeue(&self) -> bool {
        self.requeue
    }
    /// The kind.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }
    /// Whether a retry may help.
    pub fn is_retryable(&self) -> bool {
        self.kind == FailureKind::Retryable
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.source)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(e: E) -> Self {
        Self::retryable(e)
    }
}

impl From<HandlerResult> for Disposition {
    fn from(result: HandlerResult) -> Self {
        let error = match result {
            Ok(()) => return Self::Ack,
            Err(error) => error,
        };
        if error.wants_requeue() {
            return Self::Requeue;
        }
        let reason = error.to_string();
        match error.kind() {
            FailureKind::Retryable => Self::Retry {
                after: error.retry_after(),
                reason,
            },
            kind => Self::DeadLetter { reason, kind },
        }
    }
}

/// What a handler returns.
pub type HandlerResult = Result<(), HandlerError>;

/// Handles deliveries. Implemented for every
/// `Fn(Delivery) -> impl Future<Output = HandlerResult>`; see [`json`] for
/// typed messages.
///
/// In auto mode the result decides, through its
/// [`Disposition`](super::Disposition): `Ok` acks; a retryable error retries
/// (immediately, then through the delay queues), then dead-letters; a
/// permanent or decode error dead-letters at once.
pub trait Handler: Send + Sync + 'static {
    /// Handles one delivery.
    fn handle(&self, delivery: Delivery) -> BoxFuture<'static, HandlerResult>;
}

impl<F, Fut> Handler for F
where
    F: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    fn handle(&self, delivery: Delivery) -> BoxFuture<'static, HandlerResult> {
        Box::pin(self(delivery))
    }
}

/// A handler for JSON messages of type `T`. A payload that does not decode
/// is dead-lettered at once with the decode error; it is never retried.
///
/// ```
/// use rabbitry_core::{Delivery, HandlerResult, consumer_json};
///
/// #[derive(serde::Deserialize)]
/// struct OrderCreated { id: u64 }
///
/// let handler = consumer_json(|order: OrderCreated, _delivery: Delivery| async move {
///     println!("order {}", order.id);
///     HandlerResult::Ok(())
/// });
/// # let _ = handler;
/// ```
pub fn json<T, F, Fut>(f: F) -> JsonHandler<T, F>
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(T, Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    JsonHandler { f, _t: PhantomData }
}

/// See [`json`].
pub struct JsonHandler<T, F> {
    f: F,
    _t: PhantomData<fn() -> T>,
}

impl<T, F, Fut> Handler for JsonHandler<T, F>
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(T, Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    fn handle(&self, delivery: Delivery) -> BoxFuture<'static, HandlerResult> {
        match serde_json::from_slice::<T>(delivery.payload()) {
            Ok(value) => Box::pin((self.f)(value, delivery)),
            Err(e) => Box::pin(async move { Err(HandlerError::decode(e)) }),
        }
    }
}
