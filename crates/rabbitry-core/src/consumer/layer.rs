//! Layers: functions around the handler, the way axum's
//! `middleware::from_fn` works. A layer gets the delivery and the rest of
//! the chain ([`Next`]); it runs the rest (once, several times, or not at
//! all) and returns the delivery's [`Disposition`].
//!
//! The chain, outermost first: poison-message guard → redelivery accounting
//! (classic queues) → immediate retries → the layers added with
//! [`ConsumerBuilder::layer`](super::ConsumerBuilder::layer), in the order
//! added → the handler (with its timeout). A user's layer therefore runs
//! once per handler attempt.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;

use super::delivery::Delivery;
use super::disposition::Disposition;
use super::handler::{Handler, HandlerError};
use super::telemetry::Counters;
use crate::publisher::BoxFuture;

/// A layer, boxed: what [`ConsumerBuilder::layer`](super::ConsumerBuilder::layer)
/// stores.
pub(crate) type Layer =
    Arc<dyn Fn(Delivery, Next) -> BoxFuture<'static, Disposition> + Send + Sync>;

/// Boxes a layer function.
pub(crate) fn from_fn<F, Fut>(f: F) -> Layer
where
    F: Fn(Delivery, Next) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Disposition> + Send + 'static,
{
    Arc::new(move |d, next| Box::pin(f(d, next)))
}

/// The rest of the chain after a layer. Cheap to clone: a retrying layer
/// runs it again.
///
/// ```
/// use std::time::Instant;
/// use rabbitry_core::{Delivery, Disposition, Next};
///
/// // A metrics timer: how long each handler attempt took, and how it ended.
/// async fn timed(d: Delivery, next: Next) -> Disposition {
///     let started = Instant::now();
///     let disposition = next.run(d).await;
///     tracing::info!(elapsed = ?started.elapsed(), outcome = disposition.as_str(), "handled");
///     disposition
/// }
///
/// // A tenant check that short-circuits: the handler never sees the message.
/// async fn tenant_only(d: Delivery, next: Next) -> Disposition {
///     match d.header("tenant").and_then(|t| t.as_str()) {
///         Some("acme") => next.run(d).await,
///         _ => Disposition::dead_letter("unknown tenant"),
///     }
/// }
/// # fn build(b: rabbitry_core::ConsumerBuilder) -> rabbitry_core::ConsumerBuilder {
/// b.layer(tenant_only).layer(timed)
/// # }
/// ```
#[derive(Clone)]
pub struct Next {
    chain: Arc<Chain>,
    index: usize,
}

impl std::fmt::Debug for Next {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Next")
            .field(
                "remaining_layers",
                &self.chain.layers.len().saturating_sub(self.index),
            )
            .finish_non_exhaustive()
    }
}

impl Next {
    /// Runs the rest of the chain: the next layer, or the handler.
    pub fn run(self, delivery: Delivery) -> BoxFuture<'static, Disposition> {
        match self.chain.layers.get(self.index) {
            Some(layer) => {
                let layer = layer.clone();
                let next = Next {
                    chain: self.chain,
                    index: self.index + 1,
                };
                layer(delivery, next)
            }
            None => Box::pin(self.chain.clone().handle(delivery)),
        }
    }
}

/// Layers and the handler at the end of them.
pub(crate) struct Chain {
    layers: Vec<Layer>,
    handler: Arc<dyn Handler>,
    timeout: Option<Duration>,
    counters: Arc<Counters>,
}

impl Chain {
    pub(crate) fn new(
        layers: Vec<Layer>,
        handler: Arc<dyn Handler>,
        timeout: Option<Duration>,
        counters: Arc<Counters>,
    ) -> Arc<Self> {
        Arc::new(Self {
            layers,
            handler,
            timeout,
            counters,
        })
    }

    /// The whole chain, from its outermost layer.
    pub(crate) fn start(self: &Arc<Self>) -> Next {
        Next {
            chain: self.clone(),
            index: 0,
        }
    }

    /// One handler attempt: a panic (while building its future or while
    /// running it) and a run past the timeout are retryable failures.
    async fn handle(self: Arc<Self>, d: Delivery) -> Disposition {
        let handler = self.handler.clone();
        let clock = std::time::Instant::now();
        let started = std::panic::catch_unwind(AssertUnwindSafe(|| handler.handle(d)));
        let result = match started {
            Err(panic) => Err(panicked(&panic)),
            Ok(future) => {
                let run = AssertUnwindSafe(future).catch_unwind();
                let outcome = match self.timeout {
                    Some(limit) => match tokio::time::timeout(limit, run).await {
                        Ok(outcome) => outcome,
                        Err(_) => {
                            Counters::bump(&self.counters.timed_out);
                            Ok(Err(HandlerError::retryable(format!(
                                "handler timed out after {limit:?}"
                            ))))
                        }
                    },
                    None => run.await,
                };
                outcome.unwrap_or_else(|panic| Err(panicked(&panic)))
            }
        };
        self.counters.handler_seconds.0.record(clock.elapsed());
        match &result {
            Ok(()) => Counters::bump(&self.counters.succeeded),
            Err(_) => Counters::bump(&self.counters.failed_attempts),
        }
        Disposition::from(result)
    }
}

fn panicked(panic: &Box<dyn std::any::Any + Send>) -> HandlerError {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    HandlerError::retryable(format!("handler panicked: {text}"))
}
