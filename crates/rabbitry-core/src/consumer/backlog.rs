//! The backlog of the queue a consumer reads, polled while it runs: ready
//! messages and consumers, from a passive `queue.declare` (bounded by the
//! broker's operation timeout), published as gauges (see
//! [`metric_names`](crate::metric_names)) and kept for
//! [`Consumer::backlog`](super::Consumer::backlog). A backlog that grows
//! while the consumers are busy is visible before it hurts.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::connection::Broker;
use crate::count::labels;
use crate::metric_names as names;
use crate::topology::QueueStats;

/// Polls `queue` every `every` until `stop` is cancelled.
pub(crate) async fn poll_backlog(
    broker: Broker,
    queue: String,
    every: Duration,
    last: watch::Sender<Option<QueueStats>>,
    stop: CancellationToken,
) {
    let l = labels(&[("queue", &queue)]);
    let ready = metrics::gauge!(names::QUEUE_READY, l.iter());
    let consumers = metrics::gauge!(names::QUEUE_CONSUMERS, l.iter());
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => break,
        }
        let polled = tokio::select! {
            r = broker.queue_stats(&queue) => r,
            () = stop.cancelled() => break,
        };
        match polled {
            Ok(stats) => {
                ready.set(f64::from(stats.messages));
                consumers.set(f64::from(stats.consumers));
                last.send_replace(Some(stats));
            }
            // The subscription notices and reports a lost queue or broker;
            // a missed poll only leaves the last figures in place.
            Err(error) => tracing::debug!(queue, %error, "backlog poll failed"),
        }
    }
    // No figures once nobody polls: a stale value would read as current.
    ready.set(f64::NAN);
    consumers.set(f64::NAN);
}
