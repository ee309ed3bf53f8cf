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

    /// Deletes `queue` at the end, with what a consumer with the default
    /// retry policy declares beside it (retry queues, `.dlq`, `.dlx`).
    pub fn consumer_queue(&mut self, queue: &str) -> &mut Self {
        self.queue(queue);
        for retry_queue in rabbitry_core::RetryPolicy::default().retry_queues(queue) {
            self.queue(retry_queue);
        }
        self
    }

    /// Deletes `exchange` at the end.
    pub fn exchange(&mut self, exchange: impl Into<String>) -> &mut Self {
        self.exchanges.push(exchange.into());
        self
    }

    /// Deletes everything now.
    pub async fn cleanup(&mut self) {
        self.cleanup_at(services().amqp_url()).await;
    }

    /// Deletes everything now, on the broker at `amqp_url` (a cluster's
    /// node, say) instead of the one under test.
    pub async fn cleanup_at(&mut self, amqp_url: &str) {
        let queues = std::mem::take(&mut self.queues);
        let exchanges = std::mem::take(&mut self.exchanges);
        delete(amqp_url, queues, exchanges).await;
    }
}

async fn delete(amqp_url: &str, queues: Vec<String>, exchanges: Vec<String>) {
    if queues.is_empty() && exchanges.is_empty() {
        return;
    }
    let Ok(conn) = Connection::connect(amqp_url, ConnectionProperties::default()).await else {
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
                rt.block_on(delete(services().amqp_url(), queues, exchanges));
            }
        })
        .join();
    }
}

/// Runs `rabbitmqctl` with `args` against the node under test (the one
/// `AMQP_URL` points at) and returns its standard output.
///
/// Which command drives that node:
/// - `RABBITRY_RABBITMQCTL`, when set: a command line that takes
///   `rabbitmqctl`'s arguments (split on whitespace), e.g.
///   `docker exec rabbitmq rabbitmqctl`;
/// - `scripts/rabbitmq4.sh ctl` when the broker is the RabbitMQ 4 node that
///   script runs (local, on `RABBITMQ4_PORT`, 5700 by default);
/// - `rabbitmqctl` when the broker is local on 5672, the default node;
/// - otherwise none: the test fails rather than drive another node.
///
/// # Panics
/// When no command is known for the broker, or it fails: the message says
/// which.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let command = ctl_command(&services().amqp_addr());
    let (program, prefix) = command
        .split_first()
        .expect("a rabbitmqctl command is never empty");
    let out = Command::new(program)
        .args(prefix)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "this test drives the broker with `{}`, which did not run: {e}",
                command.join(" ")
            )
        });
    assert!(
        out.status.success(),
        "{} {} failed: {}",
        command.join(" "),
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The command that drives the broker at `addr` (`host:port`).
fn ctl_command(addr: &str) -> Vec<String> {
    if let Ok(cmd) = std::env::var("RABBITRY_RABBITMQCTL") {
        let words: Vec<String> = cmd.split_whitespace().map(str::to_owned).collect();
        if !words.is_empty() {
            return words;
        }
    }
    let rabbitmq4_port = std::env::var("RABBITMQ4_PORT")
        .ok()
        .and_then(|p| p.trim().parse::<u16>().ok())
        .unwrap_or(5700);
    let (host, port) = addr.rsplit_once(':').unwrap_or((addr, ""));
    let local = matches!(host, "127.0.0.1" | "localhost" | "[::1]");
    match port.parse::<u16>() {
        Ok(5672) if local => vec!["rabbitmqctl".to_owned()],
        Ok(p) if local && p == rabbitmq4_port => vec![
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/rabbitmq4.sh").to_owned(),
            "ctl".to_owned(),
        ],
        _ => panic!(
            "this test drives the broker at {addr} with rabbitmqctl, and does not know how to \
             reach that node: set RABBITRY_RABBITMQCTL to a command that does \
             (e.g. `docker exec rabbitmq rabbitmqctl`)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::ctl_command;

    #[test]
    fn the_command_follows_the_broker_under_test() {
        if std::env::var_os("RABBITRY_RABBITMQCTL").is_some() {
            return;
        }
        assert_eq!(ctl_command("127.0.0.1:5672"), ["rabbitmqctl"]);
        let four = ctl_command("127.0.0.1:5700");
        assert!(four[0].ends_with("scripts/rabbitmq4.sh"), "{four:?}");
        assert_eq!(four[1], "ctl");
        let other = std::panic::catch_unwind(|| ctl_command("10.0.0.9:5672"));
        assert!(
            other.is_err(),
            "a remote node is never driven by the local rabbitmqctl"
        );
    }
}
