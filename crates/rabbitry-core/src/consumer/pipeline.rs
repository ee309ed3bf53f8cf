//! One delivery's way through the consumer: admitted by the dispatch
//! strategy, run through the layers and the handler, its disposition
//! carried out by the executor, and exactly one decision sent to the settle
//! task (the [`SettleGuard`] sees to the "exactly one").

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::builder::{AckMode, Inner};
use super::builtin::{first_attempt, immediate_retries, poison_guard, redelivery_accounting};
use super::delivery::{Delivery, Execute, Manual};
use super::dispatch::Dispatch;
use super::disposition::Disposition;
use super::executor::{Executor, Sink};
use super::handler::Handler;
use super::layer::Chain;
use super::policy::RetryPolicy;
use super::settle::{SettleGuard, SettleMsg};
use super::telemetry::{Counters, process_span};
use crate::error::Result;
use crate::message::Message;
use crate::publisher::{BoxFuture, Publisher};
use crate::topology::Topology;

/// The consumer's publisher and broker, as the executor's sink.
struct Republisher {
    publisher: Publisher,
    broker: crate::connection::Broker,
}

impl Sink for Republisher {
    fn send(&self, message: Message) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.publisher.send(message))
    }
    fn declare(&self, topology: Topology) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { self.broker.declare(&topology).await })
    }
}

pub(crate) struct Pipeline {
    chain: Arc<Chain>,
    executor: Arc<Executor>,
    dispatch: Arc<dyn Dispatch>,
    mode: AckMode,
    queue: String,
    consumer: String,
    policy: RetryPolicy,
    counters: Arc<Counters>,
}

impl Pipeline {
    pub(crate) fn new(inner: &Inner, handler: Arc<dyn Handler>) -> Arc<Self> {
        let sink = Arc::new(Republisher {
            publisher: inner.publisher.clone(),
            broker: inner.broker.clone(),
        });
        let executor = Arc::new(Executor::new(
            sink,
            inner.queue.clone(),
            inner.error_exchange.clone(),
            inner.name.clone(),
            inner.retry.clone(),
            inner.counters.clone(),
        ));
        // rabbitry's own layers decide for the handler in auto mode only.
        let mut layers = Vec::new();
        if inner.ack_mode == AckMode::Auto {
            layers.push(poison_guard(inner.max_redeliveries));
            layers.push(redelivery_accounting(executor.clone()));
            layers.push(immediate_retries(inner.retry.clone()));
        }
        layers.extend(inner.layers.iter().cloned());
        Arc::new(Self {
            chain: Chain::new(
                layers,
                handler,
                inner.handler_timeout,
                inner.counters.clone(),
            ),
            executor,
            dispatch: inner.dispatch.clone(),
            mode: inner.ack_mode,
            queue: inner.queue.clone(),
            consumer: inner.name.clone(),
            policy: inner.retry.clone(),
            counters: inner.counters.clone(),
        })
    }

    /// Hands `delivery` to a task of its own. `settle` is the channel's
    /// settle task (none in [`AckMode::None`]).
    pub(crate) fn dispatch(
        self: &Arc<Self>,
        delivery: lapin::message::Delivery,
        settle: &mpsc::UnboundedSender<SettleMsg>,
        tasks: &mut JoinSet<()>,
        shutdown: &CancellationToken,
    ) {
        let c = &self.counters;
        Counters::bump(&c.delivered);
        if delivery.redelivered {
            Counters::bump(&c.redelivered);
        }
        let tag = delivery.delivery_tag;
        let mut guard = None;
        if self.mode != AckMode::None {
            if !delivery.acker.usable() {
                // Read just before its channel was lost: it can no longer be
                // settled, and the broker delivers it again.
                Counters::bump(&c.stale);
                tracing::debug!(
                    consumer = self.consumer,
                    tag,
                    "delivery from a lost channel; not handling it"
                );
                return;
            }
            guard = Some(SettleGuard::new(settle, tag, delivery.acker.clone()));
        }
        let manual = match self.mode {
            AckMode::Manual => Some(Manual {
                guard: Mutex::new(guard.take()),
                execute: self.execute(),
                consumer: self.consumer.clone(),
            }),
            _ => None,
        };
        let d = Delivery::from_lapin(&self.queue, delivery, manual);
        d.set_attempt(first_attempt(&d, &self.policy));
        let admission = self.dispatch.admit(&d);
        let span = process_span(&self.consumer, &d, tag);
        let this = self.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(
            async move {
                let slot = tokio::select! {
                    biased;
                    slot = admission => slot,
                    () = shutdown.cancelled() => {
                        // It never started: the guard gives it back.
                        if guard.is_some() {
                            Counters::bump(&this.counters.requeued);
                        }
                        return;
                    }
                };
                this.process(d, guard).await;
                drop(slot);
            }
            .instrument(span),
        );
    }

    async fn process(&self, d: Delivery, guard: Option<SettleGuard>) {
        let disposition = self.chain.start().run(d.clone()).await;
        match (self.mode, guard) {
            (AckMode::Auto, Some(guard)) => {
                let decision = self.executor.execute(&d, disposition).await;
                guard.send(decision);
            }
            (AckMode::None, _) => {
                if let Disposition::Retry { reason, .. } | Disposition::DeadLetter { reason, .. } =
                    &disposition
                {
                    tracing::error!(
                        error = reason,
                        "handler failed in no-ack mode; the message is gone (at-most-once)"
                    );
                }
            }
            // Manual: the handler settled (or the delivery's drop gives it
            // back); its result is only logged.
            _ => {
                if let Disposition::Retry { reason, .. } | Disposition::DeadLetter { reason, .. } =
                    &disposition
                {
                    tracing::warn!(error = reason, "manual handler returned an error");
                }
            }
        }
    }

    /// How a manual delivery's [`Delivery::settle`] is carried out.
    fn execute(&self) -> Execute {
        let executor = self.executor.clone();
        Arc::new(move |d: Delivery, disposition: Disposition| {
            let executor = executor.clone();
            Box::pin(async move { executor.execute(&d, disposition).await })
        })
    }
}
