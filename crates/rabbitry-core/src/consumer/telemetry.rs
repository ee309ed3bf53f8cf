//! What a consumer tells the outside: its counters and its per-delivery
//! `process` span (OpenTelemetry messaging conventions, on
//! [`SPAN_TARGET`](crate::SPAN_TARGET)).

use metrics::{Gauge, Histogram};

use crate::count::{Count, labels};
use crate::metric_names as names;

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

/// The live counters behind [`ConsumerMetrics`], each exported too (see
/// [`metric_names`](crate::metric_names)), with the handler-duration
/// histogram and the in-flight gauge.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) delivered: Count,
    pub(crate) redelivered: Count,
    pub(crate) succeeded: Count,
    pub(crate) failed_attempts: Count,
    pub(crate) timed_out: Count,
    pub(crate) delayed_retries: Count,
    pub(crate) dead_lettered: Count,
    pub(crate) requeued: Count,
    pub(crate) stale: Count,
    pub(crate) handler_seconds: Exported<Histogram>,
    pub(crate) in_flight: Exported<Gauge>,
}

/// A `metrics` handle that is a no-op until labelled (tests, `Default`).
#[derive(Debug)]
pub(crate) struct Exported<T>(pub(crate) T);

impl Default for Exported<Histogram> {
    fn default() -> Self {
        Self(Histogram::noop())
    }
}

impl Default for Exported<Gauge> {
    fn default() -> Self {
        Self(Gauge::noop())
    }
}

impl Counters {
    /// Counters exported with the consumer's `queue` and `consumer` labels.
    pub(crate) fn labelled(queue: &str, consumer: &str) -> Self {
        let l = labels(&[("queue", queue), ("consumer", consumer)]);
        let c = |name| Count::named(name, &l);
        Self {
            delivered: c(names::CONSUMER_DELIVERED),
            redelivered: c(names::CONSUMER_REDELIVERED),
            succeeded: c(names::CONSUMER_SUCCEEDED),
            failed_attempts: c(names::CONSUMER_FAILED_ATTEMPTS),
            timed_out: c(names::CONSUMER_TIMED_OUT),
            delayed_retries: c(names::CONSUMER_RETRIED),
            dead_lettered: c(names::CONSUMER_DEAD_LETTERED),
            requeued: c(names::CONSUMER_REQUEUED),
            stale: c(names::CONSUMER_STALE),
            handler_seconds: Exported(metrics::histogram!(
                names::CONSUMER_HANDLER_DURATION,
                l.iter()
            )),
            in_flight: Exported(metrics::gauge!(names::CONSUMER_IN_FLIGHT, l.iter())),
        }
    }

    pub(crate) fn bump(counter: &Count) {
        counter.bump();
    }

    pub(crate) fn snapshot(&self) -> ConsumerMetrics {
        ConsumerMetrics {
            delivered: self.delivered.get(),
            redelivered: self.redelivered.get(),
            succeeded: self.succeeded.get(),
            failed_attempts: self.failed_attempts.get(),
            timed_out: self.timed_out.get(),
            delayed_retries: self.delayed_retries.get(),
            dead_lettered: self.dead_lettered.get(),
            requeued: self.requeued.get(),
            stale: self.stale.get(),
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
