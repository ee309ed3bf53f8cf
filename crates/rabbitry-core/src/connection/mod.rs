//! Connections: one pool for publishing, one for consuming, with state you
//! can watch and a topology registry that is declared again after recovery.

mod close;
mod connect;
mod foreign;
mod manager;
pub(crate) mod outage;
mod state;
mod version;

use std::fmt;
use std::sync::{Arc, Mutex};

use deadpool::managed::{Pool, PoolError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::manager::ConnectionManager;
pub use self::state::{ConnectionState, Role};
pub use self::version::ServerVersion;
use crate::backoff::Backoff;
use crate::config::BrokerConfig;
use crate::error::{Error, Result};

/// A handle to a RabbitMQ cluster: separate publishing and consuming
/// connections, opened across the configured endpoints.
///
/// rabbitry recovers connections itself: a connection that is lost (broker
/// closed it, socket error, missed heartbeats) is dropped and a new one is
/// opened on the next endpoint that answers. The state
/// ([`watch_state`](Self::watch_state)) turns `Reconnecting` at once and
/// `Connected` when the new connection is up; the topology registered with
/// [`declare`](Self::declare) is declared again on it.
///
/// Cheap to clone; clones share the connections.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<BrokerConfig>,
    publish: Pool<ConnectionManager>,
    consume: Pool<ConnectionManager>,
    /// What is declared again after every reconnect (the topologies
    /// given to `declare`). Kept behind a trait so that connections need
    /// not know what a topology is.
    topologies: Mutex<Vec<Arc<dyn Redeclare>>>,
    generation: watch::Sender<u64>,
    shutdown: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker")
            .field("endpoints", &self.inner.config.endpoints)
            .field("publish", &*self.inner.publish.manager().state.borrow())
            .field("consume", &*self.inner.consume.manager().state.borrow())
            .finish()
    }
}

impl Broker {
    /// Opens the publishing and consuming connections.
    ///
    /// Fails with a distinct error for wrong credentials
    /// ([`Error::AuthenticationFailed`]), a vhost the user may not use
    /// ([`Error::AccessRefused`]), no reachable endpoint
    /// ([`Error::Unreachable`]) and a slow handshake
    /// ([`Error::ConnectTimeout`]). It never waits longer than the connect
    /// timeout per endpoint.
    pub async fn connect(config: BrokerConfig) -> Result<Self> {
        let broker = Self::lazy(config)?;
        drop(broker.connection(Role::Publish).await?);
        drop(broker.connection(Role::Consume).await?);
        Ok(broker)
    }

    /// Like [`connect`](Self::connect), reading the settings from the
    /// environment ([`BrokerConfig::from_env`]).
    pub async fn connect_from_env() -> Result<Self> {
        Self::connect(BrokerConfig::from_env()?).await
    }

    /// Builds the handle without connecting; connections open on first use.
    /// Services that must start while the broker is down (the relay) use this.
    pub fn lazy(config: BrokerConfig) -> Result<Self> {
        let config = Arc::new(config);
        let generation = watch::Sender::new(0u64);
        let shutdown = CancellationToken::new();
        // A caller waits for one connection attempt across every endpoint,
        // never forever.
        let wait = config.reconnect_delay
            + config.connect_timeout * u32::try_from(config.endpoints.len()).unwrap_or(1)
            + std::time::Duration::from_secs(1);
        let pool = |role, size| {
            Pool::builder(ConnectionManager::new(
                config.clone(),
                role,
                generation.clone(),
                shutdown.clone(),
            ))
            .max_size(size)
            .wait_timeout(Some(wait))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| Error::Config(format!("connection pool: {e}")))
        };
        let inner = Arc::new(Inner {
            publish: pool(Role::Publish, config.publish_connections)?,
            consume: pool(Role::Consume, config.consume_connections)?,
            config,
            topologies: Mutex::new(Vec::new()),
            generation,
            shutdown,
        });
        spawn_redeclare(Arc::downgrade(&inner));
        for role in [Role::Publish, Role::Consume] {
            spawn_supervisor(Arc::downgrade(&inner), role);
        }
        Ok(Self { inner })
    }

    /// The settings this broker was built with.
    pub fn config(&self) -> &BrokerConfig {
        &self.inner.config
    }

    /// The current state of one of the connections.
    pub fn state(&self, role: Role) -> ConnectionState {
        self.pool(role).manager().state.borrow().clone()
    }

    /// A receiver that sees every state change of one of the connections.
    pub fn watch_state(&self, role: Role) -> watch::Receiver<ConnectionState> {
        self.pool(role).manager().state.subscribe()
    }

    /// The RabbitMQ version of the node the consuming connection last
    /// connected to, read when it connected. `None` before the first
    /// connection, or when the broker did not say. During a rolling upgrade
    /// the nodes of a cluster differ: this is the one in use.
    pub fn server_version(&self) -> Option<ServerVersion> {
        *self
            .inner
            .consume
            .manager()
            .server_version
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// A counter bumped each time a connection is (re)established. Consumers
    /// and the topology registry use it to act after recovery.
    pub fn watch_reconnects(&self) -> watch::Receiver<u64> {
        self.inner.generation.subscribe()
    }

    fn pool(&self, role: Role) -> &Pool<ConnectionManager> {
        match role {
            Role::Publish => &self.inner.publish,
            Role::Consume => &self.inner.consume,
        }
    }

    async fn connection(&self, role: Role) -> Result<deadpool::managed::Object<ConnectionManager>> {
        self.pool(role).get().await.map_err(|e| match e {
            PoolError::Backend(e) => e,
            PoolError::Timeout(_) => Error::ConnectionLost {
                operation: "connection.open",
                reason: format!(
                    "no connection ({}) within the connect timeout",
                    self.state(role)
                ),
            },
            other => Error::ConnectionLost {
                operation: "connection.open",
                reason: other.to_string(),
            },
        })
    }

    /// Opens a new channel on the connection for `role`.
    pub async fn open_channel(&self, role: Role) -> Result<lapin::Channel> {
        let conn = self.connection(role).await?;
        let timeout = self.inner.config.operation_timeout;
        match tokio::time::timeout(timeout, conn.create_channel()).await {
            // `close` ran meanwhile and may have missed this connection (it
            // was checked out): close both, so nothing publishes on them.
            Ok(Ok(channel)) if self.inner.shutdown.is_cancelled() => {
                let _ = tokio::time::timeout(
                    timeout,
                    channel.close(200, "broker handle closed".into()),
                )
                .await;
                let _ =
                    tokio::time::timeout(timeout, conn.close(200, "broker handle closed".into()))
                        .await;
                Err(manager::closed())
            }
            Ok(Ok(channel)) => Ok(channel),
            Ok(Err(e)) => Err(Error::from_lapin("channel.open", &e)),
            Err(_) => Err(Error::ConnectionLost {
                operation: "channel.open",
                reason: format!("no answer within {timeout:?}"),
            }),
        }
    }

    /// A connection of its own, outside the pools, and a channel on it: for
    /// work that may meet a message lapin cannot parse (reading an error
    /// queue), which would close the connection it runs on. Close the
    /// connection when done.
    pub(crate) async fn open_dedicated(
        &self,
        purpose: &str,
    ) -> Result<(lapin::Connection, lapin::Channel)> {
        let conn = connect::connect_dedicated(&self.inner.config, purpose).await?;
        let timeout = self.inner.config.operation_timeout;
        match tokio::time::timeout(timeout, conn.create_channel()).await {
            Ok(Ok(channel)) => Ok((conn, channel)),
            Ok(Err(e)) => Err(Error::from_lapin("channel.open", &e)),
            Err(_) => Err(Error::ConnectionLost {
                operation: "channel.open",
                reason: format!("no answer within {timeout:?}"),
            }),
        }
    }

    /// Opens a channel like [`open_channel`](Self::open_channel), and tells
    /// the frame size negotiated on its connection.
    pub(crate) async fn open_channel_with_frame_max(
        &self,
        role: Role,
    ) -> Result<(lapin::Channel, u32)> {
        let frame_max = self.connection(role).await?.configuration().frame_max();
        Ok((self.open_channel(role).await?, frame_max))
    }

    /// Registers something to declare again after every reconnect, once:
    /// an equal one registered before is not added twice. True when it was
    /// not registered yet.
    pub(crate) fn register_redeclare(&self, item: Arc<dyn Redeclare>) -> bool {
        let mut registry = self
            .inner
            .topologies
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let new = !registry.iter().any(|known| known.same_as(item.as_any()));
        if new {
            registry.push(item);
        }
        new
    }

    /// Stops declaring `item` again after reconnects (what
    /// [`register_redeclare`](Self::register_redeclare) registered).
    pub(crate) fn unregister_redeclare(&self, item: &dyn std::any::Any) {
        self.inner
            .topologies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|known| !known.same_as(item));
    }

    pub(crate) fn operation_timeout(&self) -> std::time::Duration {
        self.inner.config.operation_timeout
    }
}

/// The future of [`Redeclare::redeclare`].
pub(crate) type RedeclareFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'a>>;

/// Something declared on the broker that must be declared again after a
/// reconnect: the topology implements it (in `topology`, which depends on
/// this module, never the other way round).
pub(crate) trait Redeclare: Send + Sync + 'static {
    /// Declares it again.
    fn redeclare<'a>(&'a self, broker: &'a Broker) -> RedeclareFuture<'a>;
    /// True when `other` is the same declaration.
    fn same_as(&self, other: &dyn std::any::Any) -> bool;
    /// Itself, for [`same_as`](Self::same_as).
    fn as_any(&self) -> &dyn std::any::Any;
}

/// Replaces a lost connection, so that it comes back even when nothing is
/// using it at that moment: on `Reconnecting` (set by the connection's
/// watcher the moment it is lost), the dead connection leaves the pool and
/// new ones are opened, rotating endpoints, until one answers. Each attempt
/// is bounded by the connect timeout per endpoint, so nothing stays stuck
/// reconnecting. Only after a first successful connect: a broker that was
/// never reached is the caller's to report.
fn spawn_supervisor(inner: std::sync::Weak<Inner>, role: Role) {
    let Some(strong) = inner.upgrade() else {
        return;
    };
    let pool = move |i: &Inner| match role {
        Role::Publish => i.publish.clone(),
        Role::Consume => i.consume.clone(),
    };
    let mut state = pool(&strong).manager().state.subscribe();
    let shutdown = strong.shutdown.clone();
    drop(strong);
    tokio::spawn(async move {
        let mut ever_connected = false;
        loop {
            let current = state.borrow_and_update().clone();
            match current {
                ConnectionState::Connected => ever_connected = true,
                ConnectionState::Reconnecting | ConnectionState::Closed if ever_connected => {
                    if !reconnect(&inner, pool, &shutdown, role).await {
                        return;
                    }
                    continue;
                }
                _ => {}
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = state.changed() => if changed.is_err() { return },
            }
        }
    });
}

/// Opens a new connection for `role` until one answers. False when the
/// broker handle is gone or shut down.
async fn reconnect(
    inner: &std::sync::Weak<Inner>,
    pool: impl Fn(&Inner) -> Pool<ConnectionManager>,
    shutdown: &CancellationToken,
    role: Role,
) -> bool {
    let mut backoff = Backoff::new(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(2),
    );
    loop {
        let Some(strong) = inner.upgrade() else {
            return false;
        };
        let pool = pool(&strong);
        drop(strong);
        // Drop the dead connections first, so that no caller is handed one.
        pool.retain(|conn, _| conn.status().connected());
        let result = tokio::select! {
            () = shutdown.cancelled() => return false,
            r = pool.get() => r,
        };
        let manager = pool.manager();
        match result {
            Ok(conn) if conn.status().connected() => {
                drop(conn);
                // A connection that was already up (several per role) does
                // not go through `create`, which sets the state.
                if !manager.state.borrow().is_connected() {
                    manager.state.send_replace(ConnectionState::Connected);
                }
                return true;
            }
            Ok(_) => {}
            Err(error) => {
                let now = std::time::Instant::now();
                let (due, since) = {
                    let mut outage = manager.outage.lock().unwrap_or_else(|p| p.into_inner());
                    (outage.attempt_failed(now), outage.since())
                };
                if let Some(suppressed) = due {
                    let down_for = since.map_or(std::time::Duration::ZERO, |s| {
                        now.saturating_duration_since(s)
                    });
                    tracing::warn!(
                        role = role.as_str(),
                        connection = manager.connection_name(),
                        %error,
                        ?down_for,
                        suppressed,
                        "rabbitry still reconnecting; check that a broker node is up and reachable from here"
                    );
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// Declares every registered topology again after each reconnect. lapin
/// replays what was declared on a recovered connection, but not on a fresh
/// one that rabbitry opened after lapin gave up, nor queues that were
/// deleted while the connection was down.
fn spawn_redeclare(inner: std::sync::Weak<Inner>) {
    let Some(strong) = inner.upgrade() else {
        return;
    };
    let mut generation = strong.generation.subscribe();
    let shutdown = strong.shutdown.clone();
    drop(strong);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = generation.changed() => if changed.is_err() { return },
            }
            let Some(inner) = inner.upgrade() else { return };
            let broker = Broker { inner };
            let topologies = broker
                .inner
                .topologies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            for topology in &topologies {
                if let Err(error) = topology.redeclare(&broker).await {
                    tracing::error!(
                        %error,
                        "declaring a topology again after reconnect failed; tried again after the next reconnect (consumers declare theirs when they subscribe)"
                    );
                }
            }
            if !topologies.is_empty() {
                tracing::info!(
                    count = topologies.len(),
                    "topology declared again after reconnect"
                );
            }
        }
    });
}
