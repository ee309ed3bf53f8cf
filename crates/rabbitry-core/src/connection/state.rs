//! Observable connection state.

use std::fmt;

/// The state of one of a broker's connections (publishing or consuming).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// The first connection attempt is in progress.
    Connecting,
    /// Connected and usable.
    Connected,
    /// The connection was lost (socket error, broker close, missed
    /// heartbeats); rabbitry is opening a new one, on the next endpoint that
    /// answers. Set the moment the loss is seen.
    Reconnecting,
    /// The broker blocked publishing on this connection (memory or disk
    /// alarm). Consuming continues on the other connection.
    Blocked {
        /// The broker's reason.
        reason: String,
    },
    /// Closed by [`Broker::close`](crate::Broker::close).
    Closed,
}

impl ConnectionState {
    /// Whether the connection can be used right now.
    pub fn is_connected(&self) -> bool {
        matches!(self, ConnectionState::Connected)
    }
}

impl fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectionState::Connecting => f.write_str("connecting"),
            ConnectionState::Connected => f.write_str("connected"),
            ConnectionState::Reconnecting => f.write_str("reconnecting"),
            ConnectionState::Blocked { reason } => write!(f, "blocked ({reason})"),
            ConnectionState::Closed => f.write_str("closed"),
        }
    }
}

/// Which of the broker's separate connections.
///
/// Publishing and consuming use separate connections so that a publisher
/// blocked by a broker alarm (`connection.blocked`) cannot stall consumers,
/// which are what drain the alarm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The connection publishers use.
    Publish,
    /// The connection consumers use.
    Consume,
}

impl Role {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Role::Publish => "publish",
            Role::Consume => "consume",
        }
    }
}

/// The name of a lapin connection status that is not `connected`.
pub(super) fn status_name(status: &lapin::ConnectionStatus) -> &'static str {
    if status.reconnecting() {
        "reconnecting"
    } else if status.closing() {
        "closing"
    } else if status.closed() {
        "closed"
    } else if status.errored() {
        "errored"
    } else {
        "not connected"
    }
}
