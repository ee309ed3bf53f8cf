//! One retry schedule for the whole workspace: reconnecting, the outbox
//! relay, the consumer.

use std::fmt;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Exponential backoff, capped, with jitter: the `n`-th delay (from 0) has
/// the ceiling `c = min(max, min * factor^n)`; with jitter (the default) it
/// is a random time in `[c/2, c)`, without it exactly `c`. A delay never
/// exceeds `max`, and it never drops below half of `min`.
///
/// Use it as a stream of delays ([`next_delay`](Self::next_delay), or as an
/// [`Iterator`] that never ends), with [`reset`](Self::reset) after a
/// success; or ask for the delay after a known number of failures with
/// [`delay`](Self::delay), when the count is kept elsewhere (a database row).
///
/// ```
/// use std::time::Duration;
/// use rabbitry_core::Backoff;
///
/// let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2)).jitter(false);
/// assert_eq!(backoff.next_delay(), Duration::from_millis(100));
/// assert_eq!(backoff.next_delay(), Duration::from_millis(200));
/// backoff.reset();
/// assert_eq!(backoff.next_delay(), Duration::from_millis(100));
/// assert_eq!(backoff.delay(10), Duration::from_secs(2));
/// ```
#[must_use]
pub struct Backoff {
    min: Duration,
    max: Duration,
    factor: f32,
    jitter: bool,
    delays: ExponentialBackoff,
}

impl Backoff {
    /// Starts at `min` and doubles up to `max`, with jitter. A `max` below
    /// `min` is raised to `min`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self::with(min, max.max(min), 2.0, true)
    }

    /// The growth factor between two delays. Default: 2. Values below 1 are
    /// taken as 1 (a constant delay).
    pub fn factor(self, factor: f32) -> Self {
        let factor = if factor.is_finite() {
            factor.max(1.0)
        } else {
            1.0
        };
        Self::with(self.min, self.max, factor, self.jitter)
    }

    /// Jitter: each delay is a random time in the upper half of its
    /// ceiling, so that many clients that failed together do not retry
    /// together. Default: true.
    pub fn jitter(self, yes: bool) -> Self {
        Self::with(self.min, self.max, self.factor, yes)
    }

    fn with(min: Duration, max: Duration, factor: f32, jitter: bool) -> Self {
        let mut this = Self {
            min,
            max,
            factor,
            jitter,
            delays: ExponentialBuilder::new().build(),
        };
        this.reset();
        this
    }

    /// The first delay.
    pub fn min_delay(&self) -> Duration {
        self.min
    }

    /// The cap.
    pub fn max_delay(&self) -> Duration {
        self.max
    }

    /// The next delay in the sequence.
    pub fn next_delay(&mut self) -> Duration {
        whole_micros(self.delays.next().unwrap_or(self.max)).min(self.max)
    }

    /// Starts the sequence again at `min` (after a success).
    pub fn reset(&mut self) {
        self.delays = self.builder().build();
    }

    /// The delay after `failures` failures (from 0), independent of the
    /// sequence that [`next_delay`](Self::next_delay) walks.
    pub fn delay(&self, failures: u32) -> Duration {
        // The ceiling stops growing at `max`, so more than a few dozen steps
        // are never needed; the bound keeps a huge count cheap.
        let steps = failures.min(200) as usize;
        let delay = self.builder().build().nth(steps).unwrap_or(self.max);
        whole_micros(delay).min(self.max)
    }

    /// The largest delay after `failures` failures: the delay without jitter.
    pub fn ceiling(&self, failures: u32) -> Duration {
        Self::with(self.min, self.max, self.factor, false).delay(failures)
    }

    /// backon's schedule. With jitter it runs on half the bounds: backon adds
    /// a random `[0, d)` to each delay `d`, which gives `[c/2, c)` for the
    /// ceiling `c`, so the cap holds.
    fn builder(&self) -> ExponentialBuilder {
        let builder = ExponentialBuilder::new()
            .with_factor(self.factor)
            .without_max_times();
        if self.jitter {
            builder
                .with_min_delay(self.min / 2)
                .with_max_delay(self.max / 2)
                .with_jitter()
                // backon seeds from a fixed value without its `std`
                // feature: every process would draw the same "random"
                // delays.
                .with_jitter_seed(rand::random())
        } else {
            builder.with_min_delay(self.min).with_max_delay(self.max)
        }
    }
}

/// backon computes in `f32` seconds: 100 ms doubled comes out as
/// 200.000003 ms. Whole microseconds read better in logs and compare equal.
fn whole_micros(d: Duration) -> Duration {
    let micros = (d.as_nanos() + 500) / 1000;
    Duration::from_micros(u64::try_from(micros).unwrap_or(u64::MAX))
}

impl Clone for Backoff {
    /// The same schedule, started again.
    fn clone(&self) -> Self {
        Self::with(self.min, self.max, self.factor, self.jitter)
    }
}

impl fmt::Debug for Backoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backoff")
            .field("min", &self.min)
            .field("max", &self.max)
            .field("factor", &self.factor)
            .field("jitter", &self.jitter)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Backoff {
    /// Two schedules are equal when their settings are.
    fn eq(&self, other: &Self) -> bool {
        self.min == other.min
            && self.max == other.max
            && self.factor == other.factor
            && self.jitter == other.jitter
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    /// Never `None`: after the cap, every delay is at most `max`.
    fn next(&mut self) -> Option<Duration> {
        Some(self.next_delay())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_from_min_and_stops_at_max_without_jitter() {
        let b = Backoff::new(100 * MS, 1000 * MS).jitter(false);
        let delays: Vec<_> = b.take(7).collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1000, 1000, 1000].map(|n| n * MS)
        );
    }

    #[test]
    fn jitter_stays_in_the_upper_half_of_each_ceiling() {
        let mut b = Backoff::new(100 * MS, 1000 * MS);
        for step in 0..40u32 {
            let ceiling = b.ceiling(step);
            let d = b.next_delay();
            assert!(d >= ceiling / 2 && d <= ceiling, "step {step}: {d:?}");
            let d = b.delay(step);
            assert!(d >= ceiling / 2 && d <= ceiling, "step {step}: {d:?}");
        }
        assert_eq!(b.ceiling(0), 100 * MS);
        assert_eq!(b.ceiling(3), 800 * MS);
        assert_eq!(b.ceiling(u32::MAX), 1000 * MS);
    }

    #[test]
    fn jitter_differs_between_schedules() {
        let a: Vec<_> = Backoff::new(MS * 1000, MS * 60_000).take(10).collect();
        let b: Vec<_> = Backoff::new(MS * 1000, MS * 60_000).take(10).collect();
        assert_ne!(a, b, "two clients must not retry in lockstep");
    }

    #[test]
    fn reset_starts_again_and_factor_changes_growth() {
        let mut b = Backoff::new(10 * MS, 10_000 * MS).factor(3.0).jitter(false);
        assert_eq!(b.next_delay(), 10 * MS);
        assert_eq!(b.next_delay(), 30 * MS);
        assert_eq!(b.next_delay(), 90 * MS);
        b.reset();
        assert_eq!(b.next_delay(), 10 * MS);
        assert_eq!(b.clone().next_delay(), 10 * MS, "a clone starts over");
    }

    #[test]
    fn odd_settings_stay_sane() {
        let mut b = Backoff::new(500 * MS, 100 * MS).jitter(false);
        assert_eq!(b.max_delay(), 500 * MS, "max is raised to min");
        assert_eq!(b.next_delay(), 500 * MS);
        let mut flat = Backoff::new(50 * MS, 5000 * MS).factor(0.1).jitter(false);
        assert_eq!(flat.next_delay(), 50 * MS);
        assert_eq!(flat.next_delay(), 50 * MS);
        assert_eq!(
            Backoff::new(Duration::ZERO, Duration::ZERO).delay(5),
            Duration::ZERO
        );
    }
}
