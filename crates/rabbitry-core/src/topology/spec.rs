//! Declarative specs for exchanges and bindings, and the argument values
//! every spec uses.

use std::collections::BTreeMap;

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
