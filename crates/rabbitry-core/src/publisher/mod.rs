//! The reliable publisher: pooled confirm-mode channels with pipelined
//! confirms, mandatory routing, timeouts, and an outbox for failures.

mod builder;
mod channels;
mod close;
mod confirms;
mod exchanges;
mod inflight;
mod metrics;
mod ordered;
mod outbox;
mod send;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

pub use self::builder::PublisherBuilder;
use self::channels::ChannelSet;
use self::exchanges::ExchangeChecks;
use self::inflight::InFlight;
use self::metrics::Counters;
pub use self::metrics::PublisherMetrics;
pub use self::outbox::{BoxFuture, Outbox};
use crate::connection::Broker;
use crate::error::{Error, Result};
use crate::message::Message;

/// How a publish ended, when it did not fail.
#[derive(Debug)]
#[must_use]
#[non_exhaustive]
pub enum PublishOutcome {
    /// The broker confirmed the message: every target queue has it (for a
    /// quorum queue, a majority of replicas, fsynced).
    Confirmed,
    /// Publishing failed, and the message was stored in the outbox; the
    /// resend loop will deliver it.
    Deferred {
        /// The outbox row id.
        outbox_id: i64,
        /// Why publishing failed.
        cause: Error,
    },
}

impl PublishOutcome {
    /// Whether the broker confirmed the message.
    pub fn is_confirmed(&self) -> bool {
        matches!(self, PublishOutcome::Confirmed)
    }
}

/// Publishes with confirms. Cheap to clone; clones share channels.
///
/// ```no_run
/// # async fn run(broker: rabbitry_core::Broker) -> Result<(), rabbitry_core::Error> {
/// use rabbitry_core::{Message, PublishOutcome, Publisher};
///
/// let publisher = Publisher::builder(broker).build()?;
/// match publisher.publish(Message::json("orders", "order.created", &serde_json::json!({"id": 7}))?).await? {
///     PublishOutcome::Confirmed => {}
///     PublishOutcome::Deferred { outbox_id, cause } => tracing::warn!(outbox_id, %cause, "deferred"),
///     _ => {}
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Publisher {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) broker: Broker,
    pub(super) channels: ChannelSet,
    pub(super) outbox: Option<Arc<dyn Outbox>>,
    pub(super) settings: Settings,
    pub(super) counters: Counters,
    pub(super) exchanges: ExchangeChecks,
    /// The publishes in flight, for `flush` and `close`.
    pub(super) inflight: InFlight,
    /// During an outage every publish is deferred: one warning per
    /// interval, the others counted.
    pub(super) defer_warn: std::sync::Mutex<crate::log_throttle::WarnThrottle>,
}

#[derive(Clone, Debug)]
pub(super) struct Settings {
    pub(super) timeout: Duration,
    pub(super) blocked_timeout: Duration,
    pub(super) mandatory: bool,
    pub(super) max_message_size: usize,
    pub(super) app_id: String,
    pub(super) outbox_timeout: Duration,
    pub(super) defer_unroutable: bool,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("settings", &self.inner.settings)
            .field("outbox", &self.inner.outbox.is_some())
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// Publishes `message` and waits for the broker's confirm.
    ///
    /// - `Ok(Confirmed)`: the broker has it.
    /// - `Ok(Deferred)`: the broker could not be used (connection lost or
    ///   refused, no confirm in time, blocked, nacked) and the message is in
    ///   the outbox, which resends it until it is confirmed.
    /// - `Err(_)`: the message is neither confirmed nor stored, and the
    ///   caller still owns it. This happens without an outbox; for a failure
    ///   no resend can fix (an unroutable message or a missing exchange,
    ///   unless [`defer_unroutable`](PublisherBuilder::defer_unroutable) is
    ///   on; access refused; [`Error::TooLarge`]; [`Error::InvalidMessage`]);
    ///   and when the outbox write failed or timed out too
    ///   ([`Error::OutboxFailed`] names both failures). After
    ///   [`close`](Self::close), [`Error::Shutdown`] at once.
    pub async fn publish(&self, mut message: Message) -> Result<PublishOutcome> {
        let _in_flight = self.enter()?;
        message.set_app_id_if_missing(&self.inner.settings.app_id);
        let sent = self
            .send_prepared(&message, self.inner.settings.mandatory)
            .await;
        self.fall_back(sent, &message).await
    }

    /// Like [`publish`](Self::publish), for a message that travels now as
    /// `wire` (through a delay queue, say) and that the outbox, if publishing
    /// fails, keeps as `stored` (what the resend loop sends later).
    pub(crate) async fn publish_as(
        &self,
        mut wire: Message,
        mut stored: Message,
        mandatory: bool,
    ) -> Result<PublishOutcome> {
        let _in_flight = self.enter()?;
        wire.set_app_id_if_missing(&self.inner.settings.app_id);
        stored.set_app_id_if_missing(&self.inner.settings.app_id);
        let sent = self
            .send_prepared(&wire, mandatory && self.inner.settings.mandatory)
            .await;
        self.fall_back(sent, &stored).await
    }

    /// How long one publish may take.
    pub(crate) fn timeout(&self) -> std::time::Duration {
        self.inner.settings.timeout
    }

    /// A message that could not even be sent (what it needed first failed
    /// with `cause`): deferred to the outbox as `stored`, or the error.
    pub(crate) async fn fail_as(
        &self,
        cause: Error,
        mut stored: Message,
    ) -> Result<PublishOutcome> {
        let _in_flight = self.enter()?;
        stored.set_app_id_if_missing(&self.inner.settings.app_id);
        self.fall_back(Err(cause), &stored).await
    }

    /// After a publish: confirmed, or deferred to the outbox as `message`,
    /// or the error.
    async fn fall_back(&self, sent: Result<()>, message: &Message) -> Result<PublishOutcome> {
        match sent {
            Ok(()) => Ok(PublishOutcome::Confirmed),
            // Boxed: the cold path, kept out of every publish's future.
            Err(cause) => Box::pin(self.defer_or_fail(cause, message)).await,
        }
    }

    /// A failed publish: deferred to the outbox as `message` when it
    /// should be, or the error.
    async fn defer_or_fail(&self, cause: Error, message: &Message) -> Result<PublishOutcome> {
        let Some(outbox) = &self.inner.outbox else {
            return Err(cause);
        };
        if !self.defers(&cause) {
            return Err(cause);
        }
        self.defer(outbox.as_ref(), message, cause).await
    }

    /// Stores `message` in `outbox` because of `cause`, within the outbox
    /// timeout.
    async fn defer(
        &self,
        outbox: &dyn Outbox,
        message: &Message,
        cause: Error,
    ) -> Result<PublishOutcome> {
        let limit = self.inner.settings.outbox_timeout;
        let stored = match tokio::time::timeout(limit, outbox.defer(message, &cause)).await {
            Ok(stored) => stored,
            Err(_) => Err(format!("no answer from the outbox within {limit:?}").into()),
        };
        match stored {
            Ok(outbox_id) => {
                self.inner.counters.deferred();
                let warn = self
                    .inner
                    .defer_warn
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .hit(std::time::Instant::now());
                match warn {
                    Some(suppressed) => tracing::warn!(
                        message_id = message.id(),
                        outbox_id,
                        error = %cause,
                        suppressed,
                        "publish deferred to the outbox (one line per 30 s; `suppressed` counts the others since the last)"
                    ),
                    None => {
                        tracing::debug!(message_id = message.id(), outbox_id, error = %cause, "publish deferred to the outbox")
                    }
                }
                Ok(PublishOutcome::Deferred { outbox_id, cause })
            }
            Err(outbox_error) => {
                tracing::error!(message_id = message.id(), error = %cause, %outbox_error, "publish failed and the outbox write failed");
                Err(Error::OutboxFailed {
                    publish: Box::new(cause),
                    outbox: outbox_error.to_string(),
                })
            }
        }
    }

    /// Whether a failed publish goes to the outbox: when the broker could
    /// not be used, or nacked; for an unroutable message or a missing
    /// exchange only when the user asked for it.
    fn defers(&self, cause: &Error) -> bool {
        match cause {
            Error::Nacked { .. } => true,
            Error::Unroutable { .. } | Error::Broker { code: 404, .. } => {
                self.inner.settings.defer_unroutable
            }
            other => other.is_unavailable(),
        }
    }

    /// Publishes and waits for the confirm, never touching the outbox. The
    /// outbox's resend loop uses this.
    pub async fn send(&self, mut message: Message) -> Result<()> {
        let _in_flight = self.enter()?;
        message.set_app_id_if_missing(&self.inner.settings.app_id);
        self.send_prepared(&message, self.inner.settings.mandatory)
            .await
    }

    /// Publishes many messages, pipelined over the channel pool, and returns
    /// each one's result in order.
    pub async fn send_all(&self, messages: &[Message]) -> Vec<Result<()>> {
        let Ok(_in_flight) = self.enter() else {
            return messages.iter().map(|_| Err(Error::Shutdown)).collect();
        };
        let mandatory = self.inner.settings.mandatory;
        futures_util::future::join_all(messages.iter().map(|m| self.send_prepared(m, mandatory)))
            .await
    }

    /// Counters since the publisher was built.
    pub fn metrics(&self) -> PublisherMetrics {
        self.inner.counters.snapshot()
    }

    /// The broker this publisher uses.
    pub fn broker(&self) -> &Broker {
        &self.inner.broker
    }

    async fn send_prepared(&self, message: &Message, mandatory: bool) -> Result<()> {
        let span = tracing::info_span!(
            target: crate::SPAN_TARGET,
            "publish",
            otel.name = %format_args!("{} publish", message.exchange_name()),
            otel.kind = "producer",
            messaging.system = "rabbitmq",
            messaging.operation.type = "publish",
            messaging.destination.name = message.exchange_name(),
            messaging.rabbitmq.destination.routing_key = message.routing_key(),
            messaging.message.id = message.id(),
            messaging.message.body.size = message.payload().len(),
            error.type = tracing::field::Empty,
        );
        let result = self.send_inner(message, mandatory).instrument(span).await;
        self.inner.counters.count(&result);
        result
    }
}

#[cfg(test)]
mod tests;
