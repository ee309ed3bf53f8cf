//! Topology as a value: exchanges, queues and bindings, declared
//! idempotently at start and again after every reconnect.
//!
//! Naming convention: a queue `q` with the default
//! [`DeadLetter::Convention`] dead-letters to the fanout exchange `q.dlx`,
//! bound to the quorum queue `q.dlq`. Both are declared with `q`.

mod spec;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

use self::spec::field_table;
pub use self::spec::{
    ArgValue, Arguments, Binding, DeadLetter, Exchange, ExchangeKind, Overflow, Queue, QueueType,
};
use crate::connection::{Broker, Role};
use crate::error::{Error, Result};

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
                .dead_letter(DeadLetter::Off);
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

    /// Checks every queue's settings without touching the broker.
    pub fn validate(&self) -> Result<()> {
        for q in &self.queues {
            q.validate().map_err(Error::Config)?;
        }
        Ok(())
    }

    /// Declares everything on one channel: exchanges, then queues, then
    /// bindings. Declaring the same thing twice is a no-op for the broker.
    pub(crate) async fn declare_on(&self, broker: &Broker) -> Result<()> {
        self.validate()?;
        let channel = broker.open_channel(Role::Consume).await?;
        let timeout = broker.operation_timeout();
        let bounded = |op: &'static str| {
            move |e: tokio::time::error::Elapsed| -> Error {
                let _ = e;
                Error::ConnectionLost {
                    operation: op,
                    reason: format!("no answer within {timeout:?}"),
                }
            }
        };
        for ex in &self.exchanges {
            let opts = ExchangeDeclareOptions {
                durable: ex.durable,
                auto_delete: ex.auto_delete,
                internal: ex.internal,
                ..Default::default()
            };
            let kind = lapin::ExchangeKind::Custom(ex.kind.as_str().to_owned());
            tokio::time::timeout(
                timeout,
                channel.exchange_declare(
                    ex.name.as_str().into(),
                    kind,
                    opts,
                    field_table(&ex.arguments),
                ),
            )
            .await
            .map_err(bounded("exchange.declare"))?
            .map_err(|e| classify("exchange", &ex.name, &e))?;
        }
        for q in &self.queues {
            let opts = QueueDeclareOptions {
                durable: q.durable,
                exclusive: q.exclusive,
                auto_delete: q.auto_delete,
                ..Default::default()
            };
            tokio::time::timeout(
                timeout,
                channel.queue_declare(q.name.as_str().into(), opts, field_table(&q.arguments())),
            )
            .await
            .map_err(bounded("queue.declare"))?
            .map_err(|e| classify("queue", &q.name, &e))?;
        }
        for b in &self.bindings {
            tokio::time::timeout(
                timeout,
                channel.queue_bind(
                    b.queue.as_str().into(),
                    b.exchange.as_str().into(),
                    b.routing_key.as_str().into(),
                    QueueBindOptions::default(),
                    field_table(&b.arguments),
                ),
            )
            .await
            .map_err(bounded("queue.bind"))?
            .map_err(|e| classify("binding to exchange", &b.exchange, &e))?;
        }
        let _ = channel.close(200, "declared".into()).await;
        Ok(())
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
    /// Reads a queue's depth and consumer count (a passive declare). A
    /// missing queue is an [`Error::Broker`] with code 404.
    pub async fn queue_stats(&self, queue: &str) -> Result<QueueStats> {
        let channel = self.open_channel(Role::Consume).await?;
        let opts = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let q = channel
            .queue_declare(queue.into(), opts, FieldTable::default())
            .await
            .map_err(|e| classify("queue", queue, &e))?;
        let _ = channel.close(200, "done".into()).await;
        Ok(QueueStats {
            messages: q.message_count(),
            consumers: q.consumer_count(),
        })
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
