//! The names of the metrics rabbitry records through the [`metrics`] crate.
//!
//! rabbitry records; the application chooses the exporter, as is usual with
//! `metrics`: install a recorder (`metrics-exporter-prometheus`, an
//! OpenTelemetry bridge, …) **before** building publishers and consumers,
//! then call [`describe_metrics`] once to give each metric its help text
//! and unit. Every counter here is also readable in-process through the
//! component's `metrics()` snapshot.
//!
//! Labels: consumer metrics carry `queue` and `consumer`; queue gauges carry
//! `queue`; idempotency metrics carry `prefix` (the store key prefix);
//! publisher counters carry none (every publisher of the process adds to
//! the same series), and the confirm-latency histogram carries `outcome`
//! (five values).

/// Deliveries received (counter).
pub const CONSUMER_DELIVERED: &str = "rabbitry_consumer_delivered_total";
/// Deliveries the broker had delivered before (counter).
pub const CONSUMER_REDELIVERED: &str = "rabbitry_consumer_redelivered_total";
/// Deliveries handled successfully: consumed (counter).
pub const CONSUMER_SUCCEEDED: &str = "rabbitry_consumer_succeeded_total";
/// Handler failures, each attempt (counter).
pub const CONSUMER_FAILED_ATTEMPTS: &str = "rabbitry_consumer_failed_attempts_total";
/// Handler runs stopped at the handler timeout (counter).
pub const CONSUMER_TIMED_OUT: &str = "rabbitry_consumer_timed_out_total";
/// Messages sent to a retry (delay) queue (counter).
pub const CONSUMER_RETRIED: &str = "rabbitry_consumer_retried_total";
/// Messages sent to the error exchange (counter).
pub const CONSUMER_DEAD_LETTERED: &str = "rabbitry_consumer_dead_lettered_total";
/// Deliveries put back in the queue (counter).
pub const CONSUMER_REQUEUED: &str = "rabbitry_consumer_requeued_total";
/// Deliveries dropped because their channel was lost before the handler
/// started; the broker delivers them again (counter).
pub const CONSUMER_STALE: &str = "rabbitry_consumer_stale_total";
/// How long each handler attempt ran, in seconds (histogram).
pub const CONSUMER_HANDLER_DURATION: &str = "rabbitry_consumer_handler_duration_seconds";
/// Deliveries this consumer holds and has not settled: its share of the
/// queue's unacknowledged messages (gauge).
pub const CONSUMER_IN_FLIGHT: &str = "rabbitry_consumer_in_flight";
/// Messages ready in a queue a consumer reads, polled (gauge).
pub const QUEUE_READY: &str = "rabbitry_queue_messages_ready";
/// Consumers subscribed to a queue a consumer reads, polled (gauge).
pub const QUEUE_CONSUMERS: &str = "rabbitry_queue_consumers";

/// Messages the broker confirmed (counter).
pub const PUBLISHER_CONFIRMED: &str = "rabbitry_publisher_confirmed_total";
/// Messages the broker nacked (counter).
pub const PUBLISHER_NACKED: &str = "rabbitry_publisher_nacked_total";
/// Mandatory messages returned as unroutable (counter).
pub const PUBLISHER_UNROUTABLE: &str = "rabbitry_publisher_unroutable_total";
/// Publishes whose confirm did not arrive in time (counter).
pub const PUBLISHER_TIMED_OUT: &str = "rabbitry_publisher_timed_out_total";
/// Publishes that failed otherwise (counter).
pub const PUBLISHER_FAILED: &str = "rabbitry_publisher_failed_total";
/// Messages stored in the outbox after a failure: deferred (counter).
pub const PUBLISHER_DEFERRED: &str = "rabbitry_publisher_deferred_total";
/// Seconds from a publish's start to its verdict as its caller gets it, one
/// sample per publish sent, labelled `outcome`: `confirmed`, `nacked`,
/// `unroutable`, `timed_out` or `failed` (histogram). The start is the
/// `basic.publish`, or, for a publish that first waits for a channel to
/// open, a window place or an exchange check, the start of that wait. A
/// publish that never reached `basic.publish` has no sample: refused before
/// anything was sent (invalid, too large, blocked too long, closed), or
/// failed while waiting for a channel, a window place or an exchange check
/// (those are counted in `rabbitry_publisher_timed_out_total` and
/// `rabbitry_publisher_failed_total`).
pub const PUBLISHER_CONFIRM_LATENCY: &str = "rabbitry_publisher_confirm_latency_seconds";

/// Claims that let the handler run (counter).
pub const IDEMPOTENCY_CLAIMED: &str = "rabbitry_idempotency_claimed_total";
/// Deliveries acked without running the handler: duplicates (counter).
pub const IDEMPOTENCY_DUPLICATES: &str = "rabbitry_idempotency_duplicates_total";
/// Claims refused because another consumer held the lease (counter).
pub const IDEMPOTENCY_BUSY: &str = "rabbitry_idempotency_busy_total";
/// Store calls that failed or timed out (counter).
pub const IDEMPOTENCY_STORE_UNAVAILABLE: &str = "rabbitry_idempotency_store_unavailable_total";
/// Deliveries given back after waiting for a busy key or the store (counter).
pub const IDEMPOTENCY_GAVE_BACK: &str = "rabbitry_idempotency_gave_back_total";
/// Handlers marked done (counter).
pub const IDEMPOTENCY_COMPLETED: &str = "rabbitry_idempotency_completed_total";
/// Handlers that failed and gave their lease back (counter).
pub const IDEMPOTENCY_RELEASED: &str = "rabbitry_idempotency_released_total";
/// Handlers whose lease was lost (counter).
pub const IDEMPOTENCY_LEASE_LOST: &str = "rabbitry_idempotency_lease_lost_total";
/// Done markers that could not be written (counter).
pub const IDEMPOTENCY_MARK_FAILED: &str = "rabbitry_idempotency_mark_failed_total";
/// Deliveries with no idempotency key (counter).
pub const IDEMPOTENCY_MISSING_KEY: &str = "rabbitry_idempotency_missing_key_total";

/// Every metric above with its unit and help text.
const ALL: &[(&str, Unit, &str)] = &[
    (CONSUMER_DELIVERED, Unit::Count, "Deliveries received."),
    (
        CONSUMER_REDELIVERED,
        Unit::Count,
        "Deliveries the broker had delivered before.",
    ),
    (
        CONSUMER_SUCCEEDED,
        Unit::Count,
        "Deliveries handled successfully.",
    ),
    (
        CONSUMER_FAILED_ATTEMPTS,
        Unit::Count,
        "Handler failures, each attempt.",
    ),
    (
        CONSUMER_TIMED_OUT,
        Unit::Count,
        "Handler runs stopped at the handler timeout.",
    ),
    (
        CONSUMER_RETRIED,
        Unit::Count,
        "Messages sent to a retry queue.",
    ),
    (
        CONSUMER_DEAD_LETTERED,
        Unit::Count,
        "Messages sent to the error exchange.",
    ),
    (
        CONSUMER_REQUEUED,
        Unit::Count,
        "Deliveries put back in the queue.",
    ),
    (
        CONSUMER_STALE,
        Unit::Count,
        "Deliveries dropped with their lost channel.",
    ),
    (
        CONSUMER_HANDLER_DURATION,
        Unit::Seconds,
        "Handler run time per attempt.",
    ),
    (
        CONSUMER_IN_FLIGHT,
        Unit::Count,
        "Deliveries held and not settled yet.",
    ),
    (
        QUEUE_READY,
        Unit::Count,
        "Messages ready in the queue (polled).",
    ),
    (
        QUEUE_CONSUMERS,
        Unit::Count,
        "Consumers on the queue (polled).",
    ),
    (
        PUBLISHER_CONFIRMED,
        Unit::Count,
        "Messages the broker confirmed.",
    ),
    (PUBLISHER_NACKED, Unit::Count, "Messages the broker nacked."),
    (
        PUBLISHER_UNROUTABLE,
        Unit::Count,
        "Mandatory messages returned as unroutable.",
    ),
    (
        PUBLISHER_TIMED_OUT,
        Unit::Count,
        "Publishes whose confirm did not arrive in time.",
    ),
    (
        PUBLISHER_FAILED,
        Unit::Count,
        "Publishes that failed otherwise.",
    ),
    (
        PUBLISHER_DEFERRED,
        Unit::Count,
        "Messages stored in the outbox after a failure.",
    ),
    (
        PUBLISHER_CONFIRM_LATENCY,
        Unit::Seconds,
        "Time from a publish to its confirm or failure, by outcome.",
    ),
    (
        IDEMPOTENCY_CLAIMED,
        Unit::Count,
        "Claims that let the handler run.",
    ),
    (
        IDEMPOTENCY_DUPLICATES,
        Unit::Count,
        "Duplicates acked without running the handler.",
    ),
    (
        IDEMPOTENCY_BUSY,
        Unit::Count,
        "Claims refused: another consumer holds the lease.",
    ),
    (
        IDEMPOTENCY_STORE_UNAVAILABLE,
        Unit::Count,
        "Store calls that failed or timed out.",
    ),
    (
        IDEMPOTENCY_GAVE_BACK,
        Unit::Count,
        "Deliveries given back after waiting.",
    ),
    (IDEMPOTENCY_COMPLETED, Unit::Count, "Handlers marked done."),
    (
        IDEMPOTENCY_RELEASED,
        Unit::Count,
        "Handlers that failed and released the lease.",
    ),
    (
        IDEMPOTENCY_LEASE_LOST,
        Unit::Count,
        "Handlers whose lease was lost.",
    ),
    (
        IDEMPOTENCY_MARK_FAILED,
        Unit::Count,
        "Done markers that could not be written.",
    ),
    (
        IDEMPOTENCY_MISSING_KEY,
        Unit::Count,
        "Deliveries without an idempotency key.",
    ),
];

use metrics::Unit;

/// Gives every rabbitry metric its help text and unit in the installed
/// recorder. Call once, after installing it.
pub fn describe_metrics() {
    for (name, unit, help) in ALL {
        let name = *name;
        let help = *help;
        match name {
            n if n.ends_with("_seconds") => metrics::describe_histogram!(n, *unit, help),
            CONSUMER_IN_FLIGHT | QUEUE_READY | QUEUE_CONSUMERS => {
                metrics::describe_gauge!(name, *unit, help)
            }
            _ => metrics::describe_counter!(name, *unit, help),
        }
    }
}
