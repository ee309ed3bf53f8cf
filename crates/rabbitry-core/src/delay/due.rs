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

impl Message {
    /// When this message is due, if it is a delayed message (it carries
    /// [`DUE_AT_HEADER`]).
    pub fn due_at(&self) -> Option<SystemTime> {
        let ms = self.properties().headers.get(DUE_AT_HEADER)?.as_i64()?;
        let ms = u64::try_from(ms).ok()?;
        UNIX_EPOCH.checked_add(Duration::from_millis(ms))
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
