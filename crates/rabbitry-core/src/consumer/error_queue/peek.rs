//! Listing an error queue without changing what it holds.
//!
//! AMQP 0-9-1 has no "browse": the only way to read a queued message is to
//! be handed it and give it back. A listing takes the head of the queue with
//! one `basic.get` (whose answer counts what is left, exactly), then up to
//! `scan` messages on a consumer with manual acks and a prefetch of exactly
//! what remains to read (so the broker hands out the head of the queue, in
//! order, and nothing past it), then hands them back one `basic.nack` each,
//! in the order read, 32 at a time (see [`ErrorQueue::give_back`]), before
//! closing its connection. Two listings in a row show the same messages in
//! the same order, and the depth never changes.
//!
//! What it still changes: the queue counts each listing as a delivery. Up
//! to RabbitMQ 4.2 every return (nack, reject or a closed channel) raises a
//! quorum queue's `x-delivery-count`; from 4.3 a `basic.nack` does not
//! (only `basic.reject` does), which is why the listing nacks rather than
//! rejects or simply closes. rabbitry's error queues have no delivery limit
//! (`-1` on RabbitMQ 4), so the count is only a number; an error queue
//! declared with a limit would drop a message listed that many times.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicNackOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

use super::failed::{ErrorFilter, FailedMessage};
use super::{ErrorQueue, unreadable, until_lost};
use crate::bounded::{bounded, close_channel};
use crate::error::{Error, Result};

/// Most messages a listing reads by default.
pub const DEFAULT_SCAN: usize = 10_000;

/// A gap in deliveries after which a listing stops waiting for more: the
/// queue shrank meanwhile (another consumer took some).
const IDLE: Duration = Duration::from_secs(2);

/// Messages handed back at once (see [`ErrorQueue::give_back`]).
const RETURN_BATCH: usize = 32;

/// What to list: a page of the failures that pass a filter, in queue order.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListQuery {
    /// At most this many messages (default 50).
    pub limit: usize,
    /// Skip this many matching messages first (default 0).
    pub offset: usize,
    /// Start after the message with this id (default: at the head).
    pub after: Option<String>,
    /// Which failures to show.
    pub filter: ErrorFilter,
    /// Read at most this many messages from the head of the queue (default
    /// [`DEFAULT_SCAN`], at most 65,535: one prefetch window).
    pub scan: usize,
}

impl Default for ListQuery {
    fn default() -> Self {
        Self {
            limit: 50,
            offset: 0,
            after: None,
            filter: ErrorFilter::default(),
            scan: DEFAULT_SCAN,
        }
    }
}

impl ListQuery {
    /// The first 50 failures.
    pub fn new() -> Self {
        Self::default()
    }

    /// At most `limit` messages.
    #[must_use]
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Skips `offset` matching messages.
    #[must_use]
    pub fn offset(mut self, offset: usize) -> Self {
        self.offset = offset;
        self
    }

    /// Starts after the message with this id (the last one of the previous
    /// page).
    #[must_use]
    pub fn after(mut self, message_id: impl Into<String>) -> Self {
        self.after = Some(message_id.into());
        self
    }

    /// Shows only what passes `filter`.
    #[must_use]
    pub fn filter(mut self, filter: ErrorFilter) -> Self {
        self.filter = filter;
        self
    }

    /// Reads at most `scan` messages from the head of the queue.
    #[must_use]
    pub fn scan(mut self, scan: usize) -> Self {
        self.scan = scan;
        self
    }
}

/// A page of an error queue, with the totals around it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Listing {
    /// The page.
    pub messages: Vec<FailedMessage>,
    /// Messages ready in the queue when the listing began.
    pub depth: u32,
    /// Messages read from the head of the queue.
    pub scanned: usize,
    /// Of those, how many passed the filter (and followed `after`).
    pub matched: usize,
    /// Whether every message in the queue was read (`matched` is then the
    /// total of matching messages; otherwise raise `scan`).
    pub complete: bool,
    /// Other consumers on the queue when the listing began. The messages
    /// they hold (another listing's, a replay's) are not ready, so not
    /// counted in `depth` nor shown.
    pub other_consumers: u32,
}

impl ErrorQueue {
    /// Lists a page of failures without removing or reordering anything.
    /// See the module notes above for what a listing still counts.
    ///
    /// Reads on a connection of its own: an error queue may hold a copy
    /// that lapin cannot parse (see `docs/foreign-messages.md`), which
    /// closes the connection it is read on; that fails this call, not the
    /// application's consumers.
    pub async fn peek(&self, query: &ListQuery) -> Result<Listing> {
        let other_consumers = self.broker.queue_stats(&self.queue).await?.consumers;
        let (conn, channel) = self.broker.open_dedicated("error-queue").await?;
        let mut read = Read {
            query,
            listing: Listing {
                messages: Vec::new(),
                depth: 0,
                scanned: 0,
                matched: 0,
                complete: true,
                other_consumers,
            },
            seen_after: query.after.is_none(),
            held: Vec::new(),
        };
        let scanned = until_lost(&channel, "basic.consume", self.scan(&channel, &mut read))
            .await
            .map_err(unreadable);
        // Anything not handed back here returns when the connection closes.
        let returned = if scanned.is_ok() {
            self.give_back(&channel, &read.held).await
        } else {
            Ok(())
        };
        close_channel(&channel, self.broker.operation_timeout(), "listed").await;
        self.close(conn).await;
        scanned.and(returned).map(|()| read.listing)
    }

    async fn scan(&self, channel: &lapin::Channel, read: &mut Read<'_>) -> Result<()> {
        // A get first: its answer counts what is left, exactly (a passive
        // declare's count can lag behind returns the queue has not applied
        // yet, such as the previous listing's).
        let Some(first) = self.get(channel).await? else {
            return Ok(());
        };
        let depth = first.message_count.saturating_add(1);
        read.listing.depth = depth;
        let want = (depth as usize)
            .min(read.query.scan)
            .min(usize::from(u16::MAX));
        read.listing.complete = want == depth as usize;
        read.take(first.delivery);
        if want <= 1 {
            return Ok(());
        }
        let timeout = self.broker.operation_timeout();
        let prefetch = u16::try_from(want - 1).unwrap_or(u16::MAX);
        bounded(
            timeout,
            "basic.qos",
            channel.basic_qos(prefetch, BasicQosOptions::default()),
        )
        .await?;
        let mut consumer = bounded(
            timeout,
            "basic.consume",
            channel.basic_consume(
                self.queue_name()?,
                "rabbitry-error-queue-peek".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        while read.listing.scanned < want {
            let wait = if read.listing.scanned == 1 {
                timeout
            } else {
                IDLE
            };
            match tokio::time::timeout(wait, consumer.next()).await {
                Ok(Some(next)) => {
                    read.take(next.map_err(|e| Error::from_lapin("basic.consume", &e))?);
                }
                Ok(None) => {
                    return Err(Error::ConnectionLost {
                        operation: "basic.consume",
                        reason: "the channel closed while reading".into(),
                    });
                }
                Err(_) => {
                    // Fewer ready than counted: the queue shrank meanwhile.
                    read.listing.complete = false;
                    break;
                }
            }
        }
        Ok(())
    }
}

/// A listing in progress.
struct Read<'q> {
    query: &'q ListQuery,
    listing: Listing,
    seen_after: bool,
    held: Vec<lapin::Acker>,
}

impl Read<'_> {
    fn take(&mut self, delivery: lapin::message::Delivery) {
        self.listing.scanned += 1;
        let failed = FailedMessage::from_delivery(&delivery);
        self.held.push(delivery.acker);
        if !self.seen_after {
            self.seen_after = self.query.after.as_deref() == Some(failed.message_id.as_str());
            return;
        }
        if !self.query.filter.matches(&failed) {
            return;
        }
        self.listing.matched += 1;
        if self.listing.matched > self.query.offset
            && self.listing.messages.len() < self.query.limit
        {
            self.listing.messages.push(failed);
        }
    }
}

impl ErrorQueue {
    /// Returns held messages to the queue in the order they were read, as
    /// "not processed" (`basic.nack`, which RabbitMQ 4.3+ does not count as
    /// a failed delivery).
    ///
    /// A quorum queue keeps the order of returns only while it applies
    /// them as fast as they come: past about 32 unapplied commands the
    /// broker's client batches the rest into one return, applied in no
    /// particular order (seen on RabbitMQ 3.10.8: the first 33 in order,
    /// the rest shuffled). The same happens to what a closed channel hands
    /// back. So they go back at most `RETURN_BATCH` at a time, each batch
    /// waiting (bounded) until the queue shows it ready again.
    pub(super) async fn give_back(
        &self,
        channel: &lapin::Channel,
        held: &[lapin::Acker],
    ) -> Result<()> {
        let timeout = self.broker.operation_timeout();
        let Some(mut ready) = self.ready(channel).await else {
            return Ok(());
        };
        for batch in held.chunks(RETURN_BATCH) {
            for acker in batch {
                bounded(
                    timeout,
                    "basic.nack",
                    acker.nack(BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    }),
                )
                .await?;
            }
            ready = ready.saturating_add(u32::try_from(batch.len()).unwrap_or(u32::MAX));
            let deadline = tokio::time::Instant::now() + timeout;
            while self.ready(channel).await.is_some_and(|now| now < ready)
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Ok(())
    }

    /// The queue's ready messages, read on `channel` (a passive declare).
    async fn ready(&self, channel: &lapin::Channel) -> Option<u32> {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = bounded(
            self.broker.operation_timeout(),
            "queue.declare (passive)",
            channel.queue_declare(self.queue_name().ok()?, passive, FieldTable::default()),
        )
        .await;
        declared.ok().map(|q| q.message_count())
    }
}
