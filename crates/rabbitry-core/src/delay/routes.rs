//! What a destination needs before a delayed message is sent to it: its
//! binding to the delivery exchange (cascade, plugin) or its fixed delay
//! queue. Each is declared on first use and again after a while, so that a
//! destination queue deleted and declared again gets its binding back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::connection::Broker;
use crate::error::Result;
use crate::topology::{Binding, Topology};

/// How long a declaration is trusted before it is made again.
const FRESH: Duration = Duration::from_secs(30);
/// Declarations remembered at most (names come from callers).
const MAX_REMEMBERED: usize = 10_000;

/// One thing to declare for a destination.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Route {
    /// Bind `queue` to `exchange` with `key`.
    Bind {
        exchange: String,
        queue: String,
        key: String,
    },
    /// Declare the fixed delay queue of `target` for `delay`.
    Fixed { target: String, delay: Duration },
}

impl Route {
    fn topology(&self) -> Topology {
        match self {
            Route::Bind {
                exchange,
                queue,
                key,
            } => Topology::new().binding(Binding::new(exchange, queue, key)),
            Route::Fixed { target, delay } => Topology::new().queue(
                crate::delay_queue::declaration(fixed_queue_name(target, *delay), target, *delay),
            ),
        }
    }
}

/// `<target>.delay.<millis>ms`: the fixed delay queue of `target`.
pub(crate) fn fixed_queue_name(target: &str, delay: Duration) -> String {
    crate::delay_queue::name(target, "delay", delay)
}

/// The routes declared lately, each in a slot of its own: one declaration
/// at a time per route, which the publishes waiting on it then share.
#[derive(Default)]
pub(crate) struct Routes {
    declared: Mutex<HashMap<Route, Arc<tokio::sync::Mutex<Option<Instant>>>>>,
}

impl Routes {
    /// Declares `route` unless it was declared in the last 30 s. A missing
    /// destination queue fails here (404), before anything is sent. Single
    /// flight: a burst of first publishes to one destination declares it
    /// once.
    pub(crate) async fn ensure(&self, broker: &Broker, route: Route) -> Result<()> {
        let slot = {
            let mut declared = self.declared.lock().unwrap_or_else(|p| p.into_inner());
            if declared.len() >= MAX_REMEMBERED {
                // Names come from callers: keep the map bounded, forgetting
                // the routes nobody is waiting on.
                declared.retain(|_, slot| Arc::strong_count(slot) > 1);
            }
            declared.entry(route.clone()).or_default().clone()
        };
        let mut at = slot.lock().await;
        if at.is_some_and(|at| at.elapsed() < FRESH) {
            return Ok(());
        }
        // Boxed: the cold path, kept out of every publish's future.
        Box::pin(declare(broker, &route)).await?;
        *at = Some(Instant::now());
        Ok(())
    }
}

async fn declare(broker: &Broker, route: &Route) -> Result<()> {
    if let Route::Fixed { target, .. } = route {
        // A binding fails on a missing queue by itself; a delay queue
        // would be declared, and hold the message for nobody.
        broker.queue_stats(target).await?;
    }
    // Not registered for redeclaration: a destination may be deleted for
    // good, and is declared again here on its next use anyway.
    route.topology().declare_on(broker).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sub_millisecond_fixed_delay_is_rounded_up_in_name_and_ttl() {
        let delay = super::super::due::whole_millis_up(Duration::from_micros(1_500));
        assert_eq!(fixed_queue_name("q", delay), "q.delay.2ms");
        let route = Route::Fixed {
            target: "q".into(),
            delay,
        };
        let topology = route.topology();
        let queue = topology.queues().next().expect("the delay queue");
        assert_eq!(queue.name(), "q.delay.2ms");
        assert_eq!(queue.arguments()["x-message-ttl"], 2_i64.into());
    }
}
