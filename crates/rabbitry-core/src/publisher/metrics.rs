//! A publisher's counters, and the error type names its spans record.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Counters of a publisher's results, since it was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublisherMetrics {
    /// Messages confirmed by the broker.
    pub confirmed: u64,
    /// Messages the broker nacked.
    pub nacked: u64,
    /// Mandatory messages returned as unroutable.
    pub unroutable: u64,
    /// Publishes whose confirm did not arrive in time.
    pub timed_out: u64,
    /// Publishes that failed otherwise (connection lost, blocked, too large,
    /// invalid, …).
    pub failed: u64,
    /// Messages stored in the outbox after a failure.
    pub deferred: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    confirmed: AtomicU64,
    nacked: AtomicU64,
    unroutable: AtomicU64,
    timed_out: AtomicU64,
    failed: AtomicU64,
    deferred: AtomicU64,
}

impl Counters {
    pub(crate) fn count(&self, result: &Result<()>) {
        let counter = match result {
            Ok(()) => &self.confirmed,
            Err(Error::Nacked { .. }) => &self.nacked,
            Err(Error::Unroutable { .. }) => &self.unroutable,
            Err(Error::TimedOut { .. }) => &self.timed_out,
            Err(_) => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn deferred(&self) {
        self.deferred.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> PublisherMetrics {
        PublisherMetrics {
            confirmed: self.confirmed.load(Ordering::Relaxed),
            nacked: self.nacked.load(Ordering::Relaxed),
            unroutable: self.unroutable.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            deferred: self.deferred.load(Ordering::Relaxed),
        }
    }
}

/// The `error.type` a publish span records.
pub(crate) fn error_type(e: &Error) -> &'static str {
    match e {
        Error::Nacked { .. } => "nacked",
        Error::Unroutable { .. } => "unroutable",
        Error::TimedOut { .. } => "timed_out",
        Error::Blocked { .. } => "blocked",
        Error::TooLarge { .. } => "too_large",
        Error::InvalidMessage { .. } => "invalid_message",
        Error::ConnectionLost { .. } => "connection_lost",
        Error::Broker { .. } => "broker",
        _ => "other",
    }
}
