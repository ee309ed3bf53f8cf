//! An incoming message, as handlers see it.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use lapin::BasicProperties;
use serde::de::DeserializeOwned;

use super::disposition::Disposition;
use super::settle::{Decision, SettleGuard};
use crate::error::{Error, Result};
use crate::header::{HeaderValue, Headers, table_to_headers};
use crate::message::{MessageProperties, PARTITION_KEY_HEADER};
use crate::publisher::BoxFuture;

/// Header counting delayed retries already made.
pub const RETRIES_HEADER: &str = "x-rabbitry-retries";
/// Header carrying the handler runs a message had before a delayed retry,
/// so that [`Delivery::attempt`] goes on counting from there.
pub(crate) const ATTEMPTS_MADE_HEADER: &str = "x-rabbitry-attempts";
/// Header counting redeliveries on queues whose broker does not count them
/// (classic queues): rabbitry's attempt header for the poison-message guard.
pub const REDELIVERIES_HEADER: &str = "x-rabbitry-redeliveries";
/// The queue whose redeliveries `x-rabbitry-redeliveries` counts: the count
/// is trusted only there.
pub const COUNTED_IN_HEADER: &str = "x-rabbitry-counted-in";

/// A delivery handed to a handler. Cheap to clone.
///
/// In [`AckMode::Manual`](super::AckMode::Manual) the handler settles it
/// with [`settle`](Self::settle) (any [`Disposition`], carried out as in
/// auto mode), or [`ack`](Self::ack), [`requeue`](Self::requeue) and
/// [`reject`](Self::reject). A manual delivery dropped (every clone) without
/// a decision is given back to the queue, with a warning: it is never left
/// unacked.
#[derive(Clone)]
pub struct Delivery {
    inner: Arc<Inner>,
}

struct Inner {
    queue: String,
    exchange: String,
    routing_key: String,
    redelivered: bool,
    payload: Bytes,
    properties: MessageProperties,
    /// `user-id` and `cluster-id`, which rabbitry does not publish (the
    /// broker refuses a `user-id` other than the connection's own).
    user_id: Option<String>,
    cluster_id: Option<String>,
    /// The attempt the handler is on (see [`Delivery::attempt`]).
    attempt: AtomicU32,
    manual: Option<Manual>,
    /// Whether the delivery's channel can still settle it (none: always).
    alive: Option<Alive>,
}

/// Says whether a delivery's channel is still usable.
pub(crate) type Alive = Arc<dyn Fn() -> bool + Send + Sync>;

/// Carries out a disposition (republishing where it must) and says what to
/// tell the broker.
pub(crate) type Execute =
    Arc<dyn Fn(Delivery, Disposition) -> BoxFuture<'static, Decision> + Send + Sync>;

/// A manual delivery's one decision, and how to carry one out.
pub(crate) struct Manual {
    pub(crate) guard: Mutex<Option<SettleGuard>>,
    pub(crate) execute: Execute,
    pub(crate) consumer: String,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(m) = &mut self.manual
            && m.guard
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some()
        {
            tracing::warn!(
                consumer = m.consumer,
                message_id = self.properties.message_id,
                "manual delivery dropped without a decision: giving it back to the queue"
            );
        }
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("queue", &self.inner.queue)
            .field("message_id", &self.inner.properties.message_id)
            .field("routing_key", &self.inner.routing_key)
            .field("redelivered", &self.inner.redelivered)
            .field("size", &self.inner.payload.len())
            .finish()
    }
}

impl Delivery {
    pub(crate) fn from_lapin(
        queue: &str,
        delivery: lapin::message::Delivery,
        manual: Option<Manual>,
    ) -> Self {
        let acker = delivery.acker.clone();
        Self {
            inner: Arc::new(Inner {
                queue: queue.to_owned(),
                exchange: delivery.exchange.to_string(),
                routing_key: delivery.routing_key.to_string(),
                redelivered: delivery.redelivered,
                payload: Bytes::from(delivery.data),
                properties: properties_from_amqp(&delivery.properties),
                user_id: delivery
                    .properties
                    .user_id()
                    .as_ref()
                    .map(ToString::to_string),
                cluster_id: delivery
                    .properties
                    .cluster_id()
                    .as_ref()
                    .map(ToString::to_string),
                attempt: AtomicU32::new(1),
                manual,
                alive: Some(Arc::new(move || acker.usable())),
            }),
        }
    }

    /// A delivery built in memory, for unit-testing handlers.
    pub fn for_test(
        routing_key: &str,
        payload: impl Into<Vec<u8>>,
        properties: MessageProperties,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                queue: "test".into(),
                exchange: String::new(),
                routing_key: routing_key.to_owned(),
                redelivered: false,
                payload: Bytes::from(payload.into()),
                properties,
                user_id: None,
                cluster_id: None,
                attempt: AtomicU32::new(1),
                manual: None,
                alive: None,
            }),
        }
    }

    /// A test delivery whose channel is usable while `alive` says so.
    #[cfg(test)]
    pub(crate) fn with_alive(mut self, alive: Alive) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.alive = Some(alive);
        }
        self
    }

    /// Whether its channel can still settle it. Once it cannot, the broker
    /// delivers the message again (maybe to another consumer): handling it
    /// further here would run it twice.
    pub(crate) fn channel_usable(&self) -> bool {
        self.inner.alive.as_ref().is_none_or(|alive| alive())
    }

    /// The payload bytes.
    pub fn payload(&self) -> &[u8] {
        &self.inner.payload
    }
    /// The payload, shared (republishing it copies nothing).
    pub(crate) fn payload_bytes(&self) -> Bytes {
        self.inner.payload.clone()
    }
    /// Which attempt at handling this message this run is, from 1: one
    /// number across in-process retries, delayed retries and the broker's
    /// redeliveries. A handler can log it, or give up early on its own.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt.load(Ordering::Relaxed)
    }
    pub(crate) fn set_attempt(&self, attempt: u32) {
        self.inner.attempt.store(attempt, Ordering::Relaxed);
    }
    /// Decodes the payload as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        Ok(serde_json::from_slice(&self.inner.payload)?)
    }
    /// The message id (empty if the publisher set none).
    pub fn id(&self) -> &str {
        &self.inner.properties.message_id
    }
    /// The queue it was consumed from.
    pub fn queue(&self) -> &str {
        &self.inner.queue
    }
    /// The exchange it was published to.
    pub fn exchange(&self) -> &str {
        &self.inner.exchange
    }
    /// Its routing key.
    pub fn routing_key(&self) -> &str {
        &self.inner.routing_key
    }
    /// Whether the broker delivered it before (to this or another consumer).
    pub fn redelivered(&self) -> bool {
        self.inner.redelivered
    }
    /// The `user-id` property: when present, the broker checked that it is
    /// the publishing connection's user.
    pub fn user_id(&self) -> Option<&str> {
        self.inner.user_id.as_deref()
    }
    /// The `cluster-id` property (deprecated in AMQP 0-9-1, still sent by
    /// some clients).
    pub fn cluster_id(&self) -> Option<&str> {
        self.inner.cluster_id.as_deref()
    }
    /// All properties, headers included.
    pub fn properties(&self) -> &MessageProperties {
        &self.inner.properties
    }
    /// The headers.
    pub fn headers(&self) -> &Headers {
        &self.inner.properties.headers
    }
    /// One header.
    pub fn header(&self, name: &str) -> Option<&HeaderValue> {
        self.inner.properties.headers.get(name)
    }
    /// The partition key, if the publisher set one.
    pub fn key(&self) -> Option<&str> {
        self.header(PARTITION_KEY_HEADER)
            .and_then(HeaderValue::as_str)
    }
    /// How many times it was delivered before without a decision (a
    /// consumer crashed or lost its connection mid-handler). Quorum queues
    /// count this themselves (`x-delivery-count`); elsewhere rabbitry keeps
    /// the count in `x-rabbitry-redeliveries`, plus one when this delivery is
    /// a redelivery.
    pub fn delivery_count(&self) -> u32 {
        let header = |name| self.count_header(name);
        if self.broker_counts_deliveries() {
            return header("x-delivery-count").unwrap_or(0);
        }
        // Only a count rabbitry kept for this very queue: a publisher's (or
        // another system's) header of the same name is not a count.
        let counted_here = self
            .header(COUNTED_IN_HEADER)
            .and_then(HeaderValue::as_str)
            .is_some_and(|queue| queue == self.queue());
        let counted = if counted_here {
            header(REDELIVERIES_HEADER).unwrap_or(0)
        } else {
            0
        };
        counted.saturating_add(u32::from(self.redelivered()))
    }

    /// Whether the broker counted this delivery itself (a quorum queue's
    /// redelivery). The broker sets `x-delivery-count` only when it
    /// redelivers; on a first delivery the header, if any, is the
    /// publisher's and counts nothing.
    pub(crate) fn broker_counts_deliveries(&self) -> bool {
        self.redelivered() && self.header("x-delivery-count").is_some()
    }

    /// Delayed retries already made (header `x-rabbitry-retries`).
    pub fn retries(&self) -> u32 {
        self.count_header(RETRIES_HEADER).unwrap_or(0)
    }

    /// Handler runs made before the last delayed retry, if rabbitry
    /// recorded them.
    pub(crate) fn attempts_made(&self) -> Option<u32> {
        self.count_header(ATTEMPTS_MADE_HEADER)
    }

    /// A count from a header: absent, negative, too large or not a number
    /// is `None`.
    fn count_header(&self, name: &str) -> Option<u32> {
        self.header(name)
            .and_then(HeaderValue::as_i64)
            .and_then(|n| u32::try_from(n).ok())
    }

    /// Manual mode: the handler is done; remove the message.
    pub fn ack(&self) -> Result<()> {
        self.decide(Decision::Ack)
    }
    /// Manual mode: put the message back in the queue; it is redelivered.
    pub fn requeue(&self) -> Result<()> {
        self.decide(Decision::Requeue)
    }
    /// Manual mode: refuse the message; the broker dead-letters it to the
    /// queue's dead-letter exchange (with an `x-death` header).
    pub fn reject(&self) -> Result<()> {
        self.decide(Decision::Reject)
    }

    /// Manual mode: settles with `disposition`, carried out as in auto mode
    /// (a retry goes through the retry policy's delay queues, a dead letter
    /// to the error exchange with the failure headers, both confirmed
    /// before the delivery is acked).
    ///
    /// ```no_run
    /// # async fn handle(d: rabbitry_core::Delivery) -> rabbitry_core::HandlerResult {
    /// use rabbitry_core::Disposition;
    ///
    /// if d.payload().is_empty() {
    ///     d.settle(Disposition::dead_letter("empty order")).await?;
    /// } else {
    ///     d.settle(Disposition::Ack).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn settle(&self, disposition: Disposition) -> Result<()> {
        let (guard, execute) = self.take_guard()?;
        let decision = execute(self.clone(), disposition).await;
        if guard.send(decision) {
            Ok(())
        } else {
            Err(Error::Shutdown)
        }
    }

    fn decide(&self, decision: Decision) -> Result<()> {
        let (guard, _) = self.take_guard()?;
        if guard.send(decision) {
            Ok(())
        } else {
            Err(Error::Shutdown)
        }
    }

    fn take_guard(&self) -> Result<(SettleGuard, Execute)> {
        let Some(m) = &self.inner.manual else {
            return Err(Error::Config(
                "ack/requeue/reject/settle are for AckMode::Manual; in auto mode the handler's result decides".into(),
            ));
        };
        let guard = m
            .guard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match guard {
            Some(guard) => Ok((guard, m.execute.clone())),
            None => Err(Error::Config(format!(
                "delivery {} was already settled",
                self.id()
            ))),
        }
    }
}

pub(crate) fn properties_from_amqp(p: &BasicProperties) -> MessageProperties {
    let s = |v: &Option<lapin::types::ShortString>| v.as_ref().map(ToString::to_string);
    MessageProperties {
        message_id: s(p.message_id()).unwrap_or_default(),
        timestamp: p.timestamp().unwrap_or(0),
        content_type: s(p.content_type()),
        content_encoding: s(p.content_encoding()),
        correlation_id: s(p.correlation_id()),
        reply_to: s(p.reply_to()),
        kind: s(p.kind()),
        app_id: s(p.app_id()),
        expiration: s(p.expiration()),
        priority: *p.priority(),
        persistent: *p.delivery_mode() == Some(2),
        headers: p
            .headers()
            .as_ref()
            .map(table_to_headers)
            .unwrap_or_default(),
    }
}
