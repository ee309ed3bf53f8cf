//! Per-key lanes: messages with different partition keys run in parallel
//! (up to a concurrency), messages with the same key one after another, in
//! delivery order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{Semaphore, oneshot};

use super::delivery::Delivery;
use super::dispatch::{Dispatch, Slot};
use crate::publisher::BoxFuture;

/// A [`Dispatch`] strategy that keeps order per partition key: a delivery
/// starts only after every earlier delivery with the same key was settled,
/// and at most `concurrency` handlers run at once.
///
/// Deliveries without a partition key share one lane (they keep their
/// order among themselves). With one consumer per partition queue (single
/// active consumer), one key's messages are handled strictly in order
/// across the whole system.
///
/// A lane waiting for its key still holds its delivery's prefetch slot:
/// many messages of one hot key in a row fill the prefetch and leave other
/// keys waiting behind them. Raise the prefetch well above the concurrency
/// when keys are skewed.
///
/// ```no_run
/// # fn f(b: rabbitry_core::ConsumerBuilder) -> rabbitry_core::ConsumerBuilder {
/// use rabbitry_core::Lanes;
/// b.dispatch(Lanes::new(8)).prefetch(64)
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Lanes {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    permits: Arc<Semaphore>,
    concurrency: usize,
    tails: Mutex<Tails>,
}

/// The last delivery admitted per key: its id, and what resolves when it
/// is settled. A key is removed when its last delivery is settled.
#[derive(Debug, Default)]
struct Tails {
    next_id: u64,
    by_key: HashMap<String, (u64, oneshot::Receiver<()>)>,
}

impl Lanes {
    /// Lanes with at most `concurrency` handlers running at once.
    pub fn new(concurrency: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                permits: Arc::new(Semaphore::new(concurrency)),
                concurrency,
                tails: Mutex::new(Tails::default()),
            }),
        }
    }

    /// Keys with a delivery admitted and not yet settled.
    pub fn active_keys(&self) -> usize {
        self.inner.tails().by_key.len()
    }
}

impl Inner {
    fn tails(&self) -> std::sync::MutexGuard<'_, Tails> {
        self.tails.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Held by a running delivery: dropping it lets the next of its key start
/// and frees its concurrency permit.
struct Turn {
    inner: Arc<Inner>,
    key: String,
    id: u64,
    _done: oneshot::Sender<()>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut tails = self.inner.tails();
        if tails
            .by_key
            .get(&self.key)
            .is_some_and(|(id, _)| *id == self.id)
        {
            // No later delivery of this key is waiting: forget the key.
            tails.by_key.remove(&self.key);
        }
    }
}

/// An admission not granted yet. Dropped while its predecessor still runs
/// (its task stopped at shutdown), its turn must not end before the
/// predecessor's does: the next delivery of the key would start while an
/// earlier one is still running. So the turn is handed on: it ends when the
/// predecessor's does.
struct Waiting {
    previous: Option<oneshot::Receiver<()>>,
    turn: Option<Turn>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let (Some(mut previous), Some(turn)) = (self.previous.take(), self.turn.take()) else {
            return;
        };
        if !matches!(
            previous.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ) {
            return; // The predecessor is done: the turn may end now.
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let _ = previous.await;
                    drop(turn);
                });
            }
            // Dropped outside a runtime (never by the consumer): a thread
            // waits instead.
            Err(_) => {
                std::thread::spawn(move || {
                    let _ = previous.blocking_recv();
                    drop(turn);
                });
            }
        }
    }
}

impl Dispatch for Lanes {
    fn admit(&self, delivery: &Delivery) -> BoxFuture<'static, Slot> {
        let key = delivery.key().unwrap_or_default().to_owned();
        let (done, settled) = oneshot::channel();
        // Joined here, synchronously and in delivery order.
        let (id, previous) = {
            let mut tails = self.inner.tails();
            tails.next_id = tails.next_id.wrapping_add(1);
            let id = tails.next_id;
            (id, tails.by_key.insert(key.clone(), (id, settled)))
        };
        let turn = Turn {
            inner: self.inner.clone(),
            key,
            id,
            _done: done,
        };
        let mut waiting = Waiting {
            previous: previous.map(|(_, settled)| settled),
            turn: Some(turn),
        };
        let permits = self.inner.permits.clone();
        Box::pin(async move {
            if let Some(previous) = waiting.previous.as_mut() {
                // Resolves (with an error) when the previous turn is dropped.
                let _ = previous.await;
            }
            waiting.previous = None;
            let turn = waiting.turn.take();
            match permits.acquire_owned().await {
                Ok(permit) => Slot::new((turn, permit)),
                // Never closed; if it were, run rather than hang.
                Err(_) => Slot::new(turn),
            }
        })
    }

    fn max_concurrency(&self) -> Option<usize> {
        Some(self.inner.concurrency)
    }

    fn keeps_key_order(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;
    use crate::message::Message;

    fn delivery(key: &str) -> Delivery {
        let m = Message::bytes("", "rk", "x").partition_key(key);
        Delivery::for_test("rk", "x", m.properties().clone())
    }

    #[tokio::test]
    async fn the_same_key_waits_and_other_keys_run_up_to_the_concurrency() {
        let lanes = Lanes::new(2);
        let a1 = lanes.admit(&delivery("a")).await;
        let mut a2 = lanes.admit(&delivery("a"));
        let b1 = lanes.admit(&delivery("b")).await;
        let mut c1 = lanes.admit(&delivery("c"));
        assert!((&mut a2).now_or_never().is_none(), "a2 waits for a1");
        assert!((&mut c1).now_or_never().is_none(), "c1 waits for a permit");
        drop(b1);
        let c1 = c1.await;
        let mut a3 = lanes.admit(&delivery("a"));
        drop(a1);
        let a2 = a2.await;
        assert!((&mut a3).now_or_never().is_none(), "a3 waits for a2");
        drop(a2);
        drop(a3.await);
        drop(c1);
        assert_eq!(lanes.active_keys(), 0, "settled keys are forgotten");
    }

    #[tokio::test]
    async fn a_key_runs_in_admission_order_even_when_its_tasks_run_out_of_order() {
        let lanes = Lanes::new(8);
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..50 {
            let admission = lanes.admit(&delivery("k"));
            let log = log.clone();
            tasks.push(async move {
                let _slot = admission.await;
                log.lock().expect("log").push(i);
                tokio::task::yield_now().await;
            });
        }
        tasks.reverse();
        let handles: Vec<_> = tasks.into_iter().map(tokio::spawn).collect();
        for h in handles {
            h.await.expect("task");
        }
        assert_eq!(*log.lock().expect("log"), (0..50).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn an_admission_dropped_while_waiting_does_not_let_the_next_overtake() {
        let lanes = Lanes::new(4);
        let first = lanes.admit(&delivery("k")).await;
        let mut second = lanes.admit(&delivery("k"));
        let mut third = lanes.admit(&delivery("k"));
        assert!((&mut second).now_or_never().is_none());
        // The second's task stops (shutdown) before its turn came.
        drop(second);
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        assert!(
            (&mut third).now_or_never().is_none(),
            "the third must wait for the first, which still runs"
        );
        drop(first);
        let third = tokio::time::timeout(std::time::Duration::from_secs(5), third)
            .await
            .expect("the third starts once the first is done");
        drop(third);
        tokio::task::yield_now().await;
        assert_eq!(lanes.active_keys(), 0, "settled keys are forgotten");
    }

    #[tokio::test]
    async fn deliveries_without_a_key_share_one_lane() {
        let lanes = Lanes::new(4);
        let m = Message::bytes("", "rk", "x");
        let d = Delivery::for_test("rk", "x", m.properties().clone());
        let first = lanes.admit(&d).await;
        let mut second = lanes.admit(&d);
        assert!((&mut second).now_or_never().is_none());
        drop(first);
        let _second = second.await;
    }
}
