//! Broker-side helpers: cleanup and `rabbitmqctl`.

use std::process::Command;

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};

use crate::services;

/// Deletes the queues and exchanges a test created, when dropped (or when
/// [`cleanup`](Self::cleanup) is awaited).
#[derive(Debug, Default)]
pub struct BrokerCleanup {
    queues: Vec<String>,
    exchanges: Vec<String>,
}

impl BrokerCleanup {
    /// Nothing to clean yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Deletes `queue` at the end, with its conventional `.dlq`.
    pub fn queue(&mut self, queue: impl Into<String>) -> &mut Self {
        let queue = queue.into();
        self.queues.push(format!("{queue}.dlq"));
        self.exchanges.push(format!("{queue}.dlx"));
        self.queues.push(queue);
        self
    }

    /// Deletes `exchange` at the end.
    pub fn exchange(&mut self, exchange: impl Into<String>) -> &mut Self {
        self.exchanges.push(exchange.into());
        self
    }

    /// Deletes everything now.
    pub async fn cleanup(&mut self) {
        let queues = std::mem::take(&mut self.queues);
        let exchanges = std::mem::take(&mut self.exchanges);
        delete(queues, exchanges).await;
    }
}

async fn delete(queues: Vec<String>, exchanges: Vec<String>) {
    if queues.is_empty() && exchanges.is_empty() {
        return;
    }
    let Ok(conn) =
        Connection::connect(services().amqp_url(), ConnectionProperties::default()).await
    else {
        return;
    };
    // Each delete gets its own channel: deleting a missing exchange closes it.
    for q in queues {
        if let Ok(ch) = conn.create_channel().await {
            let _ = ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
    for e in exchanges {
        if let Ok(ch) = conn.create_channel().await {
            let _ = ch
                .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
    }
    let _ = conn.close(200, "test cleanup".into()).await;
}

impl Drop for BrokerCleanup {
    fn drop(&mut self) {
        let queues = std::mem::take(&mut self.queues);
        let exchanges = std::mem::take(&mut self.exchanges);
        if queues.is_empty() && exchanges.is_empty() {
            return;
        }
        // Drop cannot await: clean up on a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(delete(queues, exchanges));
            }
        })
        .join();
    }
}

/// Runs `rabbitmqctl` with `args` and returns its standard output.
///
/// # Panics
/// When `rabbitmqctl` is missing or fails: the message says which.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("this test needs rabbitmqctl on PATH next to the broker: {e}"));
    assert!(
        out.status.success(),
        "rabbitmqctl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
