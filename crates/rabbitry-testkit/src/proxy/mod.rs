//! A TCP proxy that injects network faults between a client and a service
//! (RabbitMQ, Redis, Postgres: it is plain TCP).
//!
//! - `mod.rs`: [`FaultProxy`], the switches a test flips;
//! - `link.rs`: one proxied connection, which obeys them;
//! - `tests.rs`: each mode against a local echo server.

mod link;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A proxy in front of one upstream address, with these modes:
///
/// - **pass** (the start): bytes flow both ways.
/// - **reset** ([`reset`](Self::reset)): every live connection is reset
///   (TCP RST) at once; new connections are accepted and flow.
/// - **down** ([`set_down`](Self::set_down), [`cut_for`](Self::cut_for)):
///   live connections are reset and new ones refused (accepted, then reset
///   at once): a service that went away.
/// - **blackhole** ([`set_blackhole`](Self::set_blackhole)): connections
///   stay open, new ones are accepted, and nothing is forwarded either way:
///   a client's writes succeed and its reads wait forever, as on a half-open
///   connection or a partition. Only heartbeats or timeouts notice. Ending
///   it resets the connections it held (a real half-open connection is dead
///   once the network heals) and lets new ones through.
/// - **latency** ([`set_latency`](Self::set_latency)): every chunk is
///   delivered that much later, in both directions, without limiting
///   throughput.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    controls: Arc<Controls>,
    task: JoinHandle<()>,
}

/// The switches, shared by the proxy and its links.
#[derive(Debug)]
struct Controls {
    down: AtomicBool,
    /// Bumped by every `set_down`, so that a `cut_for` timer does not undo a
    /// later, explicit change.
    down_epoch: AtomicU64,
    blackhole: watch::Sender<bool>,
    /// Bumped to reset every live connection.
    cut: watch::Sender<u64>,
    latency_us: AtomicU64,
    live: AtomicUsize,
    accepted: AtomicU64,
}

impl Controls {
    fn latency(&self) -> Duration {
        Duration::from_micros(self.latency_us.load(Ordering::Relaxed))
    }
    fn cut_all(&self) {
        self.cut.send_modify(|g| *g += 1);
    }
}

impl FaultProxy {
    /// Starts a proxy on 127.0.0.1 (a free port) forwarding to `upstream`
    /// (`host:port`).
    ///
    /// # Panics
    /// When no local port can be bound.
    pub async fn start(upstream: impl Into<String>) -> Self {
        let upstream = upstream.into();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a local port");
        let addr = listener.local_addr().expect("local address");
        let controls = Arc::new(Controls {
            down: AtomicBool::new(false),
            down_epoch: AtomicU64::new(0),
            blackhole: watch::channel(false).0,
            cut: watch::channel(0).0,
            latency_us: AtomicU64::new(0),
            live: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, upstream, controls.clone()));
        Self {
            addr,
            controls,
            task,
        }
    }

    /// The proxy's own address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections open through the proxy now.
    pub fn live_connections(&self) -> usize {
        self.controls.live.load(Ordering::SeqCst)
    }

    /// Connections accepted since the start (refused ones included).
    pub fn accepted(&self) -> u64 {
        self.controls.accepted.load(Ordering::SeqCst)
    }

    /// Back to plain forwarding: up, no blackhole, no latency.
    pub fn pass(&self) {
        self.set_down(false);
        self.set_blackhole(false);
        self.set_latency(Duration::ZERO);
    }

    /// Resets every live connection now; new connections are accepted.
    pub fn reset(&self) {
        self.controls.cut_all();
    }

    /// Resets every open connection and refuses new ones (`true`), or lets
    /// connections through again (`false`).
    pub fn set_down(&self, down: bool) {
        self.controls.down_epoch.fetch_add(1, Ordering::SeqCst);
        self.controls.down.store(down, Ordering::SeqCst);
        if down {
            self.controls.cut_all();
        }
    }

    /// Down for `period`, then up again (unless the test changed the mode
    /// meanwhile). Returns at once.
    pub fn cut_for(&self, period: Duration) {
        self.set_down(true);
        let epoch = self.controls.down_epoch.load(Ordering::SeqCst);
        let controls = self.controls.clone();
        tokio::spawn(async move {
            tokio::time::sleep(period).await;
            if controls.down_epoch.load(Ordering::SeqCst) == epoch {
                controls.down.store(false, Ordering::SeqCst);
            }
        });
    }

    /// Stops forwarding anything on open and new connections, without
    /// closing them (`true`); or resets the connections held that way and
    /// forwards again (`false`).
    pub fn set_blackhole(&self, on: bool) {
        let was = self.controls.blackhole.send_replace(on);
        if was && !on {
            self.controls.cut_all();
        }
    }

    /// Delays every chunk by `latency`, both ways (zero: no delay).
    pub fn set_latency(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.controls.latency_us.store(us, Ordering::Relaxed);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.set_down(true);
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, upstream: String, controls: Arc<Controls>) {
    while let Ok((client, _)) = listener.accept().await {
        controls.accepted.fetch_add(1, Ordering::SeqCst);
        if controls.down.load(Ordering::SeqCst) {
            link::abort(client);
            continue;
        }
        tokio::spawn(link::serve(client, upstream.clone(), controls.clone()));
    }
}
