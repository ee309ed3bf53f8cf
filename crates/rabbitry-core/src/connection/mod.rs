//! Connections: one pool for publishing, one for consuming, with state you
//! can watch and a topology registry that is declared again after recovery.

mod manager;
mod state;

use std::fmt;
use std::sync::{Arc, Mutex};

use deadpool::managed::{Pool, PoolError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::manager::ConnectionManager;
pub use self::state::{ConnectionState, Role};
use crate::config::BrokerConfig;
use crate::error::{Error, Result};
use crate::topology::Topology;

/// A handle to a RabbitMQ cluster: separate publishing and consuming
/// connections, opened across the configured endpoints, with lapin's
/// auto-recovery on.
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
    topologies: Mutex<Vec<Topology>>,
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
        let pool = |role, size| {
            Pool::builder(ConnectionManager::new(
                config.clone(),
                role,
                generation.clone(),
            )?)
            .max_size(size)
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
            shutdown: CancellationToken::new(),
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
            PoolError::Timeout(_) => Error::ConnectTimeout {
                endpoint: "pool".into(),
                timeout: self.inner.config.connect_timeout,
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
            Ok(Ok(channel)) => Ok(channel),
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

    /// Declares `topology` now and registers it, so that it is declared
    /// again after every reconnect. Declaring is idempotent.
    pub async fn declare(&self, topology: &Topology) -> Result<()> {
        topology.declare_on(self).await?;
        let mut registry = self
            .inner
            .topologies
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !registry.contains(topology) {
            registry.push(topology.clone());
        }
        Ok(())
    }

    /// Closes both connections. Pending confirms fail; use the publisher's
    /// and consumer's own shutdown first to drain them.
    pub async fn close(&self) {
        self.inner.shutdown.cancel();
        for pool in [&self.inner.publish, &self.inner.consume] {
            pool.close();
        }
    }

    pub(crate) fn operation_timeout(&self) -> std::time::Duration {
        self.inner.config.operation_timeout
    }
}

/// Reopens a connection that closed for good (lapin's recovery gave up, or
/// the broker refused recovery), so that the connection comes back even when
/// nothing is using it at that moment. Only after a first successful connect:
/// a broker that was never reached is the caller's to report.
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
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = state.changed() => if changed.is_err() { return },
            }
            let current = state.borrow_and_update().clone();
            match current {
                ConnectionState::Connected => ever_connected = true,
                ConnectionState::Closed if ever_connected => {
                    let mut delay = std::time::Duration::from_millis(200);
                    loop {
                        let Some(inner) = inner.upgrade() else { return };
                        let result = pool(&inner).get().await;
                        drop(inner);
                        match result {
                            Ok(_) => break,
                            Err(error) => {
                                tracing::warn!(role = role.as_str(), %error, ?delay, "reconnect failed; retrying");
                                tokio::select! {
                                    () = shutdown.cancelled() => return,
                                    () = tokio::time::sleep(delay) => {}
                                }
                                delay = (delay * 2).min(std::time::Duration::from_secs(10));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    });
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
                if let Err(error) = topology.declare_on(&broker).await {
                    tracing::error!(%error, "declaring the topology again after reconnect failed");
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
