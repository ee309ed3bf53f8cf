//! The consumer's run loop: subscribe, take deliveries in, hand each to the
//! pipeline; on a lost subscription keep the old channel until its handlers
//! are done and subscribe again with backoff; on shutdown, drain.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::backlog::poll_backlog;
use super::builder::{Consumer, ConsumerState, Inner};
use super::handler::Handler;
use super::pipeline::Pipeline;
use super::settle::{SettleMsg, settle_task};
use super::subscription::{Subscription, subscribe};
use crate::backoff::Backoff;
use crate::bounded::close_channel;
use crate::connection::outage::WarnThrottle;
use crate::connection::{ConnectionState, Role};
use crate::error::Result;

/// Backoff between subscriptions: from 200 ms, doubling up to 10 s.
fn resubscribe_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(200), Duration::from_secs(10))
}
/// A subscription that lasted this long resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);
/// How long settling may take once every handler is done.
const SETTLE_LIMIT: Duration = Duration::from_secs(10);

/// One subscription and its settle task.
struct Live {
    sub: Subscription,
    settle: mpsc::UnboundedSender<SettleMsg>,
    settler: JoinHandle<()>,
    since: Instant,
}

/// Why a subscription ended.
enum Ended {
    Shutdown,
    Lost { reason: String, connection: bool },
}

impl Consumer {
    /// Consumes until `shutdown` is cancelled, then drains: stops intake,
    /// gives back deliveries that did not start, lets running handlers
    /// finish within the shutdown timeout (then stops them and gives their
    /// deliveries back), settles everything and closes the channel.
    ///
    /// A subscription the broker cancels (queue deleted, node lost) or a
    /// channel that fails is re-established with backoff; the state says so.
    /// The old channel stays open until its running handlers are done, so
    /// their messages are not redelivered to a second consumer meanwhile.
    ///
    /// Fails at once, without retrying, when the first subscription cannot
    /// succeed (a queue that does not exist, a refused declaration).
    pub async fn run(&self, handler: impl Handler, shutdown: CancellationToken) -> Result<()> {
        let inner = &self.inner;
        let pipeline = Pipeline::new(inner, Arc::new(handler));
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut retiring: JoinSet<()> = JoinSet::new();
        let mut backoff = resubscribe_backoff();
        let mut subscribed_once = false;
        let mut connection = inner.broker.watch_state(Role::Consume);
        let mut unparseable = inner.broker.watch_unparseable(Role::Consume);
        let mut warn = WarnThrottle::default();
        // Stopped when `run` returns, however it returns.
        let backlog = shutdown.child_token();
        let _stop_backlog = backlog.clone().drop_guard();
        if !inner.backlog_poll.is_zero() {
            tokio::spawn(poll_backlog(
                inner.broker.clone(),
                inner.queue.clone(),
                inner.backlog_poll,
                inner.backlog.clone(),
                backlog,
            ));
        }

        while !shutdown.is_cancelled() {
            let subscribed = tokio::select! {
                r = subscribe(inner) => r,
                () = shutdown.cancelled() => break,
            };
            let sub = match subscribed {
                Ok(sub) => sub,
                Err(error) if !subscribed_once && !error.is_retryable() => {
                    tracing::error!(consumer = inner.name, queue = inner.queue, %error, "cannot start consuming");
                    inner.state.send_replace(ConsumerState::Stopped);
                    return Err(error);
                }
                Err(error) => {
                    // Rate-limited: during an outage this fails every few
                    // seconds.
                    if let Some(suppressed) = warn.hit(Instant::now()) {
                        tracing::warn!(consumer = inner.name, queue = inner.queue, %error, suppressed, "subscribing failed; retrying");
                    }
                    inner.state.send_replace(ConsumerState::Recovering {
                        reason: error.to_string(),
                    });
                    if !pause(&shutdown, &mut connection, &mut backoff, true).await {
                        break;
                    }
                    continue;
                }
            };
            subscribed_once = true;
            warn.reset();
            let (settle, rx) = mpsc::unbounded_channel();
            let mut live = Live {
                sub,
                settle,
                settler: tokio::spawn(settle_task(rx, inner.name.clone(), inner.counters.clone())),
                since: Instant::now(),
            };
            inner.state.send_replace(ConsumerState::Consuming);
            tracing::info!(consumer = inner.name, queue = inner.queue, "consuming");
            connection.borrow_and_update();
            unparseable.borrow_and_update();

            let ended = loop {
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break Ended::Shutdown,
                    Some(done) = tasks.join_next(), if !tasks.is_empty() => log_panic(inner, done),
                    Some(done) = retiring.join_next(), if !retiring.is_empty() => log_panic(inner, done),
                    Ok(()) = connection.changed() => {
                        let state = connection.borrow_and_update().clone();
                        // With several consuming connections, another one's
                        // loss is not this subscription's.
                        if matches!(state, ConnectionState::Reconnecting | ConnectionState::Closed)
                            && !live.sub.channel.status().connected()
                        {
                            break Ended::Lost { reason: format!("consuming connection {state}"), connection: true };
                        }
                    }
                    next = live.sub.stream.next() => match next {
                        Some(Ok(delivery)) => pipeline.dispatch(delivery, &live.settle, &mut tasks, &shutdown),
                        Some(Err(error)) => {
                            let status = live.sub.channel.status();
                            if !(status.connected() || status.reconnecting()) {
                                break Ended::Lost { reason: error.to_string(), connection: false };
                            }
                            tracing::warn!(consumer = inner.name, queue = inner.queue, %error, "consumer stream error");
                        }
                        None => break Ended::Lost {
                            reason: "subscription cancelled by the broker (queue deleted or node lost)".into(),
                            connection: false,
                        },
                    },
                }
            };
            match ended {
                Ended::Shutdown => {
                    drain(inner, &pipeline, live, &mut tasks, &mut retiring).await;
                    inner.state.send_replace(ConsumerState::Stopped);
                    tracing::info!(consumer = inner.name, "consumer stopped");
                    return Ok(());
                }
                Ended::Lost {
                    reason,
                    connection: lost,
                } => {
                    tracing::warn!(
                        consumer = inner.name,
                        queue = inner.queue,
                        reason,
                        "subscription lost; subscribing again"
                    );
                    inner
                        .state
                        .send_replace(ConsumerState::Recovering { reason });
                    if live.since.elapsed() >= HEALTHY_AFTER {
                        backoff.reset();
                    }
                    retire(inner, live, &mut retiring);
                    if !pause(&shutdown, &mut connection, &mut backoff, lost).await {
                        break;
                    }
                    // Lost to a message lapin cannot parse: move it aside
                    // first, or the next subscription gets it and dies too.
                    // Checked after the pause: the stream may fail a moment
                    // before the connection's watcher counts the loss.
                    if unparseable.has_changed().unwrap_or(false) {
                        super::rescue::after_unparseable_loss(inner, &shutdown).await;
                    }
                }
            }
        }
        // Shut down while (re)subscribing: handlers of earlier
        // subscriptions may still run.
        finish_handlers(inner, &pipeline, &mut tasks).await;
        wait_retired(&mut retiring).await;
        inner.state.send_replace(ConsumerState::Stopped);
        tracing::info!(consumer = inner.name, "consumer stopped");
        Ok(())
    }

    /// Runs [`run`](Self::run) on a task of its own: the shape of every
    /// long-running part (the relay's `spawn` too). Cancel `shutdown`, then
    /// await the handle: it returns once the consumer has drained, within
    /// its shutdown timeout (the order of a whole service's shutdown is on
    /// [`Broker::close`](crate::Broker::close)).
    ///
    /// ```no_run
    /// # async fn run(consumer: rabbitry_core::Consumer) -> rabbitry_core::Result<()> {
    /// use rabbitry_core::{CancellationToken, Delivery};
    ///
    /// let shutdown = CancellationToken::new();
    /// let task = consumer.spawn(|_d: Delivery| async { Ok(()) }, shutdown.clone());
    /// // ... on SIGTERM:
    /// shutdown.cancel();
    /// task.await??;
    /// # Ok(()) }
    /// ```
    pub fn spawn(
        &self,
        handler: impl Handler,
        shutdown: CancellationToken,
    ) -> JoinHandle<Result<()>> {
        let consumer = self.clone();
        tokio::spawn(async move { consumer.run(handler, shutdown).await })
    }
}

/// Waits the backoff (or, after a lost connection, until it is back,
/// whichever comes first) and doubles it. False on shutdown.
async fn pause(
    shutdown: &CancellationToken,
    connection: &mut watch::Receiver<ConnectionState>,
    backoff: &mut Backoff,
    wait_for_connection: bool,
) -> bool {
    // Waiting for the connection only helps while it is down; when it is
    // up, `connected` would return at once and make the backoff a hot loop.
    let down = !matches!(
        *connection.borrow_and_update(),
        ConnectionState::Connected | ConnectionState::Blocked { .. }
    );
    let delay = backoff.next_delay();
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
        () = connected(connection), if wait_for_connection && down => true,
    }
}

/// Resolves once the connection is (back) up.
async fn connected(state: &mut watch::Receiver<ConnectionState>) {
    let _ = state
        .wait_for(|s| {
            matches!(
                s,
                ConnectionState::Connected | ConnectionState::Blocked { .. }
            )
        })
        .await;
}

/// How long a lost subscription's channel is kept open for its handlers:
/// every attempt of the handler, each within its timeout (and, ordered,
/// its pause), plus time to republish. Without a handler timeout, as long
/// as they run (a shutdown still cuts it short). An ordered message that
/// keeps failing (`Stop`) ends its retries once the channel is closed.
fn retire_limit(inner: &Inner) -> Option<Duration> {
    inner.handler_timeout.map(|attempt| {
        let runs = match &inner.ordered {
            Some(ordered) => attempt
                .saturating_add(ordered.max_backoff)
                .saturating_mul(ordered.attempts),
            None => attempt.saturating_mul(inner.retry.immediate.saturating_add(1)),
        };
        runs.saturating_add(Duration::from_secs(60))
    })
}

fn log_panic(inner: &Inner, done: std::result::Result<(), tokio::task::JoinError>) {
    if let Err(error) = done
        && error.is_panic()
    {
        tracing::error!(consumer = inner.name, %error, "a delivery's task panicked; its delivery was given back");
    }
}

/// Keeps a lost subscription's channel until its handlers are done (its
/// settle task ends when the last of their decisions is sent), then closes
/// it. Closing it at once would make the broker redeliver messages whose
/// handlers are still running.
fn retire(inner: &Inner, live: Live, retiring: &mut JoinSet<()>) {
    let Live {
        mut sub,
        settle,
        settler,
        ..
    } = live;
    let limit = retire_limit(inner);
    let timeout = inner.broker.operation_timeout();
    let consumer = inner.name.clone();
    let acked = inner.ack_mode != super::builder::AckMode::None;
    retiring.spawn(async move {
        // Stop the broker sending more to a channel nobody reads, and give
        // back what it already sent.
        if sub.channel.status().connected() {
            sub.cancel(timeout, acked.then_some(&settle)).await;
        }
        drop(settle);
        let finished = match limit {
            Some(limit) => tokio::time::timeout(limit, settler).await.is_ok(),
            None => {
                let _ = settler.await;
                true
            }
        };
        if !finished {
            tracing::warn!(consumer, ?limit, "handlers of a lost subscription still running; closing its channel, the broker redelivers their messages");
        }
        close_channel(&sub.channel, timeout, "subscription replaced").await;
    });
}

/// Shutdown: stop intake, give back what never started, let handlers finish
/// within the shutdown timeout, settle, close.
async fn drain(
    inner: &Inner,
    pipeline: &Pipeline,
    mut live: Live,
    tasks: &mut JoinSet<()>,
    retiring: &mut JoinSet<()>,
) {
    let acked = inner.ack_mode != super::builder::AckMode::None;
    let given_back = live
        .sub
        .cancel(
            inner.broker.operation_timeout(),
            acked.then_some(&live.settle),
        )
        .await;
    if given_back > 0 {
        tracing::debug!(
            consumer = inner.name,
            given_back,
            "gave back deliveries that had not started"
        );
    }
    finish_handlers(inner, pipeline, tasks).await;
    drop(live.settle);
    // A manual delivery the application still holds keeps the settle task
    // alive; do not wait for it forever.
    if tokio::time::timeout(SETTLE_LIMIT, live.settler)
        .await
        .is_err()
    {
        tracing::warn!(
            consumer = inner.name,
            "settling did not finish; the broker redelivers what is left"
        );
    }
    close_channel(
        &live.sub.channel,
        inner.broker.operation_timeout(),
        "consumer stopped",
    )
    .await;
    wait_retired(retiring).await;
}

/// How long republishes under way at the shutdown timeout may still take
/// (three tries with their pauses fit well inside).
const REPUBLISH_GRACE: Duration = Duration::from_secs(10);

async fn finish_handlers(inner: &Inner, pipeline: &Pipeline, tasks: &mut JoinSet<()>) {
    if all_done(tasks, inner.shutdown_timeout).await {
        return;
    }
    tracing::warn!(
        consumer = inner.name,
        running = tasks.len(),
        "handlers still running at the shutdown timeout; stopping them and giving their deliveries back"
    );
    // Handlers stop at once; a republish already confirmed-or-pending
    // finishes and sends its decision, so no copy is left behind without
    // the ack of its original.
    pipeline.stop_handlers();
    if !all_done(tasks, REPUBLISH_GRACE).await {
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

/// Whether every task finished within `limit`.
async fn all_done(tasks: &mut JoinSet<()>, limit: Duration) -> bool {
    tokio::time::timeout(limit, async { while tasks.join_next().await.is_some() {} })
        .await
        .is_ok()
}

/// Old channels close once their handlers are gone; bounded all the same.
async fn wait_retired(retiring: &mut JoinSet<()>) {
    let done = tokio::time::timeout(SETTLE_LIMIT, async {
        while retiring.join_next().await.is_some() {}
    })
    .await;
    if done.is_err() {
        retiring.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OrderedRetry;

    #[tokio::test]
    async fn a_lost_channel_is_kept_for_every_ordered_attempt_and_its_pause() {
        let broker = crate::consumer::unreachable_broker();
        let retry = OrderedRetry::default()
            .attempts(3)
            .backoff(Duration::from_secs(1), Duration::from_secs(10));
        let consumer = Consumer::builder(broker, "q")
            .concurrency(1)
            .ordered(retry)
            .handler_timeout(Some(Duration::from_secs(5)))
            .build()
            .expect("consumer");
        assert_eq!(
            retire_limit(&consumer.inner),
            Some(Duration::from_secs(3 * (5 + 10) + 60))
        );
    }
}
