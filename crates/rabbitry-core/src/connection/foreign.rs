//! Connections lost to a message lapin cannot parse.
//!
//! lapin fails the whole connection when a frame does not parse (a header
//! name or a short-string property that is not UTF-8, which RabbitMQ and
//! other clients accept). On a consuming connection that message comes
//! back on the next subscription and kills it again. The loss is counted
//! here so that the consumers can move the message aside (see the
//! consumer's `rescue`) before they subscribe again.

use futures_util::{FutureExt, Stream, StreamExt};
use lapin::{ErrorKind, Event};
use tokio::sync::watch;

use super::Broker;
use super::state::Role;

/// Whether a connection error is lapin failing to parse what it received.
fn is_unparseable(error: &lapin::Error) -> bool {
    matches!(error.kind(), ErrorKind::ParsingError(_))
}

/// When `error` is lapin failing to parse a frame, counts and logs the
/// loss (once: the connection is lost with it). lapin's parse errors say
/// where parsing failed, never the bytes.
pub(super) fn report_if_unparseable(
    role: Role,
    endpoint: &str,
    error: &lapin::Error,
    counter: &watch::Sender<u64>,
) -> bool {
    if !is_unparseable(error) {
        return false;
    }
    tracing::error!(
        role = role.as_str(),
        %endpoint,
        %error,
        "a message lapin cannot parse arrived (a header name or property that is not UTF-8); lapin closed the connection; the consumers will move the message to their error exchange and subscribe again"
    );
    counter.send_modify(|n| *n += 1);
    true
}

/// Looks through the events already queued when the status check found the
/// connection down first, so that a parse error behind it is not missed.
/// True when one was found (and reported).
pub(super) fn report_queued<S: Stream<Item = Event> + Unpin>(
    events: &mut S,
    role: Role,
    endpoint: &str,
    counter: &watch::Sender<u64>,
) -> bool {
    while let Some(Some(event)) = events.next().now_or_never() {
        if let Event::Error(error) = event
            && report_if_unparseable(role, endpoint, &error, counter)
        {
            return true;
        }
    }
    false
}

impl Broker {
    /// A counter of the connections for `role` lost to a message lapin
    /// cannot parse.
    pub(crate) fn watch_unparseable(&self, role: Role) -> watch::Receiver<u64> {
        self.pool(role).manager().unparseable.subscribe()
    }
}
