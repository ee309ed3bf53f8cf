//! The messages the consumer republishes: a delayed retry, a counted
//! redelivery, and the error-queue copy with its failure headers. Each is
//! the delivered message, body and properties as the broker gave them.

use std::time::{SystemTime, UNIX_EPOCH};

use super::delivery::{
    ATTEMPTS_MADE_HEADER, COUNTED_IN_HEADER, Delivery, REDELIVERIES_HEADER, RETRIES_HEADER,
};
use super::disposition::FailureKind;
use crate::header::HeaderValue;
use crate::message::Message;

/// Headers set on a dead-lettered message (Spring AMQP's names where they
/// exist, so existing tooling reads them).
pub mod headers {
    /// The handler's error text.
    pub const EXCEPTION_MESSAGE: &str = "x-exception-message";
    /// The message's own `expiration`, which the error-queue copy does not
    /// keep.
    pub const ORIGINAL_EXPIRATION: &str = "x-original-expiration";
    /// The message's `user-id` property: a republish cannot carry it (the
    /// broker accepts only the publishing connection's own user there).
    pub const ORIGINAL_USER_ID: &str = "x-original-user-id";
    /// The message's `cluster-id` property.
    pub const ORIGINAL_CLUSTER_ID: &str = "x-original-cluster-id";
    /// `retryable`, `permanent`, `decode` or `poison`.
    pub const EXCEPTION_KIND: &str = "x-exception-kind";
    /// The exchange the message was first published to.
    pub const ORIGINAL_EXCHANGE: &str = "x-original-exchange";
    /// Its original routing key.
    pub const ORIGINAL_ROUTING_KEY: &str = "x-original-routingKey";
    /// The queue it failed in.
    pub const ORIGINAL_QUEUE: &str = "x-original-queue";
    /// Handler attempts made in all.
    pub const ATTEMPTS: &str = "x-attempts";
    /// When it failed for the last time (timestamp, seconds).
    pub const FAILED_AT: &str = "x-failed-at";
    /// The consumer that gave up.
    pub const CONSUMER: &str = "x-consumer";
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The same message, with its original destination recorded, addressed to
/// a retry queue.
pub(crate) fn retry_message(delivery: &Delivery, retry_queue: &str, retries: u32) -> Message {
    let mut props = delivery.properties().clone();
    record_origin(&mut props.headers, delivery);
    crate::header::strip_death_history(&mut props.headers);
    props.headers.insert(
        RETRIES_HEADER.to_owned(),
        HeaderValue::Int(i64::from(retries)),
    );
    props.headers.insert(
        ATTEMPTS_MADE_HEADER.to_owned(),
        HeaderValue::Int(i64::from(delivery.attempt())),
    );
    Message::from_shared("", retry_queue, delivery.payload_bytes(), props)
}

/// The same message, back to its own queue with its redelivery count in a
/// header: how a classic queue's redeliveries are counted.
pub(crate) fn counted_redelivery(delivery: &Delivery, count: u32) -> Message {
    let mut props = delivery.properties().clone();
    record_origin(&mut props.headers, delivery);
    props.headers.insert(
        REDELIVERIES_HEADER.to_owned(),
        HeaderValue::Int(i64::from(count)),
    );
    props.headers.insert(
        COUNTED_IN_HEADER.to_owned(),
        HeaderValue::Str(delivery.queue().to_owned()),
    );
    Message::from_shared("", delivery.queue(), delivery.payload_bytes(), props)
}

/// The most of a handler's error text kept in `x-exception-message`: an
/// error that quotes a whole response body must not make the dead-letter
/// message too large for a frame (it would fail, be requeued, and fail
/// again).
const MAX_REASON_BYTES: usize = 4096;

/// `text` cut to at most `max` bytes on a character boundary, marked with `…`.
fn truncated(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The same message, with the failure headers, addressed to the error
/// exchange.
pub(crate) fn dead_letter_message(
    delivery: &Delivery,
    error_exchange: &str,
    reason: &str,
    kind: FailureKind,
    attempts: u32,
    consumer: &str,
) -> Message {
    let mut props = delivery.properties().clone();
    record_origin(&mut props.headers, delivery);
    // The error queue keeps what it is given: a per-message TTL would let a
    // failure expire out of it unseen, and a transient copy would not survive
    // a broker restart. RabbitMQ's own dead-lettering drops the TTL too.
    props.persistent = true;
    if let Some(expiration) = props.expiration.take() {
        props.headers.insert(
            headers::ORIGINAL_EXPIRATION.into(),
            HeaderValue::Str(expiration),
        );
    }
    let h = &mut props.headers;
    for (name, value) in [
        (headers::ORIGINAL_USER_ID, delivery.user_id()),
        (headers::ORIGINAL_CLUSTER_ID, delivery.cluster_id()),
    ] {
        if let Some(value) = value {
            h.insert(name.into(), HeaderValue::Str(value.to_owned()));
        }
    }
    h.insert(
        headers::EXCEPTION_MESSAGE.into(),
        HeaderValue::Str(truncated(reason, MAX_REASON_BYTES)),
    );
    h.insert(
        headers::EXCEPTION_KIND.into(),
        HeaderValue::Str(kind.as_str().into()),
    );
    h.insert(
        headers::ORIGINAL_QUEUE.into(),
        HeaderValue::Str(delivery.queue().to_owned()),
    );
    h.insert(
        headers::ATTEMPTS.into(),
        HeaderValue::Int(i64::from(attempts)),
    );
    h.insert(
        headers::FAILED_AT.into(),
        HeaderValue::Timestamp(now_secs()),
    );
    h.insert(
        headers::CONSUMER.into(),
        HeaderValue::Str(consumer.to_owned()),
    );
    // The first routing key, unless a foreign header of that name could not
    // be one (over a short string's 255 bytes).
    let routing_key = h
        .get(headers::ORIGINAL_ROUTING_KEY)
        .and_then(HeaderValue::as_str)
        .filter(|rk| rk.len() <= crate::wire::MAX_SHORT_STRING)
        .unwrap_or(delivery.routing_key())
        .to_owned();
    Message::from_shared(error_exchange, routing_key, delivery.payload_bytes(), props)
}

/// Keeps the first exchange and routing key a message had: after a delayed
/// retry it comes back through the default exchange.
fn record_origin(h: &mut crate::header::Headers, delivery: &Delivery) {
    // The broker's own per-delivery counter does not carry over.
    h.remove("x-delivery-count");
    if !h.contains_key(headers::ORIGINAL_EXCHANGE) {
        h.insert(
            headers::ORIGINAL_EXCHANGE.into(),
            HeaderValue::Str(delivery.exchange().to_owned()),
        );
        h.insert(
            headers::ORIGINAL_ROUTING_KEY.into(),
            HeaderValue::Str(delivery.routing_key().to_owned()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    #[test]
    fn dead_letter_keeps_the_first_origin_and_adds_failure_headers() {
        let original = Message::bytes("orders", "order.created", "x")
            .header(headers::ORIGINAL_EXCHANGE, "first-ex");
        let mut props = original.properties().clone();
        props
            .headers
            .insert(headers::ORIGINAL_ROUTING_KEY.into(), "first-rk".into());
        let d = Delivery::for_test("orders", "x", props);
        let m = dead_letter_message(&d, "orders.dlx", "boom", FailureKind::Permanent, 3, "c1");
        let h = &m.properties().headers;
        assert_eq!(h[headers::ORIGINAL_EXCHANGE].as_str(), Some("first-ex"));
        assert_eq!(m.routing_key(), "first-rk");
        assert_eq!(h[headers::EXCEPTION_MESSAGE].as_str(), Some("boom"));

        assert_eq!(h[headers::ATTEMPTS].as_i64(), Some(3));
        assert_eq!(m.id(), d.id(), "same message id");
    }

    #[test]
    fn a_long_error_text_is_cut_on_a_character_boundary() {
        let text = "é".repeat(5000);
        let cut = truncated(&text, MAX_REASON_BYTES);
        assert!(cut.len() <= MAX_REASON_BYTES, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert_eq!(truncated("short", MAX_REASON_BYTES), "short");
    }
}
