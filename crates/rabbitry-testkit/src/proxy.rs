//! A TCP proxy that can cut and refuse connections, to simulate a broker
//! that goes away and comes back, or blackhole them, to simulate a peer
//! that stops answering (a half-open connection, a network partition).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A proxy in front of one upstream address.
///
/// While down, it closes every open connection and drops new ones at once,
/// which a client sees as a broker that went away.
///
/// While blackholed, it keeps every connection open, accepts new ones, and
/// forwards nothing in either direction: a client's writes succeed and its
/// reads wait forever, as on a half-open connection. Ending the blackhole
/// closes the connections it held (a real half-open connection is dead once
/// the network heals) and lets new ones through again.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    down: Arc<AtomicBool>,
    blackhole: watch::Sender<bool>,
    cut: watch::Sender<u64>,
    task: JoinHandle<()>,
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
        let down = Arc::new(AtomicBool::new(false));
        let (cut, _) = watch::channel(0u64);
        let (blackhole, _) = watch::channel(false);
        let task = tokio::spawn(accept_loop(
            listener,
            upstream,
            down.clone(),
            blackhole.clone(),
            cut.clone(),
        ));
        Self {
            addr,
            down,
            blackhole,
            cut,
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

    /// Cuts every open connection and refuses new ones (`true`), or lets
    /// connections through again (`false`).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            self.cut.send_modify(|g| *g += 1);
        }
    }
}

impl FaultProxy {
    /// Stops forwarding anything on open and new connections, without
    /// closing them (`true`); or closes the connections held that way and
    /// forwards again (`false`).
    pub fn set_blackhole(&self, on: bool) {
        let was = self.blackhole.send_replace(on);
        if was && !on {
            self.cut.send_modify(|g| *g += 1);
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.set_down(true);
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: String,
    down: Arc<AtomicBool>,
    blackhole: watch::Sender<bool>,
    cut: watch::Sender<u64>,
) {
    while let Ok((client, _)) = listener.accept().await {
        if down.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let upstream = upstream.clone();
        let mut cut = cut.subscribe();
        let mut blackhole = blackhole.subscribe();
        tokio::spawn(async move {
            // A connection accepted during a blackhole waits, unanswered,
            // until the blackhole ends (and is then closed, like the others).
            if *blackhole.borrow_and_update() {
                let _ = cut.changed().await;
                return;
            }
            let Ok(server) = TcpStream::connect(&upstream).await else {
                return;
            };
            let (mut client, mut server) = (client, server);
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
                _ = cut.changed() => return,
                _ = blackhole.wait_for(|on| *on) => {}
            }
            // Blackholed: hold both sockets open, move nothing, until cut.
            let _ = cut.changed().await;
            drop((client, server));
        });
    }
}
