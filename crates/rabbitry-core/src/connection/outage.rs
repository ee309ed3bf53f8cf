//! Outage bookkeeping for logs: the loss is logged once at WARN, the return
//! once at INFO, and the failures in between at most once per interval, with
//! a count of what was not logged.

use std::time::{Duration, Instant};

#[cfg(test)]
use crate::log_throttle::WARN_EVERY;
pub(crate) use crate::log_throttle::WarnThrottle;

/// The pure state behind the outage logs, kept apart for unit tests.
#[derive(Debug, Default)]
pub(crate) struct Outage {
    since: Option<Instant>,
    /// Whether this outage's loss was logged already.
    reported: bool,
    failures: u64,
    throttle: WarnThrottle,
}

impl Outage {
    /// The connection was lost. True only for the first loss of an outage:
    /// that one is logged.
    pub(crate) fn lost(&mut self, now: Instant) -> bool {
        if self.since.is_some() {
            return false;
        }
        self.since = Some(now);
        self.reported = false;
        self.failures = 0;
        self.throttle = WarnThrottle::default();
        true
    }

    /// True once per outage: the one who sees it first with the details
    /// (the connection's watcher, which knows the endpoint and the reason)
    /// logs the loss. A caller that only found a dead connection in the
    /// pool records the loss with [`lost`](Self::lost) and leaves the line
    /// to the watcher, which sees it within its status check.
    pub(crate) fn report_loss(&mut self) -> bool {
        if self.since.is_none() || self.reported {
            return false;
        }
        self.reported = true;
        true
    }

    /// When the ongoing outage began, if one is going on.
    pub(crate) fn since(&self) -> Option<Instant> {
        self.since
    }

    /// A reconnect attempt failed. `Some(n)` when a warning is due now, `n`
    /// being the failures not logged since the last one.
    pub(crate) fn attempt_failed(&mut self, now: Instant) -> Option<u64> {
        self.failures += 1;
        self.throttle.hit(now)
    }

    /// Connected again. `Some((how long, failed attempts))` when this ends
    /// an outage: that is logged once.
    pub(crate) fn restored(&mut self, now: Instant) -> Option<(Duration, u64)> {
        let since = self.since.take()?;
        Some((now.saturating_duration_since(since), self.failures))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loss_and_a_return_are_reported_once_each() {
        let t0 = Instant::now();
        let mut o = Outage::default();
        assert!(o.restored(t0).is_none(), "no outage yet");
        assert!(o.lost(t0));
        assert!(!o.lost(t0 + Duration::from_millis(10)), "same outage");
        let (took, failures) = o.restored(t0 + Duration::from_secs(2)).expect("ends it");
        assert_eq!(took, Duration::from_secs(2));
        assert_eq!(failures, 0);
        assert!(o.restored(t0 + Duration::from_secs(3)).is_none(), "once");
        assert!(o.lost(t0 + Duration::from_secs(4)), "a new outage");
    }

    #[test]
    fn a_loss_is_logged_once_whoever_saw_it_first() {
        let t0 = Instant::now();
        let mut o = Outage::default();
        assert!(!o.report_loss(), "nothing lost yet");
        // The pool found the dead connection first.
        assert!(o.lost(t0));
        // The watcher, a moment later.
        assert!(!o.lost(t0 + Duration::from_millis(100)));
        assert!(o.report_loss(), "the watcher logs it");
        assert!(!o.report_loss(), "once");
        o.restored(t0 + Duration::from_secs(1));
        assert!(!o.report_loss(), "over");
        o.lost(t0 + Duration::from_secs(2));
        assert!(o.report_loss(), "the next outage is logged again");
    }

    #[test]
    fn repeated_failures_warn_once_per_interval_with_a_count() {
        let t0 = Instant::now();
        let mut o = Outage::default();
        o.lost(t0);
        assert_eq!(o.attempt_failed(t0), Some(0), "the first failure warns");
        for i in 1..=99 {
            assert_eq!(o.attempt_failed(t0 + Duration::from_millis(i * 100)), None);
        }
        assert_eq!(o.attempt_failed(t0 + WARN_EVERY), Some(99));
        let (_, failures) = o.restored(t0 + WARN_EVERY).expect("restored");
        assert_eq!(failures, 101);
        o.lost(t0 + WARN_EVERY * 2);
        assert_eq!(
            o.attempt_failed(t0 + WARN_EVERY * 2),
            Some(0),
            "a new outage warns again at once"
        );
    }
}
