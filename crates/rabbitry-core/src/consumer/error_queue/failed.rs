//! One failed message as an operator sees it, read from its headers, and
//! the filter that picks some of them.

use std::collections::BTreeMap;

use super::super::delivery::properties_from_amqp;
use super::super::republish::headers;
use crate::header::{HeaderValue, Headers};

/// One failed message, as an operator sees it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct FailedMessage {
    /// The message id.
    pub message_id: String,
    /// The handler's error, when a rabbitry consumer dead-lettered it.
    pub exception: Option<String>,
    /// `retryable`, `permanent` or `decode`.
    pub kind: Option<String>,
    /// Where it was first published.
    pub original_exchange: Option<String>,
    /// Its first routing key.
    pub original_routing_key: Option<String>,
    /// The queue it failed in.
    pub original_queue: Option<String>,
    /// Handler attempts made.
    pub attempts: Option<i64>,
    /// When it failed (seconds since the epoch); see
    /// [`failed_at_rfc3339`](Self::failed_at_rfc3339).
    pub failed_at: Option<u64>,
    /// The consumer that gave up.
    pub consumer: Option<String>,
    /// The broker's reason when the broker dead-lettered it (`rejected`,
    /// `expired`, `maxlen`, `delivery_limit`).
    pub death_reason: Option<String>,
    /// How often the error queue has handed it out before (a quorum
    /// queue's `x-delivery-count`): listings count too, up to RabbitMQ 4.2.
    pub delivery_count: Option<i64>,
    /// Payload size in bytes.
    pub size: usize,
    /// The payload's first 200 bytes, as text.
    pub preview: String,
}

impl FailedMessage {
    pub(super) fn from_delivery(delivery: &lapin::message::Delivery) -> Self {
        let props = properties_from_amqp(&delivery.properties);
        let h = &props.headers;
        let (original_exchange, original_routing_key) = origin(h).unzip();
        let data = &delivery.data;
        FailedMessage {
            message_id: props.message_id.clone(),
            exception: text(h, headers::EXCEPTION_MESSAGE),
            kind: text(h, headers::EXCEPTION_KIND),
            original_exchange,
            original_routing_key,
            original_queue: text(h, headers::ORIGINAL_QUEUE).or_else(|| {
                first_death(h).and_then(|d| d.get("queue")?.as_str().map(str::to_owned))
            }),
            attempts: h.get(headers::ATTEMPTS).and_then(HeaderValue::as_i64),
            failed_at: h
                .get(headers::FAILED_AT)
                .and_then(HeaderValue::as_i64)
                .and_then(|t| u64::try_from(t).ok()),
            consumer: text(h, headers::CONSUMER),
            death_reason: first_death(h).and_then(|d| d.get("reason")?.as_str().map(str::to_owned)),
            delivery_count: h.get("x-delivery-count").and_then(HeaderValue::as_i64),
            size: data.len(),
            preview: preview(data),
        }
    }

    /// When it failed, as an RFC 3339 UTC time (`2026-12-06T14:03:07Z`).
    pub fn failed_at_rfc3339(&self) -> Option<String> {
        self.failed_at.and_then(rfc3339)
    }

    /// Why it failed, in one phrase: the handler's error, else the
    /// broker's reason, else `-`.
    pub fn reason(&self) -> &str {
        self.exception
            .as_deref()
            .or(self.death_reason.as_deref())
            .unwrap_or("-")
    }
}

/// The first 200 bytes as text, cut on a character boundary.
fn preview(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(&data[..data.len().min(200)]);
    text.into_owned()
}

/// Which failures a listing shows: those matching every field set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ErrorFilter {
    /// The failure kind (`retryable`, `permanent`, `decode`) or the broker's
    /// reason (`rejected`, `expired`, `maxlen`, `delivery_limit`), exactly.
    pub reason: Option<String>,
    /// Text the handler's error contains (case-insensitive): an exception
    /// type or message.
    pub exception_contains: Option<String>,
    /// The original routing key, exactly.
    pub routing_key: Option<String>,
}

impl ErrorFilter {
    /// Matches every failure.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only this failure kind or broker reason.
    #[must_use]
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// Only errors containing this text.
    #[must_use]
    pub fn exception_contains(mut self, text: impl Into<String>) -> Self {
        self.exception_contains = Some(text.into());
        self
    }

    /// Only this original routing key.
    #[must_use]
    pub fn routing_key(mut self, key: impl Into<String>) -> Self {
        self.routing_key = Some(key.into());
        self
    }

    /// Whether `m` passes.
    pub fn matches(&self, m: &FailedMessage) -> bool {
        let reason_ok = self
            .reason
            .as_deref()
            .is_none_or(|r| m.kind.as_deref() == Some(r) || m.death_reason.as_deref() == Some(r));
        let exception_ok = self.exception_contains.as_deref().is_none_or(|t| {
            m.exception
                .as_deref()
                .is_some_and(|e| e.to_lowercase().contains(&t.to_lowercase()))
        });
        let key_ok = self
            .routing_key
            .as_deref()
            .is_none_or(|k| m.original_routing_key.as_deref() == Some(k));
        reason_ok && exception_ok && key_ok
    }
}

pub(super) fn text(h: &Headers, key: &str) -> Option<String> {
    h.get(key).and_then(HeaderValue::as_str).map(str::to_owned)
}

fn first_death(h: &Headers) -> Option<&BTreeMap<String, HeaderValue>> {
    match h.get("x-death")? {
        HeaderValue::Array(deaths) => match deaths.first()? {
            HeaderValue::Table(t) => Some(t),
            _ => None,
        },
        _ => None,
    }
}

/// Where to send a failed message back to: rabbitry's origin headers, else
/// the broker's `x-death` record.
pub(super) fn origin(h: &Headers) -> Option<(String, String)> {
    if let (Some(ex), Some(rk)) = (
        text(h, headers::ORIGINAL_EXCHANGE),
        text(h, headers::ORIGINAL_ROUTING_KEY),
    ) {
        return Some((ex, rk));
    }
    let death = first_death(h)?;
    let ex = death.get("exchange")?.as_str()?.to_owned();
    let rk = match death.get("routing-keys")? {
        HeaderValue::Array(keys) => keys.first()?.as_str()?.to_owned(),
        _ => return None,
    };
    Some((ex, rk))
}

/// Seconds since the epoch as RFC 3339 UTC; `None` past year 9999.
pub(super) fn rfc3339(secs: u64) -> Option<String> {
    let days = i64::try_from(secs / 86_400).ok()?;
    let rest = secs % 86_400;
    // Howard Hinnant's days-to-civil, for the proleptic Gregorian calendar.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if year > 9999 {
        return None;
    }
    Some(format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_seconds_read_as_rfc3339() {
        assert_eq!(rfc3339(0).as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(
            rfc3339(951_782_400).as_deref(),
            Some("2000-02-29T00:00:00Z")
        );
        assert_eq!(
            rfc3339(1_796_565_787).as_deref(),
            Some("2026-12-06T14:03:07Z")
        );
        assert_eq!(
            rfc3339(253_402_300_799).as_deref(),
            Some("9999-12-31T23:59:59Z")
        );
        assert_eq!(rfc3339(253_402_300_800), None);
        assert_eq!(rfc3339(u64::MAX), None);
    }

    fn failed(kind: &str, exception: &str, key: &str) -> FailedMessage {
        FailedMessage {
            message_id: "m".into(),
            exception: Some(exception.into()),
            kind: Some(kind.into()),
            original_exchange: Some("orders".into()),
            original_routing_key: Some(key.into()),
            original_queue: None,
            attempts: None,
            failed_at: None,
            consumer: None,
            death_reason: None,
            delivery_count: None,
            size: 0,
            preview: String::new(),
        }
    }

    #[test]
    fn a_filter_matches_every_field_it_sets() {
        let m = failed("permanent", "PaymentDeclined: card expired", "order.paid");
        assert!(ErrorFilter::new().matches(&m));
        assert!(ErrorFilter::new().reason("permanent").matches(&m));
        assert!(!ErrorFilter::new().reason("retryable").matches(&m));
        assert!(
            ErrorFilter::new()
                .exception_contains("paymentdeclined")
                .matches(&m)
        );
        assert!(!ErrorFilter::new().exception_contains("timeout").matches(&m));
        assert!(
            ErrorFilter::new()
                .routing_key("order.paid")
                .reason("permanent")
                .matches(&m)
        );
        assert!(!ErrorFilter::new().routing_key("order.created").matches(&m));
    }
}
