//! A small HTTP endpoint for health checks and Prometheus metrics.
//!
//! Three routes: `/healthz` (the process is alive), `/readyz` (Postgres
//! answers and the broker connection is up), `/metrics` (Prometheus text).

use std::net::SocketAddr;
use std::sync::Arc;

use rabbitry_core::{Broker, Role};
use rabbitry_postgres::{OutboxStore, Relay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub(crate) struct State {
    pub(crate) relay: Relay,
    pub(crate) store: OutboxStore,
    pub(crate) broker: Broker,
}

pub(crate) async fn serve(addr: SocketAddr, state: Arc<State>) -> std::io::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    Ok(tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let state = state.clone();
            tokio::spawn(async move {
                if let Err(error) = handle(stream, &state).await {
                    tracing::debug!(%error, "metrics request failed");
                }
            });
        }
    }))
}

async fn handle(mut stream: TcpStream, state: &State) -> std::io::Result<()> {
    let mut buf = [0u8; 2048];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("read timeout"))??;
    let request = String::from_utf8_lossy(&buf[..n]);
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = match path {
        "/healthz" => ("200 OK", "ok\n".to_owned()),
        "/readyz" => ready(state).await,
        "/metrics" => ("200 OK", crate::prom::render(state).await),
        _ => ("404 Not Found", "not found\n".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

async fn ready(state: &State) -> (&'static str, String) {
    let db = state.store.check_migrated().await;
    let broker = state.broker.state(Role::Publish);
    match (&db, broker.is_connected()) {
        (Ok(()), true) => ("200 OK", "ready\n".to_owned()),
        _ => (
            "503 Service Unavailable",
            format!(
                "postgres: {}\nbroker: {broker}\n",
                db.as_ref().map_or_else(|e| e.to_string(), |()| "ok".into())
            ),
        ),
    }
}
