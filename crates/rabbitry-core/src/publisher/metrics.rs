//! A publisher's counters, its confirm-latency histogram, and the error
//! type names its spans record.

use std::time::Duration;

use metrics::Histogram;

use crate::count::Count;
use crate::error::{Error, Result};
use crate::metric_names as names;

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

/// The live counters behind [`PublisherMetrics`], each exported too (see
/// [`metric_names`](crate::metric_names)); every publisher of the process
/// adds to the same series.
pub(crate) struct Counters {
    confirmed: Count,
    nacked: Count,
    unroutable: Count,
    timed_out: Count,
    failed: Count,
    deferred: Count,
    /// Confirm latency by outcome, in the order of [`OUTCOMES`].
    latency: [Histogram; 5],
}

/// The `outcome` label values of the confirm-latency histogram.
const OUTCOMES: [&str; 5] = ["confirmed", "nacked", "unroutable", "timed_out", "failed"];

/// The index in [`OUTCOMES`] of a publish's result.
fn outcome(result: &Result<()>) -> usize {
    match result {
        Ok(()) => 0,
        Err(Error::Nacked { .. }) => 1,
        Err(Error::Unroutable { .. }) => 2,
        Err(Error::TimedOut { .. }) => 3,
        Err(_) => 4,
    }
}

impl Default for Counters {
    fn default() -> Self {
        let c = |name| Count::named(name, &[]);
        Self {
            confirmed: c(names::PUBLISHER_CONFIRMED),
            nacked: c(names::PUBLISHER_NACKED),
            unroutable: c(names::PUBLISHER_UNROUTABLE),
            timed_out: c(names::PUBLISHER_TIMED_OUT),
            failed: c(names::PUBLISHER_FAILED),
            deferred: c(names::PUBLISHER_DEFERRED),
            latency: OUTCOMES
                .map(|outcome| metrics::histogram!(names::PUBLISHER_CONFIRM_LATENCY, "outcome" => outcome)),
        }
    }
}

impl Counters {
    pub(crate) fn count(&self, result: &Result<()>) {
        let counters = [
            &self.confirmed,
            &self.nacked,
            &self.unroutable,
            &self.timed_out,
            &self.failed,
        ];
        counters[outcome(result)].bump();
    }

    /// Records how long a sent publish took to its verdict (`result`).
    pub(crate) fn confirm_latency(&self, result: &Result<()>, latency: Duration) {
        self.latency[outcome(result)].record(latency.as_secs_f64());
    }

    pub(crate) fn deferred(&self) {
        self.deferred.bump();
    }

    pub(crate) fn snapshot(&self) -> PublisherMetrics {
        PublisherMetrics {
            confirmed: self.confirmed.get(),
            nacked: self.nacked.get(),
            unroutable: self.unroutable.get(),
            timed_out: self.timed_out.get(),
            failed: self.failed.get(),
            deferred: self.deferred.get(),
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
