//! Listing an error queue without changing what it holds.
//!
//! AMQP 0-9-1 has no "browse": the only way to read a queued message is to
//! be handed it and give it back. A listing takes up to `scan` messages on
//! one consumer with manual acks and a prefetch of exactly that many (so the
//! broker hands out the head of the queue, in order, and nothing past it),
//! then hands them all back with one `basic.nack(multiple, requeue)` before
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
use lapin::options::{BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;

use super::failed::{ErrorFilter, FailedMessage};
use super::{ErrorQueue, unreadable, until_lost};
use crate::bounded::bounded;
use crate::error::{Error, Result};

/// Most messages a listing reads by default.
pub const DEFAULT_SCAN: usize = 10_000;

/// A gap in deliveries after which a listing stops waiting for more: the
/// queue shrank meanwhile (another consumer took some).
const IDLE: Duration = Duration::from_secs(2);

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
        let queue = self.queue_name()?;
        let depth = self.broker.queue_stats(&self.queue).await?.messages;
        let want = (depth as usize).min(query.scan).min(usize::from(u16::MAX));
        let mut listing = Listing {
            messages: Vec::new(),
            depth,
            scanned: 0,
            matched: 0,
            complete: want == depth as usize,
        };
        if want == 0 {
            return Ok(listing);
        }
        let (conn, channel) = self.broker.open_dedicated("error-queue").await?;
        let read = until_lost(&channel, "basic.consume", async {
            self.scan_into(&channel, queue, want, query, &mut listing)
                .await
        })
        .await
        .map_err(unreadable);
        // Anything not handed back above returns when the connection closes.
        self.close(conn).await;
        read.map(|()| listing)
    }

    async fn scan_into(
        &self,
        channel: &lapin::Channel,
        queue: lapin::types::ShortString,
        want: usize,
        query: &ListQuery,
        listing: &mut Listing,
    ) -> Result<()> {
        let timeout = self.broker.operation_timeout();
        let prefetch = u16::try_from(want).unwrap_or(u16::MAX);
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
                queue,
                "rabbitry-error-queue-peek".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        let mut seen_after = query.after.is_none();
        let mut last = None;
        while listing.scanned < want {
            let wait = if last.is_none() { timeout } else { IDLE };
            let next = match tokio::time::timeout(wait, consumer.next()).await {
                Ok(Some(next)) => next,
                Ok(None) => {
                    return Err(Error::ConnectionLost {
                        operation: "basic.consume",
                        reason: "the channel closed while reading".into(),
                    });
                }
                Err(_) => {
                    // Fewer ready than counted: the queue shrank meanwhile.
                    listing.complete = false;
                    break;
                }
            };
            let delivery = next.map_err(|e| Error::from_lapin("basic.consume", &e))?;
            listing.scanned += 1;
            let failed = FailedMessage::from_delivery(&delivery);
            last = Some(delivery);
            if !seen_after {
                seen_after = query.after.as_deref() == Some(failed.message_id.as_str());
                continue;
            }
            if !query.filter.matches(&failed) {
                continue;
            }
            listing.matched += 1;
            if listing.matched > query.offset && listing.messages.len() < query.limit {
                listing.messages.push(failed);
            }
        }
        if let Some(last) = last {
            // Every message read goes back, in order, as "not processed".
            bounded(
                timeout,
                "basic.nack",
                last.acker.nack(BasicNackOptions {
                    multiple: true,
                    requeue: true,
                }),
            )
            .await?;
        }
        Ok(())
    }
}
