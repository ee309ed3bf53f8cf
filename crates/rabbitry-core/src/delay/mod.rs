//! Delayed messages: "deliver this message to that queue, later".
//!
//! Three strategies sit behind one call, [`Delays::publish_after`] (or
//! [`publish_at`](Delays::publish_at)):
//! - a **fixed delay** configured with [`DelaysBuilder::fixed`]: one queue
//!   per destination and delay, with a queue TTL that dead-letters to the
//!   destination (the mechanism of the consumer's delayed retries), exact
//!   to the millisecond;
//! - any other delay, through the **binary TTL cascade** (the default), in
//!   whole seconds rounded up, so never early;
//! - or through the **`x-delayed-message` plugin**, when asked for with
//!   [`DelaysBuilder::plugin`] and the broker has it (never on RabbitMQ 4.3
//!   or later).
//!
//! Every path goes through the reliable [`Publisher`]: confirms, and its
//! outbox when the broker cannot be used. The outbox keeps the message for
//! its destination with its due time ([`DUE_AT_HEADER`]), and its relay
//! does not send it before then.

mod builder;
mod cascade;
mod due;
mod plugin;
mod routes;
mod topology;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use self::builder::DelaysBuilder;
pub use self::cascade::MAX_CASCADE_LEVELS;
use self::cascade::Names;
pub use self::due::{DUE_AT_HEADER, MAX_DUE_AT_MILLIS};
use self::routes::{Route, Routes};
use crate::error::{Error, Result};
use crate::message::{HeaderValue, Message};
use crate::publisher::{PublishOutcome, Publisher};

/// How delays that are not fixed are carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DelayStrategy {
    /// The binary TTL cascade: quorum queues, whole seconds, no plugin.
    Cascade,
    /// The `x-delayed-message` plugin's exchange.
    Plugin,
}

/// The longest delay the plugin takes (its `x-delay` is 32 bits of ms).
const PLUGIN_MAX_DELAY: Duration = Duration::from_millis(u32::MAX as u64);

/// Publishes messages that are delivered to their queue after a delay.
/// Cheap to clone.
///
/// A delayed message goes to a queue: build it for the default exchange,
/// with the queue's name as routing key. A delayed message cannot be
/// cancelled once published; check, when it arrives, whether it still
/// applies (see `docs/delays.md`).
///
/// ```no_run
/// # async fn run(publisher: rabbitry_core::Publisher) -> Result<(), rabbitry_core::Error> {
/// use std::time::Duration;
/// use rabbitry_core::{Delays, Message};
///
/// let delays = Delays::builder(publisher).build().await?;
/// let timeout = Message::json("", "orders.timeouts", &serde_json::json!({"order": 7}))?;
/// delays.publish_after(timeout, Duration::from_secs(15 * 60)).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Delays {
    inner: Arc<Inner>,
}

struct Inner {
    publisher: Publisher,
    names: Names,
    levels: u32,
    fixed: Vec<Duration>,
    strategy: DelayStrategy,
    routes: Routes,
}

impl std::fmt::Debug for Delays {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delays")
            .field("strategy", &self.inner.strategy)
            .field("levels", &self.inner.levels)
            .field("fixed", &self.inner.fixed)
            .finish_non_exhaustive()
    }
}

impl Delays {
    /// Starts a builder over `publisher`, which sends every delayed message
    /// (its outbox, if it has one, keeps those it cannot send).
    pub fn builder(publisher: Publisher) -> DelaysBuilder {
        DelaysBuilder::new(publisher)
    }

    /// How delays that are not fixed are carried out.
    pub fn strategy(&self) -> DelayStrategy {
        self.inner.strategy
    }

    /// The longest delay that is not a fixed one: 2^levels − 1 seconds for
    /// the cascade (about 8.5 years with all 28 levels), 2^32 − 1 ms (about
    /// 49.7 days) for the plugin.
    pub fn max_delay(&self) -> Duration {
        match self.inner.strategy {
            DelayStrategy::Cascade => cascade::max_delay(self.inner.levels),
            DelayStrategy::Plugin => PLUGIN_MAX_DELAY,
        }
    }

    /// The queue where the cascade parks messages whose destination queue
    /// no longer exists (`<prefix>.unroutable`). Their routing key ends
    /// with the destination they were meant for.
    pub fn unroutable_queue(&self) -> String {
        self.inner.names.unroutable()
    }

    /// Publishes `message` to be delivered to its queue after `delay`, and
    /// never before. A delay equal to a fixed one (in whole milliseconds,
    /// rounded up) goes through that queue; any other through the strategy
    /// in use, in whole seconds rounded up for the cascade.
    ///
    /// The message is sent without its `expiration` (a per-message TTL
    /// would let it leave a delay queue before its time) and without the
    /// broker's dead-letter history (`x-death`, `x-first-death-*`,
    /// `x-last-death-*`), so a delivery can be delayed again as it came.
    ///
    /// Outcomes as [`Publisher::publish`]. Errors: a zero delay, one over
    /// [`max_delay`](Self::max_delay), a message not addressed to a queue
    /// through the default exchange, or a queue name the cascade cannot
    /// route ([`Error::InvalidMessage`]); a destination queue that does not
    /// exist ([`Error::Broker`] with code 404).
    pub async fn publish_after(&self, message: Message, delay: Duration) -> Result<PublishOutcome> {
        let destination = destination(&message)?.to_owned();
        // Fixed delays are whole milliseconds (rounded up, as configured):
        // the queue's name and TTL cannot hold less, and must not be short.
        let whole_ms = due::whole_millis_up(delay);
        let fixed = self.inner.fixed.contains(&whole_ms);
        if !fixed {
            due::check_delay(delay, self.max_delay())?;
        }
        let stored = message.for_delay().with_due_at(SystemTime::now() + delay);
        let (route, wire, mandatory) = if fixed {
            self.fixed(&destination, whole_ms, &stored)
        } else {
            match self.inner.strategy {
                DelayStrategy::Cascade => self.cascade(&destination, delay, &stored),
                DelayStrategy::Plugin => self.plugin(&destination, delay, &stored),
            }
        };
        let publisher = &self.inner.publisher;
        // Declaring the route is bounded by the publisher's timeout too:
        // a broker that does not answer defers the message, as a publish
        // that times out does.
        let limit = publisher.timeout();
        let ensured =
            tokio::time::timeout(limit, self.inner.routes.ensure(publisher.broker(), route))
                .await
                .unwrap_or_else(|_| {
                    Err(Error::TimedOut {
                        message_id: stored.id().to_owned(),
                        timeout: limit,
                    })
                });
        match ensured {
            Ok(()) => publisher.publish_as(wire, stored, mandatory).await,
            Err(cause) => publisher.fail_as(cause, stored).await,
        }
    }

    /// Publishes `message` to be delivered to its queue at `at`, and never
    /// before: [`publish_after`](Self::publish_after) with the time left.
    /// A time that is not in the future is an error.
    pub async fn publish_at(&self, message: Message, at: SystemTime) -> Result<PublishOutcome> {
        let delay = due::delay_until(at, SystemTime::now())?;
        self.publish_after(message, delay).await
    }

    fn fixed(
        &self,
        destination: &str,
        delay: Duration,
        stored: &Message,
    ) -> (Route, Message, bool) {
        let route = Route::Fixed {
            target: destination.to_owned(),
            delay,
        };
        let queue = routes::fixed_queue_name(destination, delay);
        (route, readdressed(stored, "", queue), true)
    }

    fn cascade(
        &self,
        destination: &str,
        delay: Duration,
        stored: &Message,
    ) -> (Route, Message, bool) {
        let names = &self.inner.names;
        let route = Route::Bind {
            exchange: names.delivery(),
            queue: destination.to_owned(),
            key: cascade::delivery_binding(destination),
        };
        let seconds = cascade::whole_seconds(delay);
        let wire = readdressed(
            stored,
            names.level(cascade::first_level(seconds)),
            cascade::routing_key(seconds, destination),
        );
        (route, wire, true)
    }

    fn plugin(
        &self,
        destination: &str,
        delay: Duration,
        stored: &Message,
    ) -> (Route, Message, bool) {
        let exchange = self.inner.names.plugin();
        let route = Route::Bind {
            exchange: exchange.clone(),
            queue: destination.to_owned(),
            key: destination.to_owned(),
        };
        // Rounded up to the millisecond: never early.
        let ms = due::millis_up(delay);
        let wire = readdressed(stored, exchange, destination.to_owned())
            .header("x-delay", HeaderValue::Int(ms));
        // The plugin routes when the delay is over, not at publish time:
        // with `mandatory` every publish would come back unroutable.
        (route, wire, false)
    }
}

/// The destination queue of a delayed message, checked.
fn destination(message: &Message) -> Result<&str> {
    let invalid = |reason: String| Error::InvalidMessage { reason };
    if !message.exchange_name().is_empty() {
        return Err(invalid(
            "a delayed message goes to a queue: publish it to the default exchange (\"\") \
             with the queue's name as routing key"
                .into(),
        ));
    }
    let queue = message.routing_key();
    cascade::check_destination(queue).map_err(invalid)?;
    Ok(queue)
}

/// `message` sent to `exchange` with `routing_key`, sharing its payload.
fn readdressed(message: &Message, exchange: impl Into<String>, routing_key: String) -> Message {
    Message::from_shared(
        exchange,
        routing_key,
        message.shared_payload(),
        message.properties().clone(),
    )
}
