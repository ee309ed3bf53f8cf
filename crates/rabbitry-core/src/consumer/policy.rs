//! How often, and after how long, a retryable failure is tried again.

use std::time::Duration;

use crate::delay_queue;
use crate::topology::{Queue, Topology};

/// When and how often a retryable failure is tried again.
///
/// Defaults: 2 immediate retries (100 ms, then 200 ms apart), then delayed
/// retries after 1 s, 10 s and 60 s, then the error queue. A handler that
/// keeps failing runs `(1 + immediate) × (1 + delays)` times: 12 with the
/// defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct RetryPolicy {
    pub(crate) immediate: u32,
    pub(crate) immediate_backoff: Duration,
    pub(crate) delays: Vec<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            immediate: 2,
            immediate_backoff: Duration::from_millis(100),
            delays: vec![
                Duration::from_secs(1),
                Duration::from_secs(10),
                Duration::from_secs(60),
            ],
        }
    }
}

impl RetryPolicy {
    /// No retries at all: a failure dead-letters at once.
    pub fn none() -> Self {
        Self {
            immediate: 0,
            immediate_backoff: Duration::ZERO,
            delays: Vec::new(),
        }
    }
    /// In-process retries right after a failure. They hold the delivery's
    /// prefetch slot, so keep them few and short.
    pub fn immediate(mut self, count: u32) -> Self {
        self.immediate = count;
        self
    }
    /// The first pause between immediate retries; doubles each time.
    pub fn immediate_backoff(mut self, d: Duration) -> Self {
        self.immediate_backoff = d;
        self
    }
    /// Delayed retries: after each delay the message comes back to the work
    /// queue from a retry queue (TTL + dead-letter), holding no prefetch
    /// slot while it waits.
    pub fn delays(mut self, delays: impl IntoIterator<Item = Duration>) -> Self {
        self.delays = delays.into_iter().collect();
        self
    }

    /// Handler runs for a message that always fails.
    pub fn max_attempts(&self) -> u32 {
        let delays = u32::try_from(self.delays.len()).unwrap_or(u32::MAX);
        self.immediate
            .saturating_add(1)
            .saturating_mul(delays.saturating_add(1))
    }

    pub(crate) fn immediate_pause(&self, attempt: u32) -> Duration {
        self.immediate_backoff
            .saturating_mul(2u32.saturating_pow(attempt.min(16)))
    }

    /// The names of the retry queues this policy uses for `queue`.
    pub fn retry_queues(&self, queue: &str) -> Vec<String> {
        self.delays
            .iter()
            .map(|d| retry_queue_name(queue, *d))
            .collect()
    }

    /// The delay before delayed retry number `retry` (from 1), if the
    /// policy has one.
    pub(crate) fn delay(&self, retry: u32) -> Option<Duration> {
        self.delays
            .get(usize::try_from(retry).ok()?.checked_sub(1)?)
            .copied()
    }

    /// The retry queues for `queue`: each holds messages for its delay,
    /// then dead-letters them back to `queue` through the default exchange.
    pub(crate) fn topology(&self, queue: &str) -> Topology {
        self.delays.iter().fold(Topology::new(), |t, delay| {
            t.queue(retry_queue(queue, *delay))
        })
    }
}

/// `<queue>.retry.<millis>ms`: the delay is in the name, so changing a delay
/// makes a new queue instead of a 406 on the old one.
pub fn retry_queue_name(queue: &str, delay: Duration) -> String {
    delay_queue::name(queue, "retry", delay)
}

/// The retry queue of `queue` for `delay`.
pub(crate) fn retry_queue(queue: &str, delay: Duration) -> Queue {
    delay_queue::declaration(retry_queue_name(queue, delay), queue, delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_counts_and_names() {
        let p = RetryPolicy::default();
        assert_eq!(p.max_attempts(), 12);
        assert_eq!(p.delay(1), Some(Duration::from_secs(1)));
        assert_eq!(p.delay(3), Some(Duration::from_secs(60)));
        assert_eq!(p.delay(4), None);
        assert_eq!(p.delay(0), None);
        assert_eq!(
            retry_queue_name("orders", Duration::from_secs(1)),
            "orders.retry.1000ms"
        );
        assert_eq!(RetryPolicy::none().max_attempts(), 1);
        assert_eq!(
            RetryPolicy::none().immediate(u32::MAX).max_attempts(),
            u32::MAX
        );
        assert_eq!(p.immediate_pause(0), Duration::from_millis(100));
        assert_eq!(p.immediate_pause(1), Duration::from_millis(200));
    }
}
