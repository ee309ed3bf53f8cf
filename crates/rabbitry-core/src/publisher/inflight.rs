//! The publishes in flight on a publisher and its clones, counted so that
//! `flush` can wait for those started before it, and `close` can refuse
//! new ones.
//!
//! The publish path pays one atomic load and one atomic increment going in,
//! one atomic decrement going out: a publish joins the counter of the
//! current epoch. A flush moves new publishes to the other counter (flips
//! the epoch) and waits for the old one to drain, so that publishes started
//! after it never keep it waiting; flushes take turns, and one that follows
//! a flush that gave up first waits for what that one left behind.
//!
//! Each counter's word also holds two flags: `CLOSED`, which the increment
//! reads back (so refusing a publish after `close` costs nothing more), and
//! `WATCHED`, set while a flush waits on it, so that only then does the
//! last publish out wake anybody.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use tokio::sync::{Mutex, Notify};

const CLOSED: usize = 1 << (usize::BITS - 1);
const WATCHED: usize = 1 << (usize::BITS - 2);
const COUNT: usize = !(CLOSED | WATCHED);

/// The publishes of one epoch.
#[derive(Default)]
struct Gate {
    word: AtomicUsize,
    drained: Notify,
}

impl Gate {
    fn count(&self) -> usize {
        self.word.load(SeqCst) & COUNT
    }

    /// Resolves once no publish of this gate is in flight. Dropped early
    /// (a flush timed out), it stops watching.
    async fn drained(&self) {
        self.word.fetch_or(WATCHED, SeqCst);
        let _unwatch = Unwatch(self);
        loop {
            let woken = self.drained.notified();
            tokio::pin!(woken);
            // Registered before the count is read: a publish that leaves
            // after the read wakes it.
            woken.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            woken.await;
        }
    }
}

struct Unwatch<'a>(&'a Gate);

impl Drop for Unwatch<'_> {
    fn drop(&mut self) {
        self.0.word.fetch_and(!WATCHED, SeqCst);
    }
}

/// The in-flight publishes of a publisher.
#[derive(Default)]
pub(crate) struct InFlight {
    /// Which gate new publishes join: 0 or 1.
    epoch: AtomicUsize,
    gates: [Gate; 2],
    /// Flushes take turns.
    flushing: Mutex<()>,
}

/// One publish in flight; leaving (dropped with the publish's future,
/// however it ends) counts it out.
pub(super) struct Ticket<'a>(&'a Gate);

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let before = self.0.word.fetch_sub(1, SeqCst);
        if before & COUNT == 1 && before & WATCHED != 0 {
            self.0.drained.notify_waiters();
        }
    }
}

impl InFlight {
    /// Counts a publish in; `None` once the publisher is closed (then
    /// nothing is counted).
    pub(super) fn enter(&self) -> Option<Ticket<'_>> {
        let gate = &self.gates[self.epoch.load(SeqCst) & 1];
        let before = gate.word.fetch_add(1, SeqCst);
        let ticket = Ticket(gate);
        (before & CLOSED == 0).then_some(ticket)
    }

    /// Refuses every publish from now on. Any publish counted in before
    /// this is waited for by the next flush.
    pub(super) fn close(&self) {
        for gate in &self.gates {
            gate.word.fetch_or(CLOSED, SeqCst);
        }
    }

    pub(super) fn is_closed(&self) -> bool {
        self.gates[0].word.load(SeqCst) & CLOSED != 0
    }

    /// Publishes in flight now.
    pub(super) fn pending(&self) -> usize {
        self.gates.iter().map(Gate::count).sum()
    }

    /// Resolves once every publish counted in before the call has left.
    /// Unbounded: the caller bounds it.
    pub(super) async fn settled(&self) {
        let _turn = self.flushing.lock().await;
        let current = self.epoch.load(SeqCst) & 1;
        // Left behind by a flush that gave up: older still.
        self.gates[1 - current].drained().await;
        self.epoch.store(1 - current, SeqCst);
        self.gates[current].drained().await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_flush_waits_for_earlier_publishes_only() {
        let inflight = InFlight::default();
        let early = inflight.enter().expect("open");
        let settled = inflight.settled();
        tokio::pin!(settled);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), settled.as_mut())
                .await
                .is_err(),
            "waits for the early publish"
        );
        // Started after the flush: it does not hold the flush up.
        let late = inflight.enter().expect("open");
        drop(early);
        tokio::time::timeout(Duration::from_secs(5), settled)
            .await
            .expect("settled without the late publish");
        assert_eq!(inflight.pending(), 1);
        drop(late);
        assert_eq!(inflight.pending(), 0);
    }

    #[tokio::test]
    async fn a_flush_after_one_that_gave_up_waits_for_its_leftovers() {
        let inflight = InFlight::default();
        let straggler = inflight.enter().expect("open");
        assert!(
            tokio::time::timeout(Duration::from_millis(20), inflight.settled())
                .await
                .is_err()
        );
        let next = inflight.settled();
        tokio::pin!(next);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), next.as_mut())
                .await
                .is_err(),
            "the straggler started before this flush too"
        );
        drop(straggler);
        tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .expect("settled");
    }

    #[test]
    fn a_closed_gate_refuses_and_counts_nothing() {
        let inflight = InFlight::default();
        let held = inflight.enter();
        inflight.close();
        assert!(inflight.is_closed());
        assert!(inflight.enter().is_none());
        assert_eq!(inflight.pending(), 1, "the refused one left at once");
        drop(held);
        assert_eq!(inflight.pending(), 0);
    }

    #[tokio::test]
    async fn many_publishes_across_flushes_all_count_out() {
        let inflight = std::sync::Arc::new(InFlight::default());
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let inflight = inflight.clone();
            tasks.spawn(async move {
                for _ in 0..1000 {
                    let ticket = inflight.enter();
                    tokio::task::yield_now().await;
                    drop(ticket);
                }
            });
        }
        for _ in 0..50 {
            tokio::time::timeout(Duration::from_secs(5), inflight.settled())
                .await
                .expect("every flush ends");
        }
        while tasks.join_next().await.is_some() {}
        assert_eq!(inflight.pending(), 0);
    }
}
