//! The deadpool manager that opens lapin connections across endpoints.
//!
//! rabbitry owns recovery: lapin's auto-recovery is off. A connection that
//! fails is dropped whole and a new one opened, on the next endpoint, by the
//! broker's supervisor; channels, consumers and topology are rebuilt by
//! their owners (the publisher's channel pool, the consumer, the topology
//! registry). Why: lapin recovers a connection only to the URL it was opened
//! with (a dead node is retried until its backoff runs out, never another
//! node), says nothing while it recovers (no event before `Connected`), and
//! when its retries run out its IO thread exits and leaves the status at
//! `Reconnecting` forever, without an event. See `docs/recovery.md`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use futures_util::StreamExt;
use lapin::{Connection, Event};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::connect::{map_connect_error, open};
use super::foreign;
use super::outage::Outage;
use super::state::{ConnectionState, Role};
use super::version::{self, ServerVersion};
use crate::config::BrokerConfig;
use crate::error::Error;

/// How often a connection's lapin status is checked besides its events: a
/// connection that is not `Connected` at a check is replaced.
const STATUS_CHECK: Duration = Duration::from_millis(250);

/// After a round of attempts failed on every endpoint, callers within this
/// long get that failure at once instead of a new round: during an outage a
/// hundred publishes must not become a hundred connection attempts (each of
/// which lapin logs at ERROR).
const RETRY_COOLDOWN: Duration = Duration::from_millis(500);

/// Opens connections for one [`Role`], trying the endpoints in turn.
///
/// Nothing here is ever printed with `Debug` (deadpool-lapin's manager
/// prints the URL, password included).
pub(crate) struct ConnectionManager {
    pub(crate) config: Arc<BrokerConfig>,
    pub(crate) role: Role,
    next: Arc<AtomicUsize>,
    created: AtomicUsize,
    pub(crate) state: watch::Sender<ConnectionState>,
    /// Bumped every time a connection (re)connects, so that the topology
    /// registry can declare again.
    pub(crate) generation: watch::Sender<u64>,
    pub(crate) outage: Arc<Mutex<Outage>>,
    /// Connections lost to a message lapin cannot parse.
    pub(crate) unparseable: watch::Sender<u64>,
    /// The version of the node this role last connected to.
    pub(crate) server_version: Arc<Mutex<Option<ServerVersion>>>,
    /// The last round of attempts that failed on every endpoint, and when.
    last_failure: Mutex<Option<(Instant, Error)>>,
    shutdown: CancellationToken,
}

impl ConnectionManager {
    pub(crate) fn new(
        config: Arc<BrokerConfig>,
        role: Role,
        generation: watch::Sender<u64>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            config,
            role,
            next: Arc::new(AtomicUsize::new(0)),
            created: AtomicUsize::new(0),
            state: watch::Sender::new(ConnectionState::Connecting),
            generation,
            unparseable: watch::Sender::new(0),
            outage: Arc::default(),
            server_version: Arc::default(),
            last_failure: Mutex::new(None),
            shutdown,
        }
    }

    async fn connect_one(&self, index: usize) -> Result<Connection, Error> {
        let endpoint = &self.config.endpoints[index];
        let timeout = self.config.connect_timeout;
        // The parsed URI goes to lapin as it is: a round trip through a
        // string would lose an IPv6 host's brackets.
        let uri = endpoint.uri_with(self.config.heartbeat, timeout);
        let name = self.connection_name();
        let probe_uri = uri.clone();
        match tokio::time::timeout(timeout, open(uri, &name, &self.config)).await {
            Err(_) => Err(Error::ConnectTimeout {
                endpoint: endpoint.to_string(),
                timeout,
            }),
            Ok(Ok(conn)) => {
                // The topology declares on the consuming connection, so it
                // is the one whose node's version matters.
                if self.role == Role::Consume {
                    self.read_server_version(probe_uri, timeout).await;
                }
                Ok(conn)
            }
            Ok(Err(err)) => Err(map_connect_error(endpoint, &err)),
        }
    }

    /// The name the management UI shows for this role's connections, and
    /// the logs too: `<connection_name>-publish` or `-consume`.
    pub(super) fn connection_name(&self) -> String {
        format!("{}-{}", self.config.connection_name, self.role.as_str())
    }

    /// Asks the node just connected to for its version (a second, short
    /// socket; see [`version::probe`]). A node that does not answer leaves
    /// the version known so far.
    async fn read_server_version(&self, uri: lapin::uri::AMQPUri, timeout: Duration) {
        let tls = self.config.tls.lapin_config();
        let probe = tokio::task::spawn_blocking(move || version::probe(&uri, &tls, timeout));
        match tokio::time::timeout(timeout, probe).await {
            Ok(Ok(Ok(Some(found)))) => {
                let mut known = self
                    .server_version
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if *known != Some(found) {
                    tracing::info!(version = %found, "RabbitMQ version");
                }
                *known = Some(found);
            }
            Ok(Ok(Ok(None))) => tracing::debug!("the broker did not tell its version"),
            Ok(Ok(Err(error))) => tracing::debug!(%error, "reading the broker's version failed"),
            Ok(Err(_)) | Err(_) => tracing::debug!("reading the broker's version timed out"),
        }
    }

    /// Watches one connection until it is lost, then reports the loss: the
    /// state turns `Reconnecting` (which wakes the supervisor) and the loss
    /// is logged once.
    fn watch(&self, conn: &Connection, index: usize) {
        let status = conn.status().clone();
        let mut events = conn.events_listener();
        let state = self.state.clone();
        let outage = self.outage.clone();
        let next = self.next.clone();
        let shutdown = self.shutdown.clone();
        let role = self.role;
        let connection = self.connection_name();
        let endpoint = self.config.endpoints[index].to_string();
        let endpoints = self.config.endpoints.len();
        let unparseable = self.unparseable.clone();
        tokio::spawn(async move {
            let mut check = tokio::time::interval(STATUS_CHECK);
            let reason = loop {
                tokio::select! {
                    // Events before the status check: the error says why.
                    biased;
                    () = shutdown.cancelled() => return,
                    event = events.next() => match event {
                        None => break "connection ended".to_owned(),
                        Some(Event::ConnectionBlocked(reason)) => {
                            tracing::warn!(role = role.as_str(), connection, %reason, "broker blocked the connection (a memory or disk alarm): publishes wait, then defer to the outbox or fail with Blocked, until the broker frees memory or disk");
                            state.send_replace(ConnectionState::Blocked { reason });
                        }
                        Some(Event::ConnectionUnblocked) => {
                            tracing::info!(role = role.as_str(), connection, "broker unblocked the connection");
                            state.send_replace(ConnectionState::Connected);
                        }
                        // lapin also reports channel-level errors here (a 406
                        // on one channel); the connection itself is fine.
                        Some(Event::Error(err)) if err.is_amqp_soft_error() => {
                            tracing::debug!(role = role.as_str(), error = %err, "channel error");
                        }
                        Some(Event::Error(err)) => {
                            foreign::report_if_unparseable(role, &endpoint, &err, &unparseable);
                            break err.to_string();
                        }
                        Some(_) => {}
                    },
                    _ = check.tick() => {
                        if !status.connected() {
                            foreign::report_queued(&mut events, role, &endpoint, &unparseable);
                            break format!("connection is {:?}", super::state::status_name(&status));
                        }
                    }
                }
            };
            if shutdown.is_cancelled() {
                return;
            }
            // Start the next attempt on the node after the one that failed.
            let _ = next.compare_exchange(
                index,
                (index + 1) % endpoints,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            let report = {
                let mut outage = outage.lock().unwrap_or_else(|p| p.into_inner());
                outage.lost(Instant::now());
                outage.report_loss()
            };
            if report {
                tracing::warn!(role = role.as_str(), connection, %endpoint, %reason, "rabbitry connection lost; reconnecting");
            }
            set_reconnecting(&state);
        });
    }
}

/// Turns the state `Reconnecting`, notifying watchers only on a change.
fn set_reconnecting(state: &watch::Sender<ConnectionState>) {
    state.send_if_modified(|s| {
        let changed = *s != ConnectionState::Reconnecting;
        *s = ConnectionState::Reconnecting;
        changed
    });
}

/// A copy of a failure that a caller may be handed again during the
/// cooldown: the broker being unreachable or slow, nothing else.
fn same_failure(error: &Error) -> Option<Error> {
    match error {
        Error::Unreachable {
            endpoints,
            last_error,
        } => Some(Error::Unreachable {
            endpoints: endpoints.clone(),
            last_error: last_error.clone(),
        }),
        Error::ConnectTimeout { endpoint, timeout } => Some(Error::ConnectTimeout {
            endpoint: endpoint.clone(),
            timeout: *timeout,
        }),
        _ => None,
    }
}

impl managed::Manager for ConnectionManager {
    type Type = Connection;
    type Error = Error;

    async fn create(&self) -> Result<Connection, Error> {
        // After a loss, give the cluster a moment before coming back: a node
        // killed outright closes its sockets at once, and a channel that
        // publishes to a quorum queue while its leader is being re-elected
        // was seen (RabbitMQ 3.10.8) to have every later publish to that
        // queue nacked.
        let since = self
            .outage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .since();
        if let Some(since) = since {
            let until = since + self.config.reconnect_delay;
            tokio::time::sleep_until(until.into()).await;
        }
        if let Some((at, error)) = &*self.last_failure.lock().unwrap_or_else(|p| p.into_inner())
            && at.elapsed() < RETRY_COOLDOWN
            && let Some(error) = same_failure(error)
        {
            return Err(error);
        }
        let n = self.config.endpoints.len();
        let start = self.next.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for i in 0..n {
            let index = (start + i) % n;
            match self.connect_one(index).await {
                // `Broker::close` ran while this connection was opened: it
                // closes the connections it can see, and must not find one
                // opened behind its back afterwards.
                Ok(conn) if self.shutdown.is_cancelled() => {
                    let timeout = self.config.operation_timeout;
                    let _ = tokio::time::timeout(
                        timeout,
                        conn.close(200, "broker handle closed".into()),
                    )
                    .await;
                    return Err(closed());
                }
                Ok(conn) => {
                    *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    // Keep the next connection on the node that worked.
                    self.next.store(index, Ordering::Relaxed);
                    let endpoint = &self.config.endpoints[index];
                    let restored = self
                        .outage
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .restored(Instant::now());
                    match restored {
                        Some((outage, failed_attempts)) => tracing::info!(
                            role = self.role.as_str(),
                            connection = self.connection_name(),
                            %endpoint,
                            ?outage,
                            failed_attempts,
                            "rabbitry connection restored"
                        ),
                        None => tracing::info!(
                            role = self.role.as_str(),
                            connection = self.connection_name(),
                            %endpoint,
                            "rabbitry connected"
                        ),
                    }
                    self.watch(&conn, index);
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
                    // Logged by the caller, rate-limited: during an outage
                    // this runs every few seconds.
                    tracing::debug!(
                        role = self.role.as_str(),
                        endpoint = %self.config.endpoints[index],
                        error = %err,
                        "connection attempt failed"
                    );
                    failures.push(err);
                }
            }
        }
        let endpoints = self
            .config
            .endpoints
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        // A refused certificate is final only when every endpoint refused:
        // with other nodes merely down, the outage is what to report.
        let all_tls = failures.iter().all(|f| matches!(f, Error::Tls { .. }));
        let error = match failures.pop() {
            Some(Error::Tls { reason, .. }) if !all_tls => Error::Unreachable {
                endpoints,
                last_error: format!("TLS: {reason}"),
            },
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
        };
        if let Some(copy) = same_failure(&error) {
            *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((Instant::now(), copy));
        }
        Err(error)
    }

    async fn recycle(&self, conn: &mut Connection, _: &Metrics) -> RecycleResult<Error> {
        // Only a connected connection is handed out; anything else (lost,
        // closing) is dropped and a fresh one opened. The loss is recorded
        // here too, in case a caller gets here before the connection's
        // watcher: `create` then waits the reconnect delay all the same.
        if conn.status().connected() {
            return Ok(());
        }
        if !self.shutdown.is_cancelled() {
            // The connection's watcher logs the loss, with the endpoint and
            // the reason, within its next status check.
            self.outage
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .lost(Instant::now());
            tracing::debug!(
                role = self.role.as_str(),
                connection = self.connection_name(),
                "a pooled connection is lost; opening another"
            );
            set_reconnecting(&self.state);
        }
        Err(RecycleError::message("connection lost"))
    }
}

/// What an operation gets once [`Broker::close`](super::Broker::close) has
/// run: the broker cannot be used, as when it is down (the outbox takes a
/// publish).
pub(crate) fn closed() -> Error {
    Error::ConnectionLost {
        operation: "connection.open",
        reason: "the broker handle was closed".into(),
    }
}
