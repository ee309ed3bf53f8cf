//! One counter, read two ways: a local number for the component's own
//! `metrics()` snapshot, and a [`metrics`] counter for the application's
//! exporter (Prometheus, OpenTelemetry, StatsD: whatever recorder it
//! installed). The handle is registered once, when the component is built,
//! so counting costs an atomic add on each side, not a registry lookup.
//!
//! Install the recorder before building publishers and consumers: handles
//! registered before a recorder exists count locally only (the `metrics`
//! crate's usual rule).

use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{Counter, Label};

/// A counter with a local value and an exported twin.
pub(crate) struct Count {
    local: AtomicU64,
    exported: Counter,
}

impl Default for Count {
    /// Counts locally only (tests, components without labels).
    fn default() -> Self {
        Self {
            local: AtomicU64::new(0),
            exported: Counter::noop(),
        }
    }
}

impl std::fmt::Debug for Count {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

impl Count {
    /// A counter exported as `name` with `labels`.
    pub(crate) fn named(name: &'static str, labels: &[Label]) -> Self {
        Self {
            local: AtomicU64::new(0),
            exported: metrics::counter!(name, labels.iter()),
        }
    }

    pub(crate) fn bump(&self) {
        self.add(1);
    }

    pub(crate) fn add(&self, n: u64) {
        self.local.fetch_add(n, Ordering::Relaxed);
        self.exported.increment(n);
    }

    pub(crate) fn get(&self) -> u64 {
        self.local.load(Ordering::Relaxed)
    }
}

/// Labels from `(key, value)` pairs.
pub(crate) fn labels(pairs: &[(&'static str, &str)]) -> Vec<Label> {
    pairs
        .iter()
        .map(|(k, v)| Label::new(*k, v.to_string()))
        .collect()
}
