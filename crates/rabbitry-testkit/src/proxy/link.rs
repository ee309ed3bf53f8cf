//! One connection through the proxy: forwards both ways, delayed by the
//! latency setting, until the proxy resets it or blackholes it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Controls;

/// Closes `stream` with a TCP RST (no FIN handshake): what a peer sees from
/// a crashed process or a middlebox that dropped the connection.
pub(super) fn abort(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// How forwarding stopped.
enum End {
    /// One side closed or failed: close the other normally.
    Closed,
    /// The proxy reset every connection.
    Cut,
    /// The proxy went silent: hold both sockets until it resets them.
    Blackholed,
}

/// Counts the connection as live while it exists.
struct Live<'a>(&'a Controls);

impl Drop for Live<'_> {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(super) async fn serve(client: TcpStream, upstream: String, controls: Arc<Controls>) {
    controls.live.fetch_add(1, Ordering::SeqCst);
    let _live = Live(&controls);
    let mut cut = controls.cut.subscribe();
    let mut blackhole = controls.blackhole.subscribe();
    // A connection accepted during a blackhole waits, unanswered, until the
    // blackhole ends (and is then reset, like the others).
    if *blackhole.borrow_and_update() {
        let _ = cut.changed().await;
        abort(client);
        return;
    }
    let server = tokio::select! {
        s = TcpStream::connect(&upstream) => s,
        _ = cut.changed() => return abort(client),
    };
    let Ok(mut server) = server else {
        return abort(client);
    };
    let mut client = client;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let end = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        tokio::select! {
            () = pump(client_read, server_write, &controls) => End::Closed,
            () = pump(server_read, client_write, &controls) => End::Closed,
            _ = cut.changed() => End::Cut,
            _ = blackhole.wait_for(|on| *on) => End::Blackholed,
        }
    };
    match end {
        End::Closed => {}
        End::Cut => {
            abort(client);
            abort(server);
        }
        End::Blackholed => {
            let _ = cut.changed().await;
            abort(client);
            abort(server);
        }
    }
}

/// Copies `from` to `to`, each chunk written `latency` after it was read.
/// Reading runs ahead of the delayed writes, so latency does not limit
/// throughput. Returns when either side closes or fails.
async fn pump<R, W>(mut from: R, mut to: W, controls: &Controls)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(1024);
    let read = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let due = Instant::now() + controls.latency();
            if tx.send((due, buf[..n].to_vec())).await.is_err() {
                return;
            }
        }
    };
    let write = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::pin!(read, write);
    tokio::select! {
        // The reader ended: deliver what it read, then stop.
        () = &mut read => (&mut write).await,
        () = &mut write => {}
    }
}
