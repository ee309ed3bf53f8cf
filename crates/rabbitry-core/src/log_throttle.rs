//! Rate-limited warnings: a failure that repeats (a reconnect, a
//! resubscription, a relay batch during an outage) is logged once per
//! interval, with a count of what was held back, not once per attempt.

use std::time::{Duration, Instant};

/// How often a repeating failure may log a warning.
pub(crate) const WARN_EVERY: Duration = Duration::from_secs(30);

/// Lets one warning through per `WARN_EVERY` (30 s) and counts the
/// others. Shared by rabbitry's crates (the relay's outage line); not meant
/// for applications.
#[derive(Debug, Default)]
pub struct WarnThrottle {
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnThrottle {
    /// `Some(n)` when a warning may be logged now, `n` being how many were
    /// held back since the last one; `None` to stay quiet.
    pub fn hit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < WARN_EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }

    /// Forgets the history: the next warning goes through.
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_interval_with_the_count_held_back() {
        let t0 = Instant::now();
        let mut t = WarnThrottle::default();
        assert_eq!(t.hit(t0), Some(0));
        assert_eq!(t.hit(t0 + Duration::from_secs(1)), None);
        assert_eq!(t.hit(t0 + Duration::from_secs(2)), None);
        assert_eq!(t.hit(t0 + WARN_EVERY), Some(2));
        t.reset();
        assert_eq!(t.hit(t0 + WARN_EVERY), Some(0), "after a reset, at once");
    }
}
