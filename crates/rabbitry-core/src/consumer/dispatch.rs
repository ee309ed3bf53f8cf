//! Dispatch strategies: when a delivery's handler may start.
//!
//! Every delivery gets its own task as it arrives (the prefetch bounds how
//! many); the task first waits for its [`Slot`] from the consumer's
//! [`Dispatch`] and holds it while the handler runs. The settle task does
//! not care in which order deliveries finish, so a strategy is free to
//! reorder, hold back or serialize them.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::delivery::Delivery;
use crate::publisher::BoxFuture;

/// Decides when a delivery's handler may start.
///
/// [`admit`](Self::admit) is called for each delivery in the order the
/// broker sent them, and the future it returns is polled once right away,
/// still in that order, before the delivery's own task awaits the rest. So
/// a future that joins a fair queue on its first poll (a tokio semaphore's
/// `acquire_owned`) keeps delivery order, even on a multi-threaded runtime
/// where tasks run in any order. A strategy that keeps order per key chains
/// the slots of that key in `admit` itself.
///
/// ```
/// use std::sync::Arc;
/// use rabbitry_core::{BoxFuture, Delivery, Dispatch, Slot};
/// use tokio::sync::Semaphore;
///
/// /// Small messages run 8 at a time, large ones one at a time.
/// struct BySize {
///     small: Arc<Semaphore>,
///     large: Arc<Semaphore>,
/// }
///
/// impl Dispatch for BySize {
///     fn admit(&self, delivery: &Delivery) -> BoxFuture<'static, Slot> {
///         let pool = if delivery.payload().len() > 1 << 20 { &self.large } else { &self.small };
///         let pool = pool.clone();
///         Box::pin(async move {
///             match pool.acquire_owned().await {
///                 Ok(permit) => Slot::new(permit),
///                 Err(_) => Slot::free(),
///             }
///         })
///     }
/// }
///
/// let by_size = BySize { small: Arc::new(Semaphore::new(8)), large: Arc::new(Semaphore::new(1)) };
/// # fn build(b: rabbitry_core::ConsumerBuilder, d: BySize) -> rabbitry_core::ConsumerBuilder {
/// b.dispatch(d)
/// # }
/// ```
pub trait Dispatch: Send + Sync + 'static {
    /// Resolves when `delivery`'s handler may start; the slot is held until
    /// the delivery is settled.
    fn admit(&self, delivery: &Delivery) -> BoxFuture<'static, Slot>;

    /// The most handlers that can run at once, if the strategy knows it (a
    /// prefetch below it is refused as leaving handlers idle).
    fn max_concurrency(&self) -> Option<usize> {
        None
    }

    /// Whether a delivery starts only after every earlier one with the same
    /// partition key was settled. Ordered consumption
    /// ([`ConsumerBuilder::ordered`](super::ConsumerBuilder::ordered)) is
    /// refused with a strategy that does not. Default: false.
    fn keeps_key_order(&self) -> bool {
        false
    }
}

/// What a delivery holds while its handler runs: dropping it lets the
/// strategy admit another.
#[must_use]
pub struct Slot(#[allow(dead_code)] Option<Box<dyn Send + Sync>>);

impl Slot {
    /// A slot that releases `held` (a semaphore permit, a lane's turn) when
    /// the delivery is settled.
    pub fn new(held: impl Send + Sync + 'static) -> Self {
        Self(Some(Box::new(held)))
    }
    /// A slot that holds nothing.
    pub fn free() -> Self {
        Self(None)
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Slot(held)"
        } else {
            "Slot(free)"
        })
    }
}

/// Up to `n` handlers at once, in any order: the default strategy
/// ([`ConsumerBuilder::concurrency`](super::ConsumerBuilder::concurrency)).
#[derive(Debug, Clone)]
pub struct Concurrent {
    permits: Arc<Semaphore>,
    n: usize,
}

impl Concurrent {
    /// At most `n` handlers at once.
    pub fn new(n: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(n)),
            n,
        }
    }
}

impl Dispatch for Concurrent {
    fn admit(&self, _: &Delivery) -> BoxFuture<'static, Slot> {
        let permits = self.permits.clone();
        Box::pin(async move {
            match permits.acquire_owned().await {
                Ok(permit) => Slot::new(permit),
                // Never closed; if it were, run rather than hang.
                Err(_) => Slot::free(),
            }
        })
    }

    fn max_concurrency(&self) -> Option<usize> {
        Some(self.n)
    }

    /// One at a time keeps every order, the key's included.
    fn keeps_key_order(&self) -> bool {
        self.n == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    #[tokio::test]
    async fn concurrent_admits_n_and_the_next_when_one_is_released() {
        let c = Concurrent::new(2);
        let m = Message::bytes("", "rk", "x");
        let d = Delivery::for_test("rk", "x", m.properties().clone());
        let a = c.admit(&d).await;
        let _b = c.admit(&d).await;
        let mut third = c.admit(&d);
        assert!(
            futures_util::FutureExt::now_or_never(&mut third).is_none(),
            "a third waits while two run"
        );
        drop(a);
        let _c = third.await;
    }
}
