//! The ledger: what the producer handed to rabbitry and what came of it,
//! and every effect the consumer's handler had, keyed by message id. From
//! it, the Jepsen-style counts: lost, duplicate effects, unexpected, and
//! the time to recover after a fault.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How one publish ended, as the caller saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Confirmed,
    Deferred,
    Failed,
}

#[derive(Default)]
struct State {
    /// Every id handed to `publish`, with when.
    sent: HashMap<String, Instant>,
    outcomes: HashMap<String, (Outcome, Instant)>,
    /// Effects per id, with the time of the first.
    effects: HashMap<String, (u32, Instant)>,
    /// Effects seen inside a window the test marks as "none allowed".
    forbidden_effects: u64,
    /// When the consumer said it was consuming again.
    consuming_since: Vec<Instant>,
}

/// Shared by the producer and the consumer's handler.
#[derive(Default)]
pub struct Ledger {
    state: Mutex<State>,
    forbid: Mutex<Option<Instant>>,
}

impl Ledger {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("ledger lock")
    }

    pub fn sent(&self, id: &str) {
        self.state().sent.insert(id.to_owned(), Instant::now());
    }

    pub fn outcome(&self, id: &str, outcome: Outcome) {
        self.state()
            .outcomes
            .insert(id.to_owned(), (outcome, Instant::now()));
    }

    /// The handler's effect for `id` (called once per handler run).
    pub fn effect(&self, id: &str) {
        let forbidden = self.forbid.lock().expect("lock").is_some();
        let mut s = self.state();
        if forbidden {
            s.forbidden_effects += 1;
        }
        s.effects
            .entry(id.to_owned())
            .and_modify(|(n, _)| *n += 1)
            .or_insert((1, Instant::now()));
    }

    /// The consumer reports that it consumes (again).
    pub fn consuming(&self) {
        self.state().consuming_since.push(Instant::now());
    }

    /// From now until [`allow_effects`](Self::allow_effects), any effect is
    /// counted as forbidden (a consumer that must fail closed).
    pub fn forbid_effects(&self) {
        *self.forbid.lock().expect("lock") = Some(Instant::now());
    }

    pub fn allow_effects(&self) {
        *self.forbid.lock().expect("lock") = None;
    }

    pub fn forbidden_effects(&self) -> u64 {
        self.state().forbidden_effects
    }

    pub fn effects(&self) -> usize {
        self.state().effects.len()
    }

    pub fn count(&self, outcome: Outcome) -> usize {
        self.state()
            .outcomes
            .values()
            .filter(|(o, _)| *o == outcome)
            .count()
    }

    /// The longest a failed publish took to return its error.
    pub fn slowest_failure(&self) -> Duration {
        let s = self.state();
        s.outcomes
            .iter()
            .filter(|(_, (o, _))| *o == Outcome::Failed)
            .filter_map(|(id, (_, at))| Some(at.saturating_duration_since(*s.sent.get(id)?)))
            .max()
            .unwrap_or_default()
    }

    pub fn sent_count(&self) -> usize {
        self.state().sent.len()
    }

    /// Whether every accepted message (confirmed or deferred) had its effect.
    pub fn all_accepted_consumed(&self) -> bool {
        let s = self.state();
        s.outcomes
            .iter()
            .filter(|(_, (o, _))| *o != Outcome::Failed)
            .all(|(id, _)| s.effects.contains_key(id))
    }

    /// How long after `since` the system worked again: the later of the
    /// first confirm of a message sent after `since`, and the first effect
    /// after the consumer was consuming again (its first return to
    /// `Consuming` after `since`, or `since` if it never left it). `None` if
    /// either never came. The backlog that piled up meanwhile is not
    /// counted: a message sent after `since` may wait behind it.
    pub fn recovered_after(&self, since: Instant) -> Option<Duration> {
        let s = self.state();
        let confirm = s
            .outcomes
            .iter()
            .filter(|(id, (o, _))| {
                *o == Outcome::Confirmed && s.sent.get(*id).is_some_and(|t| *t >= since)
            })
            .map(|(_, (_, t))| *t)
            .min()?;
        let back = s
            .consuming_since
            .iter()
            .copied()
            .filter(|t| *t >= since)
            .min()
            .unwrap_or(since);
        let effect = s
            .effects
            .values()
            .map(|(_, t)| *t)
            .filter(|t| *t >= back)
            .min()?;
        Some(confirm.max(effect).saturating_duration_since(since))
    }

    /// The counts, with `transport_duplicates` (deliveries the idempotency
    /// layer acked without running the handler) and `recovery` from the
    /// test.
    pub fn summary(&self, transport_duplicates: u64, recovery: Option<Duration>) -> Summary {
        let s = self.state();
        let accepted: HashSet<&String> = s
            .outcomes
            .iter()
            .filter(|(_, (o, _))| *o != Outcome::Failed)
            .map(|(id, _)| id)
            .collect();
        let count = |want: Outcome| s.outcomes.values().filter(|(o, _)| *o == want).count();
        Summary {
            sent: s.sent.len(),
            accepted: accepted.len(),
            confirmed: count(Outcome::Confirmed),
            deferred: count(Outcome::Deferred),
            failed: count(Outcome::Failed),
            consumed: s.effects.len(),
            transport_duplicates,
            duplicate_effects: s.effects.values().map(|(n, _)| u64::from(n - 1)).sum(),
            lost: accepted
                .iter()
                .filter(|id| !s.effects.contains_key(**id))
                .count(),
            unexpected: s.effects.keys().filter(|id| !accepted.contains(id)).count(),
            recovery,
        }
    }
}

/// The figures of one run.
#[derive(Clone, Debug)]
pub struct Summary {
    pub sent: usize,
    pub accepted: usize,
    pub confirmed: usize,
    pub deferred: usize,
    /// Publishes that returned an error to the caller (not accepted).
    pub failed: usize,
    /// Distinct messages whose effect happened.
    pub consumed: usize,
    pub transport_duplicates: u64,
    pub duplicate_effects: u64,
    pub lost: usize,
    pub unexpected: usize,
    pub recovery: Option<Duration>,
}

impl Summary {
    /// Prints the one-line summary.
    pub fn print(&self, scenario: &str) {
        let recovery = self
            .recovery
            .map_or_else(|| "none".to_owned(), |d| format!("{:.2}s", d.as_secs_f64()));
        eprintln!(
            "NOLOSS {scenario}: sent={} accepted={} confirmed={} deferred={} failed={} \
             consumed={} transport_duplicates={} duplicate_effects={} lost={} unexpected={} \
             recovery={recovery}",
            self.sent,
            self.accepted,
            self.confirmed,
            self.deferred,
            self.failed,
            self.consumed,
            self.transport_duplicates,
            self.duplicate_effects,
            self.lost,
            self.unexpected,
        );
    }

    /// The promise: nothing accepted was lost, no effect happened twice,
    /// nothing arrived that was not accepted, and the system recovered
    /// within 30 s.
    pub fn assert_no_loss(&self, scenario: &str) {
        self.print(scenario);
        assert_eq!(self.lost, 0, "{scenario}: accepted messages were lost");
        assert_eq!(
            self.duplicate_effects, 0,
            "{scenario}: effects happened twice"
        );
        assert_eq!(
            self.unexpected, 0,
            "{scenario}: messages nobody accepted arrived"
        );
        let recovery = self.recovery.expect("the system never recovered");
        assert!(
            recovery < Duration::from_secs(30),
            "{scenario}: recovery took {recovery:?}"
        );
    }
}
