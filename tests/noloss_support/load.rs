//! The producer: publishes numbered messages in pipelined batches and
//! writes each one's fate in the ledger.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rabbitry::{Message, PublishOutcome, Publisher};
use tokio_util::sync::CancellationToken;

use super::ledger::{Ledger, Outcome};

/// A running producer.
pub struct Load {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    sent: Arc<AtomicU64>,
}

impl Load {
    /// Messages handed to `publish` so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    /// Stops sending new batches and waits (bounded) for the batch in hand.
    pub async fn stop(self) {
        self.stop.cancel();
        self.finish(Duration::from_secs(60)).await;
    }

    /// Waits (up to `limit`) for the producer to send all it was asked to.
    pub async fn finish(self, limit: Duration) {
        tokio::time::timeout(limit, self.task)
            .await
            .expect("the producer finished in time")
            .expect("the producer did not panic");
    }
}

/// Publishes `total` messages to `queue` (through the default exchange), in
/// batches of `batch` sent concurrently, pausing `pause` between batches.
pub fn produce(
    publisher: Publisher,
    queue: &str,
    ledger: Arc<Ledger>,
    total: u64,
    batch: usize,
    pause: Duration,
) -> Load {
    let stop = CancellationToken::new();
    let sent = Arc::new(AtomicU64::new(0));
    let task = {
        let (stop, sent, queue) = (stop.clone(), sent.clone(), queue.to_owned());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let first = sent.load(Ordering::SeqCst);
                if first >= total {
                    return;
                }
                let n = (total - first).min(batch as u64);
                let messages: Vec<Message> = (first..first + n)
                    .map(|seq| Message::bytes("", &queue, seq.to_string()))
                    .collect();
                for m in &messages {
                    ledger.sent(m.id());
                }
                sent.fetch_add(n, Ordering::SeqCst);
                let calls = messages.into_iter().map(|m| {
                    let (publisher, ledger) = (publisher.clone(), ledger.clone());
                    async move {
                        let id = m.id().to_owned();
                        let outcome = match publisher.publish(m).await {
                            Ok(PublishOutcome::Confirmed) => Outcome::Confirmed,
                            Ok(_) => Outcome::Deferred,
                            Err(_) => Outcome::Failed,
                        };
                        ledger.outcome(&id, outcome);
                    }
                });
                futures_util::future::join_all(calls).await;
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
        })
    };
    Load { stop, task, sent }
}
