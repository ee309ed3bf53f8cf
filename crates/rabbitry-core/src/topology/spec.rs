//! Declarative specs for exchanges, queues and bindings.

use std::collections::BTreeMap;
use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// The type of an exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExchangeKind {
    /// Routes on an exact routing key.
    Direct,
    /// Routes on routing-key patterns.
    Topic,
    /// Routes to every bound queue.
    Fanout,
    /// Routes on headers.
    Headers,
    /// `x-consistent-hash` (plugin `rabbitmq_consistent_hash_exchange`).
    ConsistentHash,
    /// Any other type, by name.
    Custom(String),
}

impl ExchangeKind {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Headers => "headers",
            ExchangeKind::ConsistentHash => "x-consistent-hash",
            ExchangeKind::Custom(s) => s,
        }
    }
}

/// Extra `x-` arguments, by name. Values are kept typed.
pub type Arguments = BTreeMap<String, ArgValue>;

/// A typed argument value.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ArgValue {
    /// A string.
    Str(String),
    /// A signed integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
}

impl From<&str> for ArgValue {
    fn from(s: &str) -> Self {
        ArgValue::Str(s.to_owned())
    }
}
impl From<String> for ArgValue {
    fn from(s: String) -> Self {
        ArgValue::Str(s)
    }
}
impl From<i64> for ArgValue {
    fn from(v: i64) -> Self {
        ArgValue::Int(v)
    }
}
impl From<bool> for ArgValue {
    fn from(v: bool) -> Self {
        ArgValue::Bool(v)
    }
}

pub(crate) fn field_table(args: &Arguments) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in args {
        let value = match v {
            ArgValue::Str(s) => AMQPValue::LongString(LongString::from(s.as_str())),
            ArgValue::Int(i) => AMQPValue::LongLongInt(*i),
            ArgValue::Bool(b) => AMQPValue::Boolean(*b),
        };
        table.insert(ShortString::from(k.as_str()), value);
    }
    table
}

/// An exchange. Durable by default.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct Exchange {
    pub(crate) name: String,
    pub(crate) kind: ExchangeKind,
    pub(crate) durable: bool,
    pub(crate) auto_delete: bool,
    pub(crate) internal: bool,
    pub(crate) arguments: Arguments,
}

impl Exchange {
    /// A durable exchange of the given kind.
    pub fn new(name: impl Into<String>, kind: ExchangeKind) -> Self {
        Self {
            name: name.into(),
            kind,
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: Arguments::new(),
        }
    }
    /// A durable topic exchange.
    pub fn topic(name: impl Into<String>) -> Self {
        Self::new(name, ExchangeKind::Topic)
    }
    /// A durable direct exchange.
    pub fn direct(name: impl Into<String>) -> Self {
        Self::new(name, ExchangeKind::Direct)
    }
    /// A durable fanout exchange.
    pub fn fanout(name: impl Into<String>) -> Self {
        Self::new(name, ExchangeKind::Fanout)
    }
    /// Durable (survives a broker restart). Default: true.
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }
    /// Deleted when the last binding goes. Default: false.
    pub fn auto_delete(mut self, yes: bool) -> Self {
        self.auto_delete = yes;
        self
    }
    /// Only reachable from other exchanges. Default: false.
    pub fn internal(mut self, yes: bool) -> Self {
        self.internal = yes;
        self
    }
    /// Adds an `x-` argument.
    pub fn argument(mut self, key: impl Into<String>, value: impl Into<ArgValue>) -> Self {
        self.arguments.insert(key.into(), value.into());
        self
    }
    /// The exchange's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The queue type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum QueueType {
    /// Raft-replicated, durable; the default.
    #[default]
    Quorum,
    /// A classic queue (single node).
    Classic,
    /// A stream.
    Stream,
}

/// What happens when a queue with a length limit is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Overflow {
    /// Drop (or dead-letter) the oldest message.
    DropHead,
    /// Refuse new messages: publishers with confirms get a nack.
    RejectPublish,
    /// Refuse new messages and dead-letter them (classic queues only).
    RejectPublishDlx,
}

impl Overflow {
    fn as_str(self) -> &'static str {
        match self {
            Overflow::DropHead => "drop-head",
            Overflow::RejectPublish => "reject-publish",
            Overflow::RejectPublishDlx => "reject-publish-dlx",
        }
    }
}

/// Where a queue's dead letters go.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeadLetter {
    /// The convention: exchange `<queue>.dlx` (fanout) and queue
    /// `<queue>.dlq`, both declared with the queue. The default.
    Convention,
    /// A given exchange, optionally with a fixed routing key. Not declared
    /// by the queue.
    To {
        /// The dead-letter exchange.
        exchange: String,
        /// Replace the routing key with this one.
        routing_key: Option<String>,
    },
    /// No dead-lettering: rejected or expired messages are dropped.
    Off,
}

/// A queue. Quorum, durable and wired to a dead-letter exchange by default.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct Queue {
    pub(crate) name: String,
    pub(crate) queue_type: QueueType,
    pub(crate) durable: bool,
    pub(crate) exclusive: bool,
    pub(crate) auto_delete: bool,
    pub(crate) lazy: bool,
    pub(crate) max_length: Option<i64>,
    pub(crate) max_length_bytes: Option<i64>,
    pub(crate) overflow: Option<Overflow>,
    pub(crate) delivery_limit: Option<i64>,
    pub(crate) single_active_consumer: bool,
    pub(crate) message_ttl: Option<Duration>,
    pub(crate) dead_letter: DeadLetter,
    pub(crate) at_least_once_dead_letter: bool,
    pub(crate) arguments: Arguments,
}

impl Queue {
    /// A durable quorum queue whose dead letters go to `<name>.dlx` →
    /// `<name>.dlq`, with at-least-once dead-lettering.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            queue_type: QueueType::Quorum,
            durable: true,
            exclusive: false,
            auto_delete: false,
            lazy: false,
            max_length: None,
            max_length_bytes: None,
            overflow: None,
            delivery_limit: None,
            single_active_consumer: false,
            message_ttl: None,
            dead_letter: DeadLetter::Convention,
            at_least_once_dead_letter: true,
            arguments: Arguments::new(),
        }
    }

    /// A classic queue (single node, not replicated).
    pub fn classic(name: impl Into<String>) -> Self {
        Self::new(name).queue_type(QueueType::Classic)
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name of the conventional dead-letter exchange for a queue.
    pub fn dead_letter_exchange_name(queue: &str) -> String {
        format!("{queue}.dlx")
    }

    /// The name of the conventional dead-letter queue for a queue.
    pub fn dead_letter_queue_name(queue: &str) -> String {
        format!("{queue}.dlq")
    }

    /// The queue type. Default: quorum.
    pub fn queue_type(mut self, t: QueueType) -> Self {
        self.queue_type = t;
        self
    }
    /// Durable. Default: true (quorum queues are always durable).
    pub fn durable(mut self, yes: bool) -> Self {
        self.durable = yes;
        self
    }
    /// Exclusive to the declaring connection (classic only). Default: false.
    pub fn exclusive(mut self, yes: bool) -> Self {
        self.exclusive = yes;
        self
    }
    /// Deleted when its last consumer goes. Default: false.
    pub fn auto_delete(mut self, yes: bool) -> Self {
        self.auto_delete = yes;
        self
    }
    /// Lazy mode (`x-queue-mode=lazy`), classic queues only: messages go
    /// to disk at once, for large backlogs. Ignored by brokers from 3.12 on,
    /// where classic queues v2 behave this way already.
    pub fn lazy(mut self, yes: bool) -> Self {
        self.lazy = yes;
        self
    }
    /// `x-max-length`: at most this many ready messages.
    pub fn max_length(mut self, n: i64) -> Self {
        self.max_length = Some(n);
        self
    }
    /// `x-max-length-bytes`: at most this many bytes of ready messages.
    pub fn max_length_bytes(mut self, n: i64) -> Self {
        self.max_length_bytes = Some(n);
        self
    }
    /// `x-overflow`: what happens when full. Default: the broker's
    /// (drop-head), or reject-publish with at-least-once dead-lettering.
    pub fn overflow(mut self, o: Overflow) -> Self {
        self.overflow = Some(o);
        self
    }
    /// `x-delivery-limit` (quorum only): after this many failed deliveries
    /// the message is dead-lettered: the poison-message guard.
    pub fn delivery_limit(mut self, n: i64) -> Self {
        self.delivery_limit = Some(n);
        self
    }
    /// `x-single-active-consumer`: one consumer at a time gets deliveries.
    pub fn single_active_consumer(mut self, yes: bool) -> Self {
        self.single_active_consumer = yes;
        self
    }
    /// `x-message-ttl` for every message in the queue.
    pub fn message_ttl(mut self, ttl: Duration) -> Self {
        self.message_ttl = Some(ttl);
        self
    }
    /// Where dead letters go. Default: [`DeadLetter::Convention`].
    pub fn dead_letter(mut self, d: DeadLetter) -> Self {
        self.dead_letter = d;
        self
    }
    /// Quorum queues: dead-letter with publisher confirms
    /// (`x-dead-letter-strategy=at-least-once`), so a dead letter is never
    /// dropped on the way. It requires `x-overflow=reject-publish`.
    /// Default: true.
    pub fn at_least_once_dead_letter(mut self, yes: bool) -> Self {
        self.at_least_once_dead_letter = yes;
        self
    }
    /// Adds any other `x-` argument.
    pub fn argument(mut self, key: impl Into<String>, value: impl Into<ArgValue>) -> Self {
        self.arguments.insert(key.into(), value.into());
        self
    }

    /// Checks the combination of settings.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let name = &self.name;
        if name.is_empty() {
            return Err(
                "a queue needs a name (server-named queues are not managed by a topology)".into(),
            );
        }
        crate::wire::check_name("queue name", name)?;
        let quorum = self.queue_type == QueueType::Quorum;
        if quorum && (!self.durable || self.exclusive || self.auto_delete) {
            return Err(format!(
                "quorum queue '{name}' must be durable, not exclusive, not auto-delete"
            ));
        }
        if self.lazy && self.queue_type != QueueType::Classic {
            return Err(format!(
                "lazy mode applies to classic queues only ('{name}')"
            ));
        }
        if self.delivery_limit.is_some() && !quorum {
            return Err(format!(
                "x-delivery-limit applies to quorum queues only ('{name}'); classic queues use an attempt header"
            ));
        }
        if quorum && self.overflow == Some(Overflow::RejectPublishDlx) {
            return Err(format!(
                "quorum queue '{name}' does not support x-overflow=reject-publish-dlx"
            ));
        }
        if self.at_least_once_dead_letter_applies() && self.overflow == Some(Overflow::DropHead) {
            return Err(format!(
                "quorum queue '{name}': at-least-once dead-lettering needs x-overflow=reject-publish; \
                 set overflow(RejectPublish) or at_least_once_dead_letter(false)"
            ));
        }
        for (what, v) in [
            ("max_length", self.max_length),
            ("max_length_bytes", self.max_length_bytes),
            ("delivery_limit", self.delivery_limit),
        ] {
            if let Some(v) = v
                && v < 0
            {
                return Err(format!("{what} of queue '{name}' must not be negative"));
            }
        }
        Ok(())
    }

    fn at_least_once_dead_letter_applies(&self) -> bool {
        self.queue_type == QueueType::Quorum
            && self.at_least_once_dead_letter
            && self.dead_letter != DeadLetter::Off
    }

    /// The `x-` arguments sent with `queue.declare`.
    pub(crate) fn arguments(&self) -> Arguments {
        let mut args = self.arguments.clone();
        let mut set = |k: &str, v: ArgValue| {
            args.insert(k.to_owned(), v);
        };
        match self.queue_type {
            QueueType::Quorum => set("x-queue-type", "quorum".into()),
            QueueType::Stream => set("x-queue-type", "stream".into()),
            QueueType::Classic => {
                if self.lazy {
                    set("x-queue-mode", "lazy".into());
                }
            }
        }
        if let Some(n) = self.max_length {
            set("x-max-length", n.into());
        }
        if let Some(n) = self.max_length_bytes {
            set("x-max-length-bytes", n.into());
        }
        if let Some(n) = self.delivery_limit {
            set("x-delivery-limit", n.into());
        }
        if self.single_active_consumer {
            set("x-single-active-consumer", true.into());
        }
        if let Some(ttl) = self.message_ttl {
            set(
                "x-message-ttl",
                i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).into(),
            );
        }
        match &self.dead_letter {
            DeadLetter::Convention => {
                set(
                    "x-dead-letter-exchange",
                    Self::dead_letter_exchange_name(&self.name).into(),
                );
            }
            DeadLetter::To {
                exchange,
                routing_key,
            } => {
                set("x-dead-letter-exchange", exchange.clone().into());
                if let Some(rk) = routing_key {
                    set("x-dead-letter-routing-key", rk.clone().into());
                }
            }
            DeadLetter::Off => {}
        }
        let overflow = match self.overflow {
            Some(o) => Some(o),
            None if self.at_least_once_dead_letter_applies() => Some(Overflow::RejectPublish),
            None => None,
        };
        if let Some(o) = overflow {
            set("x-overflow", o.as_str().into());
        }
        if self.at_least_once_dead_letter_applies() {
            set("x-dead-letter-strategy", "at-least-once".into());
        }
        args
    }
}

/// A binding from an exchange to a queue.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct Binding {
    pub(crate) exchange: String,
    pub(crate) queue: String,
    pub(crate) routing_key: String,
    pub(crate) arguments: Arguments,
}

impl Binding {
    /// Binds `queue` to `exchange` with `routing_key`.
    pub fn new(
        exchange: impl Into<String>,
        queue: impl Into<String>,
        routing_key: impl Into<String>,
    ) -> Self {
        Self {
            exchange: exchange.into(),
            queue: queue.into(),
            routing_key: routing_key.into(),
            arguments: Arguments::new(),
        }
    }
    /// Adds a binding argument (headers exchanges).
    pub fn argument(mut self, key: impl Into<String>, value: impl Into<ArgValue>) -> Self {
        self.arguments.insert(key.into(), value.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_queue_is_quorum_with_at_least_once_dead_lettering() {
        let args = Queue::new("orders").arguments();
        assert_eq!(args["x-queue-type"], ArgValue::from("quorum"));
        assert_eq!(args["x-dead-letter-exchange"], ArgValue::from("orders.dlx"));
        assert_eq!(
            args["x-dead-letter-strategy"],
            ArgValue::from("at-least-once")
        );
        assert_eq!(args["x-overflow"], ArgValue::from("reject-publish"));
    }

    #[test]
    fn classic_lazy_queue_has_no_quorum_arguments() {
        let q = Queue::classic("backlog")
            .lazy(true)
            .max_length(10)
            .overflow(Overflow::DropHead);
        q.validate().expect("valid");
        let args = q.arguments();
        assert_eq!(args["x-queue-mode"], ArgValue::from("lazy"));
        assert_eq!(args["x-max-length"], ArgValue::Int(10));
        assert!(!args.contains_key("x-queue-type"));
        assert!(!args.contains_key("x-dead-letter-strategy"));
    }

    #[test]
    fn contradictory_settings_are_rejected_with_the_queue_name() {
        let err = Queue::new("q1")
            .lazy(true)
            .validate()
            .expect_err("lazy quorum");
        assert!(err.contains("q1") && err.contains("classic"));
        let err = Queue::new("q2")
            .overflow(Overflow::DropHead)
            .validate()
            .expect_err("drop-head");
        assert!(err.contains("reject-publish"));
        let err = Queue::classic("q3")
            .delivery_limit(3)
            .validate()
            .expect_err("classic limit");
        assert!(err.contains("quorum"));
        Queue::new("q4")
            .overflow(Overflow::DropHead)
            .at_least_once_dead_letter(false)
            .validate()
            .expect("explicit opt-out is fine");
    }
}
