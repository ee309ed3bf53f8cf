//! Topology as a value: exchanges, queues and bindings, declared
//! idempotently at start and again after every reconnect.
//!
//! Naming convention: a queue `q` with the default
//! [`DeadLetter::Convention`] dead-letters to the fanout exchange `q.dlx`,
//! bound to the quorum queue `q.dlq`. Both are declared with `q`.

mod queue;
mod spec;
#[cfg(test)]
mod spec_tests;
mod summary;
mod teardown;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use self::queue::DeliveryLimit;
pub use self::queue::{DEFAULT_DELIVERY_LIMIT, DeadLetter, Overflow, Queue, QueueType};
use self::spec::field_table;
pub use self::spec::{ArgValue, Arguments, Binding, Exchange, ExchangeKind};
pub use self::teardown::TeardownReport;
use crate::bounded::{close_channel, within};
use crate::connection::{Broker, Redeclare, RedeclareFuture, Role};
use crate::error::{Error, Result};
use crate::wire::check_name;

/// A set of exchanges, queues and bindings.
///
/// ```
/// use rabbitry_core::{Binding, Exchange, Queue, Topology};
///
/// let topology = Topology::new()
///     .exchange(Exchange::topic("orders"))
///     .queue(Queue::new("orders.created").delivery_limit(5))
///     .binding(Binding::new("orders", "orders.created", "order.created"));
/// assert_eq!(topology.queues().count(), 2); // the work queue and its orders.created.dlq
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[must_use]
pub struct Topology {
    exchanges: Vec<Exchange>,
    queues: Vec<Queue>,
    bindings: Vec<Binding>,
}

impl Topology {
    /// An empty topology.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an exchange.
    pub fn exchange(mut self, exchange: Exchange) -> Self {
        self.exchanges.push(exchange);
        self
    }

    /// Adds a queue. With [`DeadLetter::Convention`] (the default) its
    /// dead-letter exchange and queue are added too.
    pub fn queue(mut self, queue: Queue) -> Self {
        if queue.dead_letter == DeadLetter::Convention {
            let dlx = Queue::dead_letter_exchange_name(&queue.name);
            let dlq = Queue::dead_letter_queue_name(&queue.name);
            let dlq_spec = Queue::new(dlq.clone())
                .queue_type(if queue.queue_type == QueueType::Classic {
                    QueueType::Classic
                } else {
                    QueueType::Quorum
                })
                .dead_letter(DeadLetter::Off)
                // Listing an error queue returns what it reads, and RabbitMQ
                // 4 counts that as a delivery: with its default limit, 20
                // listings would drop every failure.
                .unlimited_deliveries();
            self.exchanges.push(Exchange::fanout(dlx.clone()));
            self.queues.push(queue);
            self.queues.push(dlq_spec);
            self.bindings.push(Binding::new(dlx, dlq, ""));
        } else {
            self.queues.push(queue);
        }
        self
    }

    /// Adds a binding.
    pub fn binding(mut self, binding: Binding) -> Self {
        self.bindings.push(binding);
        self
    }

    /// Merges another topology into this one.
    pub fn merge(mut self, other: Topology) -> Self {
        self.exchanges.extend(other.exchanges);
        self.queues.extend(other.queues);
        self.bindings.extend(other.bindings);
        self
    }

    /// The queues, including derived dead-letter queues.
    pub fn queues(&self) -> impl Iterator<Item = &Queue> {
        self.queues.iter()
    }

    /// The exchanges, including derived dead-letter exchanges.
    pub fn exchanges(&self) -> impl Iterator<Item = &Exchange> {
        self.exchanges.iter()
    }

    /// Checks every setting without touching the broker: each queue's
    /// combination of settings, and that every name, routing key and
    /// argument name (derived ones such as `<queue>.dlx` included) fits in
    /// an AMQP short string.
    pub fn validate(&self) -> Result<()> {
        let names = |what: &str, name: &str, args: &Arguments| {
            check_name(what, name)?;
            args.keys()
                .try_for_each(|key| check_name("an argument name", key))
        };
        for ex in &self.exchanges {
            names("exchange name", &ex.name, &ex.arguments).map_err(Error::Config)?;
        }
        for q in &self.queues {
            q.validate().map_err(Error::Config)?;
            names("queue name", &q.name, &q.arguments()).map_err(Error::Config)?;
        }
        for b in &self.bindings {
            names("binding exchange", &b.exchange, &b.arguments)
                .and_then(|()| check_name("binding queue", &b.queue))
                .and_then(|()| check_name("binding routing key", &b.routing_key))
                .map_err(Error::Config)?;
        }
        Ok(())
    }

    /// Declares everything: exchanges, then queues, then bindings.
    /// Declaring the same thing twice is a no-op for the broker.
    ///
    /// The queue arguments depend on the broker's version (lazy mode, an
    /// unlimited delivery limit). An existing queue whose arguments differ
    /// only in one that rabbitry chose itself keeps what it has: the 406 is
    /// followed by a declaration with the older form, and a warning.
    pub(crate) async fn declare_on(&self, broker: &Broker) -> Result<()> {
        self.validate()?;
        let timeout = broker.operation_timeout();
        let mut channel = broker.open_channel(Role::Consume).await?;
        // Read after the channel: a lazy broker connects on first use.
        let version = broker.server_version();
        for ex in &self.exchanges {
            let opts = ExchangeDeclareOptions {
                durable: ex.durable,
                auto_delete: ex.auto_delete,
                internal: ex.internal,
                ..Default::default()
            };
            let kind = lapin::ExchangeKind::Custom(ex.kind.as_str().to_owned());
            within(
                timeout,
                "exchange.declare",
                channel.exchange_declare(
                    ex.name.as_str().into(),
                    kind,
                    opts,
                    field_table(&ex.arguments),
                ),
            )
            .await?
            .map_err(|e| classify("exchange", &ex.name, &e))?;
        }
        for q in &self.queues {
            if q.lazy_is_a_no_op(version) && !LAZY_WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    queue = q.name,
                    version = %version.map(|v| v.to_string()).unwrap_or_default(),
                    "lazy mode is a no-op from RabbitMQ 3.12 on (classic queues keep messages on disk anyway); \
                     x-queue-mode is left out, since RabbitMQ 4.3 refuses it"
                );
            }
            let (mut args, soft) = q.arguments_for(version);
            let mut tries = soft.len() + 1;
            loop {
                tries -= 1;
                let result = declare_queue(&channel, q, &args, timeout).await;
                let Err(Error::TopologyMismatch { argument, .. }) = &result else {
                    result?;
                    break;
                };
                let Some(older) = soft.iter().find(|s| s.key == argument.as_str()) else {
                    result?;
                    break;
                };
                if tries == 0 {
                    result?;
                }
                warn_older_queue(q, older.key);
                match &older.otherwise {
                    None => args.remove(older.key),
                    Some(value) => args.insert(older.key.to_owned(), value.clone()),
                };
                // The 406 closed the channel.
                channel = broker.open_channel(Role::Consume).await?;
            }
        }
        for b in &self.bindings {
            within(
                timeout,
                "queue.bind",
                channel.queue_bind(
                    b.queue.as_str().into(),
                    b.exchange.as_str().into(),
                    b.routing_key.as_str().into(),
                    QueueBindOptions::default(),
                    field_table(&b.arguments),
                ),
            )
            .await?
            .map_err(|e| classify("binding to exchange", &b.exchange, &e))?;
        }
        close_channel(&channel, timeout, "declared").await;
        Ok(())
    }
}

/// Lazy mode's no-op is said once per process, not once per declaration.
static LAZY_WARNED: AtomicBool = AtomicBool::new(false);

async fn declare_queue(
    channel: &lapin::Channel,
    q: &Queue,
    args: &Arguments,
    timeout: std::time::Duration,
) -> Result<()> {
    let opts = QueueDeclareOptions {
        durable: q.durable,
        exclusive: q.exclusive,
        auto_delete: q.auto_delete,
        ..Default::default()
    };
    within(
        timeout,
        "queue.declare",
        channel.queue_declare(q.name.as_str().into(), opts, field_table(args)),
    )
    .await?
    .map_err(|e| classify("queue", &q.name, &e))?;
    Ok(())
}

/// An existing queue holds an argument the way an older rabbitry (or the
/// same one on an older broker) declared it: it is kept, and the operator
/// learns what it misses.
fn warn_older_queue(q: &Queue, key: &'static str) {
    let queue = q.name.as_str();
    match (key, q.delivery_limit) {
        ("x-delivery-limit", DeliveryLimit::Unlimited) => tracing::warn!(
            queue,
            "this queue exists without x-delivery-limit=-1: on RabbitMQ 4.x it keeps the default \
             limit of 20, so a message returned 20 times (listing an error queue returns every \
             message it reads) is dropped; lift the limit with a policy (delivery-limit -1) or \
             recreate the queue (docs/topology.md)"
        ),
        ("x-delivery-limit", _) => tracing::warn!(
            queue,
            "this queue exists without rabbitry's default x-delivery-limit; it keeps its \
             arguments (docs/topology.md: add the limit with a policy)"
        ),
        _ => tracing::info!(
            queue,
            argument = key,
            "this queue exists with an older form of an argument; it keeps it"
        ),
    }
}

/// How many messages and consumers a queue has right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueStats {
    /// Ready messages (not counting unacknowledged ones).
    pub messages: u32,
    /// Active consumers.
    pub consumers: u32,
}

impl Broker {
    /// Declares `topology` now and registers it, so that it is declared
    /// again after every reconnect. Declaring is idempotent.
    ///
    /// The first declaration of a topology logs what it declared at INFO
    /// ("topology declared": exchanges, queues with their type and where
    /// their dead letters go, bindings); later ones log at DEBUG.
    pub async fn declare(&self, topology: &Topology) -> Result<()> {
        topology.declare_on(self).await?;
        let first = self.register_redeclare(Arc::new(topology.clone()));
        summary::log_declared(topology, first);
        Ok(())
    }

    /// Reads a queue's depth and consumer count (a passive declare). A
    /// missing queue is an [`Error::Broker`] with code 404.
    pub async fn queue_stats(&self, queue: &str) -> Result<QueueStats> {
        check_name("queue name", queue).map_err(Error::Config)?;
        let timeout = self.operation_timeout();
        let channel = self.open_channel(Role::Consume).await?;
        let opts = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let q = within(
            timeout,
            "queue.declare (passive)",
            channel.queue_declare(queue.into(), opts, FieldTable::default()),
        )
        .await?
        .map_err(|e| classify("queue", queue, &e))?;
        close_channel(&channel, timeout, "done").await;
        Ok(QueueStats {
            messages: q.message_count(),
            consumers: q.consumer_count(),
        })
    }
}

impl Redeclare for Topology {
    fn redeclare<'a>(&'a self, broker: &'a Broker) -> RedeclareFuture<'a> {
        Box::pin(self.declare_on(broker))
    }

    fn same_as(&self, other: &dyn Any) -> bool {
        other.downcast_ref::<Topology>() == Some(self)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Turns a 406 "inequivalent arg" into [`Error::TopologyMismatch`]; other
/// errors keep their broker code and text.
fn classify(kind: &'static str, name: &str, err: &lapin::Error) -> Error {
    let mapped = Error::from_lapin("declare", err);
    if let Error::Broker {
        code: 406, text, ..
    } = &mapped
        && let Some(argument) = inequivalent_arg(text)
    {
        return Error::TopologyMismatch {
            kind,
            name: name.to_owned(),
            argument,
            detail: text.clone(),
        };
    }
    match mapped {
        Error::Broker { code, text, .. } => Error::Broker {
            operation: format!("declare {kind} '{name}'"),
            code,
            text,
        },
        other => other,
    }
}

/// Extracts `x-queue-type` from the broker's
/// `PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue …`.
fn inequivalent_arg(text: &str) -> Option<String> {
    let rest = text.split("inequivalent arg '").nth(1)?;
    Some(rest.split('\'').next()?.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_name_is_read_from_the_broker_text() {
        let text = "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'q' in vhost '/': \
                    received the value 'classic' of type 'longstr' but current is none";
        assert_eq!(inequivalent_arg(text).as_deref(), Some("x-queue-type"));
        assert_eq!(inequivalent_arg("NOT_FOUND - no queue"), None);
    }

    #[test]
    fn convention_adds_dead_letter_exchange_and_queue() {
        let t = Topology::new().queue(Queue::new("work"));
        let names: Vec<_> = t.queues().map(Queue::name).collect();
        assert_eq!(names, ["work", "work.dlq"]);
        assert_eq!(
            t.exchanges().map(Exchange::name).collect::<Vec<_>>(),
            ["work.dlx"]
        );
    }
}
