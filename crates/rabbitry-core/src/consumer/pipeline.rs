//! One delivery's way through the consumer: admitted by the dispatch
//! strategy, run through the layers and the handler, its disposition
//! carried out by the executor, and exactly one decision sent to the settle
//! task (the [`SettleGuard`] sees to the "exactly one").

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use futures_util::FutureExt;

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
use super::ordered::ordered_retries;
use super::policy::RetryPolicy;
use super::settle::{SettleGuard, SettleMsg};
use super::telemetry::{Counters, SpanFields, process_span};
use crate::error::Result;
use crate::message::{Message, TRACEPARENT_HEADER};
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
    /// Cancelled at the shutdown timeout: stops the handlers (their
    /// deliveries are given back), but not a republish already under way,
    /// whose ack must follow its confirm.
    stop_handlers: CancellationToken,
}

impl Pipeline {
    pub(crate) fn new(inner: &Inner, handler: Arc<dyn Handler>) -> Arc<Self> {
        let sink = Arc::new(Republisher {
            publisher: inner.publisher.clone(),
            broker: inner.broker.clone(),
        });
        let stop_handlers = CancellationToken::new();
        let executor = Executor::new(
            sink,
            inner.queue.clone(),
            inner.error_exchange.clone(),
            inner.name.clone(),
            inner.retry.clone(),
            inner.counters.clone(),
            // Auto mode declares the policy's retry queues when it
            // subscribes; a manual handler's retries declare theirs on use.
            inner.ack_mode == AckMode::Auto,
        );
        let executor = Arc::new(match inner.ordered {
            Some(_) => executor.in_place(stop_handlers.clone()),
            None => executor,
        });
        // rabbitry's own layers decide for the handler in auto mode only.
        let mut layers = Vec::new();
        match (inner.ack_mode, inner.ordered) {
            // Ordered: no redelivery accounting either, since its copy goes
            // to the back of the queue (partition queues are quorum queues,
            // which count redeliveries themselves).
            (AckMode::Auto, Some(ordered)) => {
                layers.push(poison_guard(inner.max_redeliveries));
                layers.push(ordered_retries(ordered));
            }
            (AckMode::Auto, None) => {
                layers.push(poison_guard(inner.max_redeliveries));
                layers.push(redelivery_accounting(executor.clone()));
                layers.push(immediate_retries(inner.retry.clone()));
            }
            _ => {}
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
            stop_handlers,
        })
    }

    /// Hands `delivery` to a task of its own. `settle` is the channel's
    /// settle task (unused in [`AckMode::None`]).
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
        let acker = delivery.acker.clone();
        let acked = self.mode != AckMode::None;
        if acked && !acker.usable() {
            self.stale(tag);
            return;
        }
        let mut guard = acked.then(|| SettleGuard::new(settle, tag, acker.clone()));
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
        // Polled once here, in delivery order: a strategy's queue (a
        // semaphore's waiters, a lane) is joined in the order the broker
        // sent the messages, not in the order their tasks happen to run.
        let mut admission = self.dispatch.admit(&d);
        let early = admission
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()));
        let traceparent = d
            .header(TRACEPARENT_HEADER)
            .and_then(|h| h.as_str())
            .unwrap_or("");
        let span = process_span(&SpanFields {
            consumer: &self.consumer,
            queue: d.queue(),
            message_id: d.id(),
            routing_key: d.routing_key(),
            traceparent: crate::trace_context::recorded(traceparent),
            tag,
        });
        crate::trace_context::continue_in(&span, traceparent);
        let this = self.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(
            async move {
                let slot = match early {
                    Poll::Ready(slot) => slot,
                    Poll::Pending => tokio::select! {
                        biased;
                        slot = admission => slot,
                        // It never started: the guard (or the manual
                        // delivery's drop) gives it back.
                        () = shutdown.cancelled() => return,
                    },
                };
                if shutdown.is_cancelled() {
                    // Admitted only now, at shutdown: it never started, so
                    // it is given back like the others that did not.
                    return;
                }
                if acked && !acker.usable() {
                    // Its channel was lost while it waited: the broker
                    // delivers it again, maybe to a handler running now.
                    this.stale(tag);
                    return;
                }
                this.process(d, guard).await;
                drop(slot);
            }
            .instrument(span),
        );
    }

    fn stale(&self, tag: u64) {
        Counters::bump(&self.counters.stale);
        tracing::debug!(
            consumer = self.consumer,
            tag,
            "delivery from a lost channel; not handling it"
        );
    }

    /// Stops every handler still running (the shutdown timeout). Their
    /// deliveries are given back; republishes already under way finish.
    pub(crate) fn stop_handlers(&self) {
        self.stop_handlers.cancel();
    }

    async fn process(&self, d: Delivery, guard: Option<SettleGuard>) {
        // A layer of the user's may panic too: a retryable failure.
        let run = AssertUnwindSafe(self.chain.start().run(d.clone())).catch_unwind();
        let run = tokio::select! {
            biased;
            ran = run => ran,
            // Stopped: the guard (or the manual delivery's drop) gives the
            // delivery back.
            () = self.stop_handlers.cancelled() => return,
        };
        let disposition = run.unwrap_or_else(|_| {
            tracing::error!("a consumer layer panicked");
            Disposition::retry("a consumer layer panicked")
        });
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
