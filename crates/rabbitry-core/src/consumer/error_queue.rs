//! The error queue, for the person who handles what the consumer gave up
//! on: list the failures with their headers, replay them to where they
//! were first published, or purge them.

use lapin::options::{BasicAckOptions, BasicGetOptions, QueuePurgeOptions};

use super::delivery::{
    ATTEMPTS_MADE_HEADER, COUNTED_IN_HEADER, REDELIVERIES_HEADER, RETRIES_HEADER,
    properties_from_amqp,
};
use super::republish::headers;
use crate::bounded::{bounded, close_channel};
use crate::connection::{Broker, Role};
use crate::error::{Error, Result};
use crate::header::{HeaderValue, Headers};
use crate::message::Message;
use crate::publisher::Publisher;

/// One failed message, as an operator sees it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct FailedMessage {
    /// The message id.
    pub message_id: String,
    /// The handler's error, when a rabbitry consumer dead-lettered it.
    pub exception: Option<String>,
    /// `retryable`, `permanent` or `decode`.
    pub kind: Option<String>,
    /// Where it was first published.
    pub original_exchange: Option<String>,
    /// Its first routing key.
    pub original_routing_key: Option<String>,
    /// The queue it failed in.
    pub original_queue: Option<String>,
    /// Handler attempts made.
    pub attempts: Option<i64>,
    /// When it failed (seconds since the epoch).
    pub failed_at: Option<u64>,
    /// The consumer that gave up.
    pub consumer: Option<String>,
    /// The broker's reason when the broker dead-lettered it (`rejected`,
    /// `expired`, `maxlen`, `delivery_limit`).
    pub death_reason: Option<String>,
    /// Payload size in bytes.
    pub size: usize,
    /// The payload's first 200 bytes, as text.
    pub preview: String,
}

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

fn text(h: &Headers, key: &str) -> Option<String> {
    h.get(key).and_then(HeaderValue::as_str).map(str::to_owned)
}

fn first_death(h: &Headers) -> Option<&std::collections::BTreeMap<String, HeaderValue>> {
    match h.get("x-death")? {
        HeaderValue::Array(deaths) => match deaths.first()? {
            HeaderValue::Table(t) => Some(t),
            _ => None,
        },
        _ => None,
    }
}

/// Where to send a failed message back to: rabbitry's origin headers, else
/// the broker's `x-death` record.
fn origin(h: &Headers) -> Option<(String, String)> {
    if let (Some(ex), Some(rk)) = (
        text(h, headers::ORIGINAL_EXCHANGE),
        text(h, headers::ORIGINAL_ROUTING_KEY),
    ) {
        return Some((ex, rk));
    }
    let death = first_death(h)?;
    let ex = death.get("exchange")?.as_str()?.to_owned();
    let rk = match death.get("routing-keys")? {
        HeaderValue::Array(keys) => keys.first()?.as_str()?.to_owned(),
        _ => return None,
    };
    Some((ex, rk))
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

    /// Takes the next message, unacknowledged. A get whose connection is
    /// lost meanwhile (lapin does not resolve it then) fails at once rather
    /// than at the operation timeout.
    async fn get(
        &self,
        channel: &lapin::Channel,
    ) -> Result<Option<lapin::message::BasicGetMessage>> {
        let get = bounded(
            self.broker.operation_timeout(),
            "basic.get",
            channel.basic_get(self.queue_name()?, BasicGetOptions::default()),
        );
        let lost = async {
            while channel.status().connected() {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        };
        tokio::select! {
            got = get => got,
            () = lost => Err(Error::ConnectionLost {
                operation: "basic.get",
                reason: "the connection closed while reading".into(),
            }),
        }
    }

    /// Reads up to `limit` messages without removing them.
    ///
    /// Reads on a connection of its own: an error queue may hold a copy
    /// that lapin cannot parse (see `docs/foreign-messages.md`), which
    /// closes the connection it is read on; that fails this call, not the
    /// application's consumers.
    pub async fn list(&self, limit: usize) -> Result<Vec<FailedMessage>> {
        let (conn, channel) = self.broker.open_dedicated("error-queue").await?;
        let read = self.read(&channel, limit).await;
        // Closing returns every unacknowledged message to the queue.
        self.close(conn).await;
        read
    }

    async fn read(&self, channel: &lapin::Channel, limit: usize) -> Result<Vec<FailedMessage>> {
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(msg) = self.get(channel).await.map_err(unreadable)? else {
                break;
            };
            let props = properties_from_amqp(&msg.delivery.properties);
            let h = &props.headers;
            let (original_exchange, original_routing_key) = origin(h).unzip();
            out.push(FailedMessage {
                message_id: props.message_id.clone(),
                exception: text(h, headers::EXCEPTION_MESSAGE),
                kind: text(h, headers::EXCEPTION_KIND),
                original_exchange,
                original_routing_key,
                original_queue: text(h, headers::ORIGINAL_QUEUE).or_else(|| {
                    first_death(h).and_then(|d| d.get("queue")?.as_str().map(str::to_owned))
                }),
                attempts: h.get(headers::ATTEMPTS).and_then(HeaderValue::as_i64),
                failed_at: h
                    .get(headers::FAILED_AT)
                    .and_then(HeaderValue::as_i64)
                    .and_then(|t| u64::try_from(t).ok()),
                consumer: text(h, headers::CONSUMER),
                death_reason: first_death(h)
                    .and_then(|d| d.get("reason")?.as_str().map(str::to_owned)),
                size: msg.delivery.data.len(),
                preview: String::from_utf8_lossy(
                    &msg.delivery.data[..msg.delivery.data.len().min(200)],
                )
                .into_owned(),
            });
        }
        Ok(out)
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
        let (conn, channel) = self.broker.open_dedicated("error-queue").await?;
        let replayed = self.replay_on(&channel, publisher, limit).await;
        self.close(conn).await;
        replayed
    }

    async fn replay_on(
        &self,
        channel: &lapin::Channel,
        publisher: &Publisher,
        limit: Option<usize>,
    ) -> Result<ReplayReport> {
        let depth = self.broker.queue_stats(&self.queue).await?.messages as usize;
        let limit = limit.unwrap_or(depth).min(depth);
        let mut report = ReplayReport::default();
        for _ in 0..limit {
            let Some(msg) = self.get(channel).await.map_err(unreadable)? else {
                break;
            };
            let mut props = properties_from_amqp(&msg.delivery.properties);
            let Some((exchange, routing_key)) = origin(&props.headers) else {
                tracing::warn!(
                    message_id = props.message_id,
                    "cannot tell where this message came from; left in the error queue"
                );
                report.skipped += 1;
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
                }
            }
        }
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
