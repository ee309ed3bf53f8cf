//! The deadpool manager that opens lapin connections across endpoints.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use futures_util::StreamExt;
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::{Connection, ConnectionProperties, ErrorKind, Event};
use tokio::sync::watch;

use super::state::{ConnectionState, Role};
use crate::config::BrokerConfig;
use crate::error::Error;

/// Opens connections for one [`Role`], trying the endpoints in turn.
///
/// deadpool-lapin's `Manager` knows a single URL, so rabbitry keeps one per
/// endpoint and rotates through them. Two more differences: a connection
/// that lapin is still recovering is kept rather than replaced, and nothing
/// here is ever printed with `Debug` (deadpool-lapin's prints the URL,
/// password included).
pub(crate) struct ConnectionManager {
    pub(crate) config: Arc<BrokerConfig>,
    endpoints: Vec<deadpool_lapin::Manager>,
    pub(crate) role: Role,
    next: AtomicUsize,
    created: AtomicUsize,
    pub(crate) state: watch::Sender<ConnectionState>,
    /// Bumped every time a connection (re)connects, so that the topology
    /// registry can declare again.
    pub(crate) generation: watch::Sender<u64>,
}

impl ConnectionManager {
    pub(crate) fn new(
        config: Arc<BrokerConfig>,
        role: Role,
        generation: watch::Sender<u64>,
    ) -> Result<Self, Error> {
        let runtime = lapin::runtime::default_runtime()
            .map_err(|e| Error::Config(format!("no tokio runtime: {e}")))?;
        let name = format!("{}-{}", config.connection_name, role.as_str());
        let endpoints = config
            .endpoints
            .iter()
            .map(|endpoint| {
                let uri = endpoint.uri_with(config.heartbeat, config.connect_timeout);
                let name = name.clone();
                deadpool_lapin::Manager::new(
                    uri.to_string(),
                    move || properties(&name),
                    runtime.clone(),
                )
            })
            .collect();
        Ok(Self {
            config,
            endpoints,
            role,
            next: AtomicUsize::new(0),
            created: AtomicUsize::new(0),
            state: watch::Sender::new(ConnectionState::Connecting),
            generation,
        })
    }

    async fn connect_one(&self, index: usize) -> Result<Connection, Error> {
        let endpoint = &self.config.endpoints[index];
        let timeout = self.config.connect_timeout;
        match tokio::time::timeout(timeout, managed::Manager::create(&self.endpoints[index])).await
        {
            Err(_) => Err(Error::ConnectTimeout {
                endpoint: endpoint.to_string(),
                timeout,
            }),
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(err)) => Err(map_connect_error(&endpoint.to_string(), &err)),
        }
    }

    fn watch_events(&self, conn: &Connection) {
        let status = conn.status().clone();
        let mut events = conn.events_listener();
        let state = self.state.clone();
        let generation = self.generation.clone();
        let role = self.role;
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                let next = match event {
                    Event::Connected => {
                        tracing::info!(role = role.as_str(), "rabbitry connection recovered");
                        generation.send_modify(|g| *g += 1);
                        ConnectionState::Connected
                    }
                    Event::ConnectionBlocked(reason) => {
                        tracing::warn!(role = role.as_str(), %reason, "broker blocked the connection");
                        ConnectionState::Blocked { reason }
                    }
                    Event::ConnectionUnblocked => {
                        tracing::info!(role = role.as_str(), "broker unblocked the connection");
                        ConnectionState::Connected
                    }
                    Event::Error(err) => {
                        // lapin also reports channel-level errors here (a 406
                        // on one channel); the connection itself is fine.
                        if err.is_amqp_soft_error() {
                            tracing::debug!(role = role.as_str(), error = %err, "channel error");
                            continue;
                        }
                        if status.reconnecting() || status.connecting() || status.connected() {
                            tracing::warn!(role = role.as_str(), error = %err, "connection lost, reconnecting");
                            ConnectionState::Reconnecting
                        } else {
                            tracing::warn!(role = role.as_str(), error = %err, "connection closed");
                            ConnectionState::Closed
                        }
                    }
                    _ => continue,
                };
                state.send_replace(next);
            }
            if !status.connected() {
                state.send_replace(ConnectionState::Closed);
            }
        });
    }
}

fn properties(name: &str) -> ConnectionProperties {
    ConnectionProperties::default()
        .with_connection_name(name.into())
        .with_client_property("product".into(), "rabbitry".into())
        .with_client_property("version".into(), env!("CARGO_PKG_VERSION").into())
        .enable_auto_recover()
        // lapin retries the TCP connection on recovery; when it gives up,
        // rabbitry opens a fresh connection, rotating endpoints.
        .configure_backoff(|b| {
            b.with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(5))
                .with_max_times(8)
                .with_jitter()
        })
}

/// Sorts a lapin connect failure into rabbitry's distinct errors.
fn map_connect_error(endpoint: &str, err: &lapin::Error) -> Error {
    if let ErrorKind::ProtocolError(amqp) = err.kind() {
        let text = amqp.get_message().to_string();
        return match amqp.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
                if text.contains("Login was refused") =>
            {
                Error::AuthenticationFailed {
                    endpoint: endpoint.to_owned(),
                }
            }
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
            | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => Error::AccessRefused {
                endpoint: endpoint.to_owned(),
                reason: text,
            },
            _ => Error::Unreachable {
                endpoints: endpoint.to_owned(),
                last_error: err.to_string(),
            },
        };
    }
    Error::Unreachable {
        endpoints: endpoint.to_owned(),
        last_error: err.to_string(),
    }
}

impl managed::Manager for ConnectionManager {
    type Type = Connection;
    type Error = Error;

    async fn create(&self) -> Result<Connection, Error> {
        let n = self.config.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut failures = Vec::new();
        for i in 0..n {
            let index = (start + i) % n;
            match self.connect_one(index).await {
                Ok(conn) => {
                    // Keep the next connection on the node that worked.
                    self.next.store(index, Ordering::Relaxed);
                    tracing::info!(
                        role = self.role.as_str(),
                        endpoint = %self.config.endpoints[index],
                        "rabbitry connected"
                    );
                    self.watch_events(&conn);
                    self.state.send_replace(ConnectionState::Connected);
                    if self.created.fetch_add(1, Ordering::Relaxed) > 0 {
                        self.generation.send_modify(|g| *g += 1);
                    }
                    return Ok(conn);
                }
                // Wrong credentials are wrong on every node: stop here.
                Err(err @ (Error::AuthenticationFailed { .. } | Error::AccessRefused { .. })) => {
                    return Err(err);
                }
                Err(err) => {
                    tracing::warn!(
                        role = self.role.as_str(),
                        endpoint = %self.config.endpoints[index],
                        error = %err,
                        "connection attempt failed"
                    );
                    failures.push(err);
                }
            }
        }
        if self.created.load(Ordering::Relaxed) > 0 {
            self.state.send_replace(ConnectionState::Reconnecting);
        }
        let endpoints = self
            .config
            .endpoints
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        Err(match failures.pop() {
            Some(Error::ConnectTimeout { endpoint, timeout }) if n == 1 => {
                Error::ConnectTimeout { endpoint, timeout }
            }
            Some(Error::ConnectTimeout { timeout, .. }) => Error::Unreachable {
                endpoints,
                last_error: format!("timed out after {timeout:?}"),
            },
            Some(Error::Unreachable { last_error, .. }) => Error::Unreachable {
                endpoints,
                last_error,
            },
            Some(other) => other,
            None => Error::Config("no endpoints".into()),
        })
    }

    async fn recycle(&self, conn: &mut Connection, _: &Metrics) -> RecycleResult<Error> {
        let status = conn.status();
        // A connection lapin is recovering is kept: opening a second one in
        // parallel would only race it.
        if status.connected() || status.reconnecting() {
            Ok(())
        } else {
            Err(RecycleError::message("connection closed"))
        }
    }
}
