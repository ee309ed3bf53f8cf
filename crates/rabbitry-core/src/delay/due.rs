//! When a delayed message is due: the delay asked for, checked, and the
//! header that carries the due time with the message (and into the outbox,
//! whose relay does not send the row before it).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::message::{HeaderValue, Message};

/// The header that carries a delayed message's due time, in milliseconds
/// since the Unix epoch (rounded up). rabbitry sets it on every delayed
/// message; the outbox reads it so that a deferred delayed message is not
/// resent before it is due, and a consumer can read it to see how late a
/// message came.
pub const DUE_AT_HEADER: &str = "x-rabbitry-due-at";

/// The latest due time [`Message::due_at`] reports, in milliseconds since
/// the Unix epoch: 9999-12-31T23:59:59.999Z. A header beyond it (anyone can
/// set one) is read as this, so that a store converting it to a timestamp
/// does not fail on it; such a message is, in practice, never due.
pub const MAX_DUE_AT_MILLIS: i64 = 253_402_300_799_999;

impl Message {
    /// When this message is due, if it is a delayed message (it carries
    /// [`DUE_AT_HEADER`] as a non-negative integer). A due time after
    /// [`MAX_DUE_AT_MILLIS`] is read as that.
    pub fn due_at(&self) -> Option<SystemTime> {
        let ms = self.properties().headers.get(DUE_AT_HEADER)?.as_i64()?;
        let ms = u64::try_from(ms.min(MAX_DUE_AT_MILLIS)).ok()?;
        UNIX_EPOCH.checked_add(Duration::from_millis(ms))
    }

    /// The message as a delay queue may hold it: no per-message TTL (the
    /// broker applies the shorter of it and the queue's, so it would leave
    /// a delay queue early) and no dead-letter history (RabbitMQ 3.x drops
    /// a message dead-lettered again through a queue its `x-death` names).
    pub(crate) fn for_delay(self) -> Self {
        let mut properties = self.properties().clone();
        properties.expiration = None;
        crate::header::strip_death_history(&mut properties.headers);
        Message::from_shared(
            self.exchange_name(),
            self.routing_key(),
            self.shared_payload(),
            properties,
        )
    }

    /// Stamps the due time `at` on the message.
    pub(crate) fn with_due_at(self, at: SystemTime) -> Self {
        self.header(DUE_AT_HEADER, HeaderValue::Int(epoch_millis_up(at)))
    }
}

/// Milliseconds since the epoch, rounded up, so that the stamped time is
/// never before the real one.
fn epoch_millis_up(at: SystemTime) -> i64 {
    millis_up(at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO))
}

/// Whole milliseconds of `d`, rounded up: never shorter than `d`.
pub(crate) fn millis_up(d: Duration) -> i64 {
    let ms = d.as_millis() + u128::from(!d.subsec_nanos().is_multiple_of(1_000_000));
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// `d` rounded up to whole milliseconds: never shorter than `d`.
pub(crate) fn whole_millis_up(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(millis_up(d)).unwrap_or(u64::MAX))
}

/// The delay until `at`, seen at `now`: an error if `at` is not in the
/// future.
pub(crate) fn delay_until(at: SystemTime, now: SystemTime) -> Result<Duration> {
    match at.duration_since(now) {
        Ok(delay) if !delay.is_zero() => Ok(delay),
        _ => Err(Error::InvalidMessage {
            reason: "the time to deliver a delayed message at is not in the future".into(),
        }),
    }
}

/// Refuses a zero delay and one longer than `max`.
pub(crate) fn check_delay(delay: Duration, max: Duration) -> Result<()> {
    if delay.is_zero() {
        return Err(Error::InvalidMessage {
            reason: "a delay of zero: publish the message without a delay instead".into(),
        });
    }
    if delay > max {
        return Err(Error::InvalidMessage {
            reason: format!(
                "a delay of {delay:?} is longer than the longest this publisher can hold ({max:?})"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_due_time_travels_in_a_header_rounded_up_to_the_millisecond() {
        let at = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_000_001);
        let m = Message::bytes("", "q", "x").with_due_at(at);
        let due = m.due_at().expect("due");
        assert!(due >= at);
        assert_eq!(due, UNIX_EPOCH + Duration::from_millis(1_700_000_000_124));
        assert_eq!(Message::bytes("", "q", "x").due_at(), None);
    }

    #[test]
    fn a_hostile_due_header_is_clamped_not_trusted() {
        let due = |v: i64| {
            Message::bytes("", "q", "x")
                .header(DUE_AT_HEADER, v)
                .due_at()
        };
        let max = UNIX_EPOCH + Duration::from_millis(MAX_DUE_AT_MILLIS as u64);
        assert_eq!(due(i64::MAX), Some(max));
        assert_eq!(due(MAX_DUE_AT_MILLIS + 1), Some(max));
        assert_eq!(due(MAX_DUE_AT_MILLIS), Some(max));
        assert_eq!(due(5), Some(UNIX_EPOCH + Duration::from_millis(5)));
        assert_eq!(due(-1), None);
        assert_eq!(due(i64::MIN), None);
        let text = Message::bytes("", "q", "x").header(DUE_AT_HEADER, "soon");
        assert_eq!(text.due_at(), None);
    }

    #[test]
    fn whole_milliseconds_round_up() {
        assert_eq!(
            whole_millis_up(Duration::from_micros(1_500)),
            Duration::from_millis(2)
        );
        assert_eq!(
            whole_millis_up(Duration::from_nanos(1)),
            Duration::from_millis(1)
        );
        assert_eq!(
            whole_millis_up(Duration::from_millis(7)),
            Duration::from_millis(7)
        );
    }

    #[test]
    fn a_delayed_message_goes_without_its_ttl_and_its_dead_letter_history() {
        let m = Message::bytes("", "q", "x")
            .expiration(Duration::from_millis(200))
            .header("x-death", HeaderValue::Int(1))
            .header("x-first-death-queue", "q.level-00")
            .header("x-last-death-reason", "expired")
            .header("app", "kept");
        let id = m.id().to_owned();
        let d = m.for_delay();
        assert_eq!(d.properties().expiration, None);
        let names: Vec<_> = d.properties().headers.keys().map(String::as_str).collect();
        assert!(names.contains(&"app"), "{names:?}");
        assert!(!names.iter().any(|n| n.contains("death")), "{names:?}");
        assert_eq!(d.id(), id);
        assert_eq!(
            (d.exchange_name(), d.routing_key(), d.payload()),
            ("", "q", &b"x"[..])
        );
    }

    #[test]
    fn hostile_delays_are_refused_with_a_reason() {
        let max = Duration::from_secs(15);
        assert!(check_delay(Duration::from_secs(15), max).is_ok());
        let zero = check_delay(Duration::ZERO, max).expect_err("zero");
        assert!(zero.to_string().contains("zero"), "{zero}");
        let long = check_delay(Duration::from_millis(15_001), max).expect_err("too long");
        assert!(long.to_string().contains("longer than"), "{long}");
        let now = SystemTime::now();
        assert!(delay_until(now, now).is_err());
        assert!(delay_until(now - Duration::from_secs(1), now).is_err());
        assert_eq!(
            delay_until(now + Duration::from_secs(2), now).expect("future"),
            Duration::from_secs(2)
        );
    }
}
