//! What a consumer tells the outside: its counters and its per-delivery
//! `process` span (OpenTelemetry messaging conventions, on
//! [`SPAN_TARGET`](crate::SPAN_TARGET)).

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of a consumer since it was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerMetrics {
    /// Deliveries received.
    pub delivered: u64,
    /// Deliveries the broker had delivered before.
    pub redelivered: u64,
    /// Deliveries handled successfully.
    pub succeeded: u64,
    /// Handler failures (each attempt).
    pub failed_attempts: u64,
    /// Handler runs stopped at the handler timeout (each is also a failed
    /// attempt).
    pub timed_out: u64,
    /// Messages sent to a retry queue.
    pub delayed_retries: u64,
    /// Messages sent to the error exchange.
    pub dead_lettered: u64,
    /// Deliveries put back in the queue: asked for by a handler, or given
    /// back by rabbitry (shutdown before they started, a republish that
    /// failed).
    pub requeued: u64,
    /// Deliveries dropped before their handler started because their
    /// channel was lost in between: the broker delivers them again.
    pub stale: u64,
}

/// The live counters behind [`ConsumerMetrics`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) delivered: AtomicU64,
    pub(crate) redelivered: AtomicU64,
    pub(crate) succeeded: AtomicU64,
    pub(crate) failed_attempts: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    pub(crate) delayed_retries: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) requeued: AtomicU64,
    pub(crate) stale: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> ConsumerMetrics {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ConsumerMetrics {
            delivered: l(&self.delivered),
            redelivered: l(&self.redelivered),
            succeeded: l(&self.succeeded),
            failed_attempts: l(&self.failed_attempts),
            timed_out: l(&self.timed_out),
            delayed_retries: l(&self.delayed_retries),
            dead_lettered: l(&self.dead_lettered),
            requeued: l(&self.requeued),
            stale: l(&self.stale),
        }
    }
}

/// What the `process` span records of a delivery.
pub(crate) struct SpanFields<'a> {
    pub(crate) consumer: &'a str,
    pub(crate) queue: &'a str,
    pub(crate) message_id: &'a str,
    pub(crate) routing_key: &'a str,
    pub(crate) traceparent: &'a str,
    pub(crate) tag: u64,
}

/// The span one delivery is processed in.
pub(crate) fn process_span(f: &SpanFields<'_>) -> tracing::Span {
    tracing::info_span!(
        target: crate::SPAN_TARGET,
        "process",
        otel.name = %format_args!("{} process", f.queue),
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.destination.name = %f.queue,
        messaging.consumer.group.name = %f.consumer,
        messaging.message.id = f.message_id,
        messaging.rabbitmq.message.delivery_tag = f.tag,
        messaging.rabbitmq.destination.routing_key = f.routing_key,
        traceparent = f.traceparent,
    )
}
