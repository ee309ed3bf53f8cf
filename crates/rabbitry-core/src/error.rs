//! The one error type of `rabbitry-core`.

use std::time::Duration;

/// What a caller can do about an [`Error`].
///
/// Every error answers "should I retry?", so that callers never downcast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryAdvice {
    /// Retrying the same call may succeed (the broker was unreachable, a
    /// confirm timed out, the connection was lost).
    Retry,
    /// Retrying cannot help until something is changed (configuration,
    /// credentials, topology, the message itself).
    Fix,
}

/// An error from `rabbitry-core`.
///
/// No variant ever carries a password: endpoints are shown redacted
/// (`amqp://user:***@host:port/vhost`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is invalid. Reported once, by `build()` or `connect()`.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// An AMQP URL could not be parsed. The URL is not repeated here, since it
    /// may hold a password.
    #[error("invalid AMQP URL #{index} in the endpoint list: {reason}")]
    InvalidUrl {
        /// Position of the URL in the endpoint list, from 0.
        index: usize,
        /// Why it could not be parsed.
        reason: String,
    },

    /// The broker refused the credentials (403 ACCESS_REFUSED at login).
    #[error("authentication failed at {endpoint}: the broker refused the user name or password")]
    AuthenticationFailed {
        /// The endpoint, with the password redacted.
        endpoint: String,
    },

    /// The user is known but may not use this virtual host.
    #[error("access refused at {endpoint}: {reason}")]
    AccessRefused {
        /// The endpoint, with the password redacted.
        endpoint: String,
        /// The broker's reason.
        reason: String,
    },

    /// No endpoint could be reached (connection refused, DNS, TLS handshake).
    #[error("broker unreachable: tried {endpoints}; last error: {last_error}")]
    Unreachable {
        /// The endpoints tried, redacted, comma-separated.
        endpoints: String,
        /// The last failure, as text.
        last_error: String,
    },

    /// The TLS handshake with an `amqps://` endpoint failed: the broker's
    /// certificate is not trusted or does not name the host, or the port
    /// does not speak TLS. Retrying cannot help until the certificate, the
    /// trusted CA ([`tls_ca_pem`](crate::BrokerConfigBuilder::tls_ca_pem))
    /// or the URL is changed.
    #[error("TLS handshake with {endpoint} failed: {reason}")]
    Tls {
        /// The endpoint, with the password redacted.
        endpoint: String,
        /// What the TLS library reported (for example `invalid peer
        /// certificate: UnknownIssuer`).
        reason: String,
    },

    /// Connecting did not finish within the connect timeout.
    #[error("connecting to {endpoint} timed out after {timeout:?}")]
    ConnectTimeout {
        /// The endpoint, with the password redacted.
        endpoint: String,
        /// The configured connect timeout.
        timeout: Duration,
    },

    /// The connection or channel was lost during an operation.
    #[error("connection lost during {operation}: {reason}")]
    ConnectionLost {
        /// What was being done.
        operation: &'static str,
        /// What lapin reported.
        reason: String,
    },

    /// A declaration conflicts with what the broker already holds
    /// (406 PRECONDITION_FAILED).
    #[error("{kind} '{name}' already exists with a different value for '{argument}': {detail}")]
    TopologyMismatch {
        /// `queue` or `exchange`.
        kind: &'static str,
        /// The queue or exchange name.
        name: String,
        /// The argument that differs (`x-queue-type`, `durable`, …).
        argument: String,
        /// The broker's full explanation.
        detail: String,
    },

    /// The broker refused an operation with a channel-level error
    /// (404 NOT_FOUND, 403 ACCESS_REFUSED, 406 PRECONDITION_FAILED, …).
    #[error("broker refused {operation}: {code} {text}")]
    Broker {
        /// What was being done.
        operation: String,
        /// The AMQP reply code.
        code: u16,
        /// The broker's reply text.
        text: String,
    },

    /// The broker negatively acknowledged a published message (queue full
    /// with `reject-publish`, or an internal error).
    #[error("the broker nacked the message {message_id}")]
    Nacked {
        /// The message id.
        message_id: String,
    },

    /// A mandatory message matched no queue and was returned.
    #[error(
        "message {message_id} is unroutable: exchange '{exchange}', routing key '{routing_key}' ({reply})"
    )]
    Unroutable {
        /// The message id.
        message_id: String,
        /// The exchange it was published to.
        exchange: String,
        /// Its routing key.
        routing_key: String,
        /// The broker's reply code and text.
        reply: String,
    },

    /// No confirm arrived within the publish timeout. The broker may still
    /// have the message: a resend can produce a duplicate, which idempotent
    /// consumers absorb.
    #[error("no confirm for message {message_id} within {timeout:?}")]
    TimedOut {
        /// The message id.
        message_id: String,
        /// The publish timeout.
        timeout: Duration,
    },

    /// The broker blocked the publishing connection (memory or disk alarm)
    /// for longer than the configured bound.
    #[error("publishing connection blocked by the broker for more than {waited:?}: {reason}")]
    Blocked {
        /// How long the publisher waited.
        waited: Duration,
        /// The broker's reason, when known.
        reason: String,
    },

    /// The message is too large: its payload exceeds the publisher's
    /// maximum, or its headers and properties do not fit in one AMQP frame
    /// (the broker would close the connection, failing every publish on it).
    #[error("message {what} of {size} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// What is too large: `payload`, or `headers and properties`.
        what: &'static str,
        /// Its size in bytes.
        size: usize,
        /// The limit.
        max: usize,
    },

    /// The message cannot be sent as it is: a name, id or header name is
    /// longer than AMQP allows, or a property is malformed. Nothing was sent.
    #[error("invalid message: {reason}")]
    InvalidMessage {
        /// What is wrong (never the offending value itself).
        reason: String,
    },

    /// An earlier message with the same partition key waits in the outbox:
    /// this one was deferred behind it rather than sent ahead of it.
    #[error(
        "message {message_id} was not sent directly: its partition key may have unsent messages in the outbox"
    )]
    HeldForOrder {
        /// The message id.
        message_id: String,
    },

    /// The payload could not be encoded or decoded.
    #[error("payload (de)serialization failed: {0}")]
    Serialization(#[from] serde_json::Error),

    /// Publishing failed and writing the message to the outbox failed too.
    /// The message was neither sent nor stored: the caller still owns it.
    #[error("publish failed ({publish}) and the outbox write failed too ({outbox})")]
    OutboxFailed {
        /// Why the publish failed.
        publish: Box<Error>,
        /// Why the outbox write failed.
        outbox: String,
    },

    /// The component was shut down: a publish on a closed
    /// [`Publisher`](crate::Publisher) fails with this at once; nothing was
    /// sent, the caller still owns the message.
    #[error("shut down")]
    Shutdown,

    /// [`Publisher::flush`](crate::Publisher::flush) (or `close`) gave up:
    /// publishes started before it had not all settled within its bound.
    /// They go on settling (confirmed, failed, or deferred to the outbox)
    /// within their own publish timeout.
    #[error("{pending} publishes still unsettled after {timeout:?}")]
    FlushTimedOut {
        /// Publishes still in flight when it gave up.
        pending: usize,
        /// The bound that elapsed.
        timeout: Duration,
    },

    /// An outbox, inbox or idempotency store failed (Postgres, Redis). The
    /// store's own error is the [`source`](std::error::Error::source):
    /// `downcast_ref::<rabbitry_postgres::Error>()` (or
    /// `rabbitry_redis::Error`) reaches it. Made by `?` on their results.
    #[error("{}", StoreText(store, &**source))]
    Store {
        /// Which store: `postgres` or `redis`.
        store: &'static str,
        /// Whether the store said retrying may help.
        retryable: bool,
        /// The store's error. It never carries a URL or a password.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    /// A task running a long-lived part
    /// ([`Consumer::spawn`](crate::Consumer::spawn), the relay's `spawn`)
    /// panicked or was aborted before it returned: `?` on its join handle.
    #[error("a spawned task {}", if *panicked { "panicked" } else { "was cancelled" })]
    TaskFailed {
        /// True for a panic, false for an abort.
        panicked: bool,
    },
}

/// A store error's text: its own message, prefixed with the store's name
/// unless the message begins with it already ("postgres: …", "redis
/// unreachable"), so that no line says it twice.
struct StoreText<'a>(&'a str, &'a (dyn std::error::Error + Send + Sync));

impl std::fmt::Display for StoreText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let StoreText(store, source) = *self;
        let text = source.to_string();
        let named = text
            .get(..store.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(store));
        if named {
            f.write_str(&text)
        } else {
            write!(f, "{store}: {text}")
        }
    }
}

impl From<tokio::task::JoinError> for Error {
    /// The panic's message is not kept: it may quote anything.
    fn from(e: tokio::task::JoinError) -> Self {
        Error::TaskFailed {
            panicked: e.is_panic(),
        }
    }
}

impl Error {
    /// Whether retrying the same call may help.
    pub fn retry_advice(&self) -> RetryAdvice {
        match self {
            Error::Unreachable { .. }
            | Error::ConnectTimeout { .. }
            | Error::ConnectionLost { .. }
            | Error::Nacked { .. }
            | Error::Unroutable { .. }
            | Error::TimedOut { .. }
            | Error::Blocked { .. }
            | Error::FlushTimedOut { .. } => RetryAdvice::Retry,
            Error::Store { retryable, .. } => {
                if *retryable {
                    RetryAdvice::Retry
                } else {
                    RetryAdvice::Fix
                }
            }
            // 404/405: the exchange or queue may be declared, or the lock
            // released, soon. 320/541: the broker closed the connection
            // (forced, or an internal error seen on 3.10 under concurrent
            // declares); the next attempt runs on a recovered connection.
            Error::Broker {
                code: 320 | 404 | 405 | 541,
                ..
            } => RetryAdvice::Retry,
            _ => RetryAdvice::Fix,
        }
    }

    /// Whether the failure says the broker could not be used at the time
    /// (unreachable, connection lost, no answer in time, blocked by an
    /// alarm, the connection closed by the broker), as opposed to something
    /// about the message or its destination (nacked, unroutable, a missing
    /// exchange, too large, invalid). An outage is no fault of the message:
    /// the outbox does not count it as a failed attempt. Always false for
    /// [`Error::Store`]: it speaks of the broker only.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Error::Unreachable { .. }
                | Error::ConnectTimeout { .. }
                | Error::ConnectionLost { .. }
                | Error::TimedOut { .. }
                | Error::Blocked { .. }
                | Error::Broker {
                    code: 320 | 541,
                    ..
                }
        )
    }

    /// Shorthand for `retry_advice() == RetryAdvice::Retry`.
    pub fn is_retryable(&self) -> bool {
        self.retry_advice() == RetryAdvice::Retry
    }

    /// Maps a lapin error raised while doing `operation`.
    pub(crate) fn from_lapin(operation: &'static str, err: &lapin::Error) -> Self {
        use lapin::ErrorKind;
        match err.kind() {
            ErrorKind::ProtocolError(amqp) => Error::Broker {
                operation: operation.to_owned(),
                code: amqp.get_id(),
                text: amqp.get_message().to_string(),
            },
            ErrorKind::InvalidChannelState(state, _) => Error::ConnectionLost {
                operation,
                reason: format!("channel is {state:?}"),
            },
            ErrorKind::InvalidConnectionState(state) => Error::ConnectionLost {
                operation,
                reason: format!("connection is {state:?}"),
            },
            _ => Error::ConnectionLost {
                operation,
                reason: err.to_string(),
            },
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_failures_are_retryable_and_config_errors_are_not() {
        assert!(
            Error::TimedOut {
                message_id: "m".into(),
                timeout: Duration::from_secs(1)
            }
            .is_retryable()
        );
        assert!(!Error::Config("x".into()).is_retryable());
        assert!(
            !Error::AuthenticationFailed {
                endpoint: "amqp://u:***@h:5672/%2f".into()
            }
            .is_retryable()
        );
        assert!(
            !Error::TooLarge {
                what: "payload",
                size: 2,
                max: 1
            }
            .is_retryable()
        );
    }
}
