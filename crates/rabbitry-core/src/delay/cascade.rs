//! The binary TTL cascade's arithmetic: routing keys, binding keys and
//! names. No broker here, so every rule is unit-tested.
//!
//! A delay of `s` whole seconds is written as [`DIGITS`] binary digits,
//! highest first, dot-separated, followed by the destination queue:
//! `0.0.….1.0.1.orders.timeouts` is 5 s to `orders.timeouts`. Level `L` is
//! a topic exchange and a quorum queue whose messages live `2^L` seconds.
//! A message is published to the exchange of its highest 1 digit; each
//! exchange sends it to its own queue when its digit is 1, and on to the
//! next exchange down when it is 0. Expired messages are dead-lettered to
//! the next exchange down, and below level 0 to the delivery exchange,
//! where the destination queue is bound by its exact name. The message
//! waits `2^L` seconds at each level whose digit is 1: `s` seconds in all.

use std::time::Duration;

/// Binary digits in a routing key, whatever the number of levels declared:
/// the same key means the same thing on every cascade, so a cascade with
/// more levels can be declared over one with fewer.
pub(crate) const DIGITS: u32 = 28;

/// The most levels a cascade can have, as NServiceBus has: the longest
/// level waits 2^27 s, and the longest delay is 2^28−1 s (about 8.5 years).
pub const MAX_CASCADE_LEVELS: u32 = DIGITS;

/// Bytes of the digits and their dots in front of the destination.
pub(crate) const PREFIX_LEN: usize = 2 * DIGITS as usize;

/// Whole seconds of delay, rounded up: the cascade never delivers early.
pub(crate) fn whole_seconds(delay: Duration) -> u64 {
    delay.as_secs() + u64::from(delay.subsec_nanos() > 0)
}

/// The longest delay a cascade of `levels` levels can hold.
pub(crate) fn max_delay(levels: u32) -> Duration {
    Duration::from_secs((1u64 << levels) - 1)
}

/// The level whose exchange a delay of `seconds` (at least 1) is published
/// to: its highest 1 digit.
pub(crate) fn first_level(seconds: u64) -> u32 {
    debug_assert!(seconds > 0);
    63 - seconds.leading_zeros()
}

/// `b27.….b0.<destination>`.
pub(crate) fn routing_key(seconds: u64, destination: &str) -> String {
    let mut key = String::with_capacity(PREFIX_LEN + destination.len());
    for level in (0..DIGITS).rev() {
        key.push(if seconds >> level & 1 == 1 { '1' } else { '0' });
        key.push('.');
    }
    key.push_str(destination);
    key
}

/// `*.` once per digit above `level`.
fn above(level: u32) -> String {
    "*.".repeat((DIGITS - 1 - level) as usize)
}

/// Binds level `level`'s queue to its exchange: digit `level` is 1.
pub(crate) fn queue_binding(level: u32) -> String {
    format!("{}1.#", above(level))
}

/// Binds the next exchange down (or the delivery exchange) to level
/// `level`'s exchange: digit `level` is 0.
pub(crate) fn fall_through_binding(level: u32) -> String {
    format!("{}0.#", above(level))
}

/// Binds `destination` to the delivery exchange: any digits, then exactly
/// the destination's words. A queue named `timeouts` does not receive what
/// is meant for `orders.timeouts` (one word more).
pub(crate) fn delivery_binding(destination: &str) -> String {
    format!("{}{destination}", "*.".repeat(DIGITS as usize))
}

/// Why `destination` cannot be a cascade destination, if it cannot.
pub(crate) fn check_destination(destination: &str) -> Result<(), String> {
    if destination.is_empty() {
        return Err(
            "a delayed message goes to a queue: publish it to the default \
                    exchange (\"\") with the queue's name as routing key"
                .into(),
        );
    }
    let max = crate::wire::MAX_SHORT_STRING - PREFIX_LEN;
    if destination.len() > max {
        return Err(format!(
            "the destination queue name is {} bytes long; a delayed message's \
             destination may have at most {max} (the routing key also carries {PREFIX_LEN} bytes of delay)",
            destination.len()
        ));
    }
    if destination.contains(['*', '#']) {
        return Err(
            "the destination queue name of a delayed message must not contain '*' or '#'".into(),
        );
    }
    Ok(())
}

/// The names of a cascade's exchanges and queues, from its prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Names {
    prefix: String,
}

impl Names {
    pub(crate) fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// Level `level`'s exchange and queue (one name for both).
    pub(crate) fn level(&self, level: u32) -> String {
        format!("{}.level-{level:02}", self.prefix)
    }

    /// Where expired messages leave the cascade for their destination.
    pub(crate) fn delivery(&self) -> String {
        format!("{}.delivery", self.prefix)
    }

    /// The alternate exchange of the delivery exchange, and the queue
    /// where it parks what no destination takes.
    pub(crate) fn unroutable(&self) -> String {
        format!("{}.unroutable", self.prefix)
    }

    /// The `x-delayed-message` exchange, where the plugin is used.
    pub(crate) fn plugin(&self) -> String {
        format!("{}.plugin", self.prefix)
    }
}

#[cfg(test)]
#[path = "cascade_tests.rs"]
mod tests;
