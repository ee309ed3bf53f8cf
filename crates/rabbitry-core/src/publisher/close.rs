//! Flushing and closing a publisher: the publisher's part of a service's
//! shutdown (the order is on [`Broker::close`](crate::Broker::close)).

use std::time::Duration;

use super::Publisher;
use super::inflight::Ticket;
use crate::error::{Error, Result};

/// The least time `close` gives its channels to close.
const CLOSE_AT_LEAST: Duration = Duration::from_secs(1);

impl Publisher {
    /// Waits until every publish started on this publisher (or a clone)
    /// before the call has settled: confirmed, failed, or deferred to the
    /// outbox. Publishes started meanwhile do not hold it up.
    ///
    /// Fails with [`Error::FlushTimedOut`] (retryable) if that takes longer
    /// than `timeout`; the publishes go on, each within its own publish
    /// timeout.
    pub async fn flush(&self, timeout: Duration) -> Result<()> {
        let inflight = &self.inner.inflight;
        match tokio::time::timeout(timeout, inflight.settled()).await {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::FlushTimedOut {
                pending: inflight.pending(),
                timeout,
            }),
        }
    }

    /// Closes the publisher and its clones: from the call on, every new
    /// publish fails at once with [`Error::Shutdown`] (nothing is sent, the
    /// caller keeps the message); then waits, as [`flush`](Self::flush)
    /// does, for the publishes under way; then closes its channels.
    ///
    /// A publish still unsettled at `timeout` fails when its channel
    /// closes (`ConnectionLost`), or at the latest at its own publish
    /// timeout (`TimedOut`, when the broker answers nothing at all):
    /// deferred to the outbox if there is one, else its caller's error.
    /// `close` then returns [`Error::FlushTimedOut`]; nothing is left
    /// pending either way. It returns within `timeout`, plus at most a
    /// second to close the channels when the flush used it all.
    /// Calling it again (on any clone) flushes and closes again, which
    /// costs nothing once done.
    pub async fn close(&self, timeout: Duration) -> Result<()> {
        let began = tokio::time::Instant::now();
        let inner = &self.inner;
        inner.inflight.close();
        let flushed = self.flush(timeout).await;
        // A broker that answers nothing must not hold the caller for the
        // operation timeout: closing gets what is left of the bound.
        let left = timeout.saturating_sub(began.elapsed()).max(CLOSE_AT_LEAST);
        inner.channels.close(left).await;
        flushed
    }

    /// Whether [`close`](Self::close) was called on this publisher or a
    /// clone.
    pub fn is_closed(&self) -> bool {
        self.inner.inflight.is_closed()
    }

    /// Counts a publish in, until the ticket is dropped; refused with
    /// [`Error::Shutdown`] once the publisher is closed.
    pub(super) fn enter(&self) -> Result<Ticket<'_>> {
        self.inner.inflight.enter().ok_or(Error::Shutdown)
    }
}
