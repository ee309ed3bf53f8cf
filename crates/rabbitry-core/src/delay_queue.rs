//! Delay queues: a queue that nobody consumes, whose messages wait out a
//! queue-level TTL and are then dead-lettered to their target queue. Every
//! message in one has the same TTL, so none waits behind a longer one.
//!
//! The consumer's delayed retries use them (`<queue>.retry.<ms>ms`), and so
//! can anything else that needs "this message, in that queue, later".

use std::time::Duration;

use crate::topology::{DeadLetter, Queue};

/// `<target>.<label>.<millis>ms`: the delay is in the name, so a new delay
/// makes a new queue instead of a 406 on the old one.
pub(crate) fn name(target: &str, label: &str, delay: Duration) -> String {
    format!("{target}.{label}.{}ms", delay.as_millis())
}

/// The declaration of a delay queue for `target`: TTL `delay`, then through
/// the default exchange to `target`. Nobody consumes it, so a delivery limit
/// means nothing there; it has none of its own (as declared before rabbitry
/// gave work queues one, so existing delay queues redeclare as they are).
pub(crate) fn declaration(name: String, target: &str, delay: Duration) -> Queue {
    Queue::new(name)
        .broker_default_delivery_limit()
        .message_ttl(delay)
        .dead_letter(DeadLetter::To {
            exchange: String::new(),
            routing_key: Some(target.to_owned()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_is_in_the_name() {
        assert_eq!(
            name("orders", "retry", Duration::from_secs(10)),
            "orders.retry.10000ms"
        );
    }
}
