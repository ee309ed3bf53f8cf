//! Each mode, against an echo server on 127.0.0.1.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::FaultProxy;

/// An echo server; returns its `host:port`.
async fn echo_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Sends `ping` and reads the echo, within `limit`: `Some(true)` when it
/// came back, `Some(false)` when the connection ended or failed, `None` when
/// nothing came in time.
async fn ping(s: &mut TcpStream, limit: Duration) -> Option<bool> {
    if s.write_all(b"ping").await.is_err() {
        return Some(false);
    }
    let mut buf = [0u8; 4];
    match tokio::time::timeout(limit, s.read_exact(&mut buf)).await {
        Ok(Ok(_)) => Some(&buf == b"ping"),
        Ok(Err(_)) => Some(false),
        Err(_) => None,
    }
}

async fn connect(proxy: &FaultProxy) -> TcpStream {
    TcpStream::connect(proxy.addr()).await.expect("connect")
}

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn pass_forwards_both_ways() {
    let proxy = FaultProxy::start(echo_server().await).await;
    let mut a = connect(&proxy).await;
    let mut b = connect(&proxy).await;
    assert_eq!(ping(&mut a, WAIT).await, Some(true));
    assert_eq!(ping(&mut b, WAIT).await, Some(true));
    assert_eq!(proxy.live_connections(), 2);
    drop(a);
    assert!(crate::eventually(WAIT, || async { proxy.live_connections() == 1 }).await);
}

#[tokio::test]
async fn reset_ends_live_connections_and_accepts_new_ones() {
    let proxy = FaultProxy::start(echo_server().await).await;
    let mut old = connect(&proxy).await;
    assert_eq!(ping(&mut old, WAIT).await, Some(true));
    proxy.reset();
    assert_eq!(ping(&mut old, WAIT).await, Some(false), "the old one ended");
    let mut new = connect(&proxy).await;
    assert_eq!(ping(&mut new, WAIT).await, Some(true), "a new one flows");
}

#[tokio::test]
async fn cut_for_refuses_connections_for_the_period_only() {
    let proxy = FaultProxy::start(echo_server().await).await;
    let mut old = connect(&proxy).await;
    assert_eq!(ping(&mut old, WAIT).await, Some(true));
    proxy.cut_for(Duration::from_millis(800));
    assert_eq!(ping(&mut old, WAIT).await, Some(false));
    let mut refused = connect(&proxy).await;
    assert_eq!(
        ping(&mut refused, WAIT).await,
        Some(false),
        "refused while cut"
    );
    let back = crate::eventually(WAIT, || async {
        let mut s = connect(&proxy).await;
        ping(&mut s, WAIT).await == Some(true)
    })
    .await;
    assert!(back, "connections flow again after the period");
}

#[tokio::test]
async fn a_later_set_down_outlives_an_earlier_cut_for() {
    let proxy = FaultProxy::start(echo_server().await).await;
    proxy.cut_for(Duration::from_millis(100));
    proxy.set_down(true);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut s = connect(&proxy).await;
    assert_eq!(ping(&mut s, WAIT).await, Some(false), "still down");
    proxy.pass();
    let mut s = connect(&proxy).await;
    assert_eq!(ping(&mut s, WAIT).await, Some(true));
}

#[tokio::test]
async fn blackhole_holds_connections_silent_then_resets_them() {
    let proxy = FaultProxy::start(echo_server().await).await;
    let mut old = connect(&proxy).await;
    assert_eq!(ping(&mut old, WAIT).await, Some(true));
    proxy.set_blackhole(true);
    let short = Duration::from_millis(300);
    assert_eq!(ping(&mut old, short).await, None, "no answer, no close");
    let mut during = connect(&proxy).await;
    assert_eq!(
        ping(&mut during, short).await,
        None,
        "accepted, never answered"
    );
    proxy.set_blackhole(false);
    assert_eq!(
        ping(&mut old, WAIT).await,
        Some(false),
        "reset when it ends"
    );
    assert_eq!(ping(&mut during, WAIT).await, Some(false));
    let mut new = connect(&proxy).await;
    assert_eq!(ping(&mut new, WAIT).await, Some(true));
}

#[tokio::test]
async fn latency_delays_each_direction() {
    let proxy = FaultProxy::start(echo_server().await).await;
    let mut s = connect(&proxy).await;
    assert_eq!(ping(&mut s, WAIT).await, Some(true));
    proxy.set_latency(Duration::from_millis(150));
    let started = Instant::now();
    assert_eq!(ping(&mut s, WAIT).await, Some(true));
    // 150 ms on the way there and 150 ms back: the added delay, not a speed.
    assert!(started.elapsed() >= Duration::from_millis(300));
    proxy.pass();
    assert_eq!(ping(&mut s, WAIT).await, Some(true));
}
