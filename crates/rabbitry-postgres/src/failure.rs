//! Whose fault a failed publish was: the broker's unavailability, or the
//! message's.
//!
//! Only the message's own failures use up a row's attempts. A broker outage
//! of any length must not park rows as dead: they would need an operator
//! after every long outage, and nothing was wrong with them. Outage failures
//! still back off, so a relay does not hammer a broker that is down.

use rabbitry_core::Error;

/// The short name of a failure and whether it counts toward
/// `max_attempts`.
///
/// Outages (the broker is unavailable, whatever the message) do not count:
/// connection lost, unreachable, connect timeout, blocked by an alarm, no
/// confirm in time, and the broker closing the connection (320
/// CONNECTION_FORCED, 541 INTERNAL_ERROR). Neither do failures of the
/// relay's own setup (credentials, vhost, TLS, configuration, shutdown): no row
/// is at fault for them.
///
/// Everything else is taken to be the message's fault and counts: a nack,
/// unroutable, too large, a refusal on its exchange (404, 403, 406, …), and
/// any kind of error `rabbitry-core` adds later, such as a message that
/// fails validation. Counting an unknown kind is the safe side: a row parked
/// as dead is kept and replayable, while a row that never dies retries a
/// hopeless message forever.
pub(crate) fn classify(error: &Error) -> (&'static str, bool) {
    // What is an outage is rabbitry-core's one definition; the relay adds
    // its own setup errors, which no row is at fault for either.
    let relay_setup = matches!(
        error,
        Error::AuthenticationFailed { .. }
            | Error::AccessRefused { .. }
            | Error::Tls { .. }
            | Error::Config(_)
            | Error::InvalidUrl { .. }
            | Error::Shutdown
    );
    (name(error), !(error.is_unavailable() || relay_setup))
}

/// The failure's short name, for `last_error_kind` and `rabbitry-relay status`.
fn name(error: &Error) -> &'static str {
    match error {
        Error::ConnectionLost { .. } => "connection_lost",
        Error::Unreachable { .. } => "unreachable",
        Error::ConnectTimeout { .. } => "connect_timeout",
        Error::Blocked { .. } => "blocked",
        Error::TimedOut { .. } => "timed_out",
        Error::Broker { code: 320, .. } => "connection_forced",
        Error::Broker { code: 541, .. } => "broker_internal_error",
        Error::AuthenticationFailed { .. } => "authentication_failed",
        Error::AccessRefused { .. } => "access_refused",
        Error::Tls { .. } => "tls",
        Error::Config(_) | Error::InvalidUrl { .. } => "relay_config",
        Error::Shutdown => "shutdown",
        Error::Nacked { .. } => "nacked",
        Error::Unroutable { .. } => "unroutable",
        Error::TooLarge { .. } => "too_large",
        Error::InvalidMessage { .. } => "invalid_message",
        Error::Broker { code: 404, .. } => "not_found",
        Error::Broker { code: 403, .. } => "access_refused_by_exchange",
        Error::Broker { code: 406, .. } => "precondition_failed",
        Error::Broker { .. } => "broker_refused",
        Error::Serialization(_) => "serialization",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn counts(e: Error) -> bool {
        classify(&e).1
    }

    fn broker(code: u16) -> Error {
        Error::Broker {
            operation: "basic.publish".into(),
            code,
            text: "x".into(),
        }
    }

    #[test]
    fn outages_do_not_count_toward_max_attempts() {
        let outages = [
            Error::ConnectionLost {
                operation: "basic.publish",
                reason: "closed".into(),
            },
            Error::Unreachable {
                endpoints: "amqp://u:***@h:5672/%2f".into(),
                last_error: "refused".into(),
            },
            Error::ConnectTimeout {
                endpoint: "amqp://u:***@h:5672/%2f".into(),
                timeout: Duration::from_secs(1),
            },
            Error::Blocked {
                waited: Duration::from_secs(5),
                reason: "memory".into(),
            },
            Error::TimedOut {
                message_id: "m".into(),
                timeout: Duration::from_secs(5),
            },
            broker(320),
            broker(541),
            Error::Shutdown,
        ];
        for e in outages {
            let label = e.to_string();
            assert!(!counts(e), "{label}");
        }
    }

    #[test]
    fn failures_caused_by_the_message_count() {
        let own = [
            Error::Nacked {
                message_id: "m".into(),
            },
            Error::Unroutable {
                message_id: "m".into(),
                exchange: "x".into(),
                routing_key: "k".into(),
                reply: "312 NO_ROUTE".into(),
            },
            Error::TooLarge {
                what: "payload",
                size: 2,
                max: 1,
            },
            broker(404),
            broker(403),
            broker(406),
        ];
        for e in own {
            let label = e.to_string();
            assert!(counts(e), "{label}");
        }
        assert_eq!(classify(&broker(404)).0, "not_found");
    }
}
