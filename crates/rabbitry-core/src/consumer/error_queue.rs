//! The error queue, for the person who handles what the consumer gave up
//! on: list the failures with their headers (a peek that leaves the queue
//! as it was: `peek`), replay them to where they were first published, or
//! purge them.

mod failed;
mod peek;

use std::future::Future;

use lapin::options::{BasicAckOptions, BasicGetOptions, QueuePurgeOptions};

use self::failed::origin;
pub use self::failed::{ErrorFilter, FailedMessage};
pub use self::peek::{DEFAULT_SCAN, ListQuery, Listing};
use super::delivery::{
    ATTEMPTS_MADE_HEADER, COUNTED_IN_HEADER, REDELIVERIES_HEADER, RETRIES_HEADER,
    properties_from_amqp,
};
use super::republish::headers;
use crate::bounded::{bounded, close_channel};
use crate::connection::{Broker, Role};
use crate::error::{Error, Result};
use crate::header::HeaderValue;
use crate::message::Message;
use crate::publisher::Publisher;

/// What a replay did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayReport {
    /// Messages republished (confirmed) and removed from the error queue.
    pub replayed: usize,
    /// Messages left in place: their origin is unknown, republishing failed,
    /// or (once, then the replay stops) the copy could not be removed after
    /// it was republished because the channel was lost: it will be replayed
    /// again, a duplicate that idempotent consumers absorb.
    pub skipped: usize,
    /// Messages read but left in place because they did not pass the
    /// filter of [`ErrorQueue::replay_where`].
    pub not_matching: usize,
}

/// Runs a read on `channel`, failing at once when its connection is lost
/// meanwhile (lapin resolves neither a get nor a consumer's next delivery
/// then) rather than at the operation timeout.
async fn until_lost<T>(
    channel: &lapin::Channel,
    operation: &'static str,
    read: impl Future<Output = Result<T>>,
) -> Result<T> {
    let lost = async {
        while channel.status().connected() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        got = read => got,
        () = lost => Err(Error::ConnectionLost {
            operation,
            reason: "the connection closed while reading".into(),
        }),
    }
}

/// An error (dead-letter) queue: `<queue>.dlq` by the topology's convention.
#[derive(Clone, Debug)]
pub struct ErrorQueue {
    broker: Broker,
    queue: String,
}

/// A read that failed because the connection was lost: most likely a copy
/// lapin cannot parse, which only rabbitry's rescue can read.
fn unreadable(error: Error) -> Error {
    match error {
        Error::ConnectionLost { operation, reason } => Error::ConnectionLost {
            operation,
            reason: format!(
                "{reason} (if the error queue holds a message lapin cannot parse, read it with another client: see docs/foreign-messages.md)"
            ),
        },
        other => other,
    }
}

impl ErrorQueue {
    /// The error queue named `queue`.
    pub fn new(broker: Broker, queue: impl Into<String>) -> Self {
        Self {
            broker,
            queue: queue.into(),
        }
    }

    fn queue_name(&self) -> Result<lapin::types::ShortString> {
        crate::wire::check_name("queue name", &self.queue).map_err(Error::Config)?;
        Ok(self.queue.as_str().into())
    }

    /// Takes the next message, unacknowledged.
    async fn get(
        &self,
        channel: &lapin::Channel,
    ) -> Result<Option<lapin::message::BasicGetMessage>> {
        let get = bounded(
            self.broker.operation_timeout(),
            "basic.get",
            channel.basic_get(self.queue_name()?, BasicGetOptions::default()),
        );
        until_lost(channel, "basic.get", get).await
    }

    /// The first `limit` messages, without removing or reordering
    /// anything: [`peek`](Self::peek) with no filter.
    pub async fn list(&self, limit: usize) -> Result<Vec<FailedMessage>> {
        Ok(self.peek(&ListQuery::new().limit(limit)).await?.messages)
    }

    async fn close(&self, conn: lapin::Connection) {
        let _ = tokio::time::timeout(
            self.broker.operation_timeout(),
            conn.close(200, "error queue read".into()),
        )
        .await;
    }

    /// Republishes up to `limit` messages (all, if `None`) to their original
    /// exchange and routing key, with confirms, and removes each one only
    /// after its confirm. Failure headers are dropped; `x-replayed` counts
    /// replays. Messages whose origin is unknown stay in the queue.
    ///
    /// Reads on a connection of its own, as [`list`](Self::list) does.
    pub async fn replay(
        &self,
        publisher: &Publisher,
        limit: Option<usize>,
    ) -> Result<ReplayReport> {
        self.replay_where(publisher, limit, &ErrorFilter::new())
            .await
    }

    /// Like [`replay`](Self::replay), for the messages that pass `filter`
    /// only (`limit` counts those read, matching or not). The others stay
    /// in the error queue, in their order.
    pub async fn replay_where(
        &self,
        publisher: &Publisher,
        limit: Option<usize>,
        filter: &ErrorFilter,
    ) -> Result<ReplayReport> {
        let (conn, channel) = self.broker.open_dedicated("error-queue").await?;
        let replayed = self.replay_on(&channel, publisher, limit, filter).await;
        self.close(conn).await;
        replayed
    }

    async fn replay_on(
        &self,
        channel: &lapin::Channel,
        publisher: &Publisher,
        limit: Option<usize>,
        filter: &ErrorFilter,
    ) -> Result<ReplayReport> {
        let depth = self.broker.queue_stats(&self.queue).await?.messages as usize;
        let limit = limit.unwrap_or(depth).min(depth);
        let mut report = ReplayReport::default();
        let mut left = Vec::new();
        for _ in 0..limit {
            let Some(msg) = self.get(channel).await.map_err(unreadable)? else {
                break;
            };
            if !filter.matches(&FailedMessage::from_delivery(&msg.delivery)) {
                // Held unacknowledged until the end, then handed back.
                report.not_matching += 1;
                left.push(msg.delivery.acker.clone());
                continue;
            }
            let mut props = properties_from_amqp(&msg.delivery.properties);
            let Some((exchange, routing_key)) = origin(&props.headers) else {
                tracing::warn!(
                    message_id = props.message_id,
                    "cannot tell where this message came from; left in the error queue"
                );
                report.skipped += 1;
                left.push(msg.delivery.acker.clone());
                continue;
            };
            let replays = props
                .headers
                .get("x-replayed")
                .and_then(HeaderValue::as_i64)
                .unwrap_or(0);
            crate::header::strip_death_history(&mut props.headers);
            props.headers.retain(|k, _| {
                !(k.starts_with("x-exception-")
                    || matches!(
                        k.as_str(),
                        "x-delivery-count"
                            | headers::ATTEMPTS
                            | headers::FAILED_AT
                            | headers::CONSUMER
                            | headers::ORIGINAL_QUEUE
                            | RETRIES_HEADER
                            | ATTEMPTS_MADE_HEADER
                            | REDELIVERIES_HEADER
                            | COUNTED_IN_HEADER
                    ))
            });
            props
                .headers
                .insert("x-replayed".into(), HeaderValue::Int(replays + 1));
            let msg_id = props.message_id.clone();
            let message =
                Message::from_parts(exchange, routing_key, msg.delivery.data.clone(), props);
            match publisher.send(message).await {
                Ok(()) => {
                    let removed = bounded(
                        self.broker.operation_timeout(),
                        "basic.ack",
                        msg.delivery.acker.ack(BasicAckOptions::default()),
                    )
                    .await?;
                    if !removed {
                        // lapin refuses an ack on a channel that was lost
                        // since the get (`Ok(false)`): the copy stays in the
                        // error queue although it was republished.
                        tracing::warn!(
                            message_id = msg_id,
                            "replayed, but the error-queue copy could not be removed; stopping"
                        );
                        report.skipped += 1;
                        break;
                    }
                    report.replayed += 1;
                }
                Err(error) => {
                    tracing::warn!(%error, "replay failed; the message stays in the error queue");
                    report.skipped += 1;
                    left.push(msg.delivery.acker.clone());
                }
            }
        }
        // Everything read and not replayed goes back, in order, as "not
        // processed" (see `peek` for what that still counts).
        self.give_back(channel, &left).await?;
        Ok(report)
    }

    /// Deletes every message in the error queue; returns how many.
    pub async fn purge(&self) -> Result<u32> {
        let channel = self.broker.open_channel(Role::Consume).await?;
        let n = bounded(
            self.broker.operation_timeout(),
            "queue.purge",
            channel.queue_purge(self.queue_name()?, QueuePurgeOptions::default()),
        )
        .await?;
        close_channel(&channel, self.broker.operation_timeout(), "purged").await;
        Ok(n)
    }
}
