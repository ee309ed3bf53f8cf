//! Declarative specs for queues: type, dead-lettering, limits, and the
//! arguments rabbitry chooses for the broker's version.

use std::time::Duration;

use super::spec::{ArgValue, Arguments};
use crate::connection::ServerVersion;

/// The delivery limit rabbitry gives quorum queues that dead-letter, unless
/// told otherwise: a message that keeps coming back (one lapin cannot even
/// parse kills the consuming connection each time) is dead-lettered by the
/// broker, byte for byte, after this many returns. It is above the
/// consumer's own poison guard (`max_redeliveries`, 10 by default), so that
/// rabbitry's annotated copy gets there first.
pub const DEFAULT_DELIVERY_LIMIT: i64 = 20;
// Above the consumer's default `max_redeliveries` (10).
const _: () = assert!(DEFAULT_DELIVERY_LIMIT > 10);

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
    /// No dead-lettering: rejected or expired messages are dropped, and on
    /// RabbitMQ 4 so is a quorum queue's message returned more often than
    /// its delivery limit (20 unless set).
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
    pub(crate) delivery_limit: DeliveryLimit,
    pub(crate) single_active_consumer: bool,
    pub(crate) message_ttl: Option<Duration>,
    pub(crate) dead_letter: DeadLetter,
    pub(crate) at_least_once_dead_letter: bool,
    pub(crate) arguments: Arguments,
}

impl Queue {
    /// A durable quorum queue whose dead letters go to `<name>.dlx` →
    /// `<name>.dlq`, with at-least-once dead-lettering and a delivery limit
    /// of [`DEFAULT_DELIVERY_LIMIT`].
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
            delivery_limit: DeliveryLimit::Default,
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
    /// to disk at once, for large backlogs. Brokers from 3.12 on ignore it
    /// (classic queues v2 behave this way already) and 4.3 refuses it, so
    /// rabbitry sends it only to brokers older than 3.12, and says once
    /// that it is a no-op.
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
    /// `x-delivery-limit` (quorum only): after this many returns (nack or
    /// reject with requeue, or a channel closed with the message unacked)
    /// the message is dead-lettered: the broker's poison-message guard.
    ///
    /// Default: [`DEFAULT_DELIVERY_LIMIT`] (20) for quorum queues that
    /// dead-letter; unlimited for quorum queues that do not
    /// ([`DeadLetter::Off`]), since RabbitMQ 4.0's own default of 20 would
    /// **drop** a message past it (sent as `-1` from 4.0 on, no argument
    /// before). A queue that already exists without the default keeps what
    /// it has (see `docs/topology.md`).
    pub fn delivery_limit(mut self, n: i64) -> Self {
        self.delivery_limit = DeliveryLimit::Limit(n);
        self
    }
    /// No delivery limit: a message may come back any number of times. Sent
    /// as `x-delivery-limit=-1` to RabbitMQ 4.0 and later; left out before
    /// 4.0, where no limit is the default (and where 3.10 reads -1 as "drop
    /// at the first return").
    pub fn unlimited_deliveries(mut self) -> Self {
        self.delivery_limit = DeliveryLimit::Unlimited;
        self
    }
    /// No `x-delivery-limit` argument at all: the broker's default, and
    /// rabbitry's before it set one. For queues declared by an older
    /// rabbitry that must keep their arguments.
    pub fn broker_default_delivery_limit(mut self) -> Self {
        self.delivery_limit = DeliveryLimit::BrokerDefault;
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
        if matches!(self.delivery_limit, DeliveryLimit::Limit(_)) && !quorum {
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
            (
                "delivery_limit",
                match self.delivery_limit {
                    DeliveryLimit::Limit(n) => Some(n),
                    _ => None,
                },
            ),
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

    /// The `x-` arguments, for a broker whose version is not known.
    pub(crate) fn arguments(&self) -> Arguments {
        self.arguments_for(None).0
    }

    /// The `x-` arguments sent with `queue.declare` to a broker of
    /// `version`, and the ones rabbitry chose itself (not the user) that an
    /// existing queue may hold otherwise: on a 406 about one of those, the
    /// queue is declared again with the alternative instead of failing.
    pub(crate) fn arguments_for(
        &self,
        version: Option<ServerVersion>,
    ) -> (Arguments, Vec<SoftArgument>) {
        let mut soft = Vec::new();
        let mut args = self.arguments.clone();
        let mut set = |k: &str, v: ArgValue| {
            args.insert(k.to_owned(), v);
        };
        match self.queue_type {
            QueueType::Quorum => set("x-queue-type", "quorum".into()),
            QueueType::Stream => set("x-queue-type", "stream".into()),
            QueueType::Classic => {
                // 3.12 ignores lazy mode and 4.3 refuses the argument.
                let ignored = version.is_some_and(|v| v.at_least(3, 12));
                if self.lazy && ignored && !self.arguments.contains_key(QUEUE_MODE) {
                    soft.push(SoftArgument {
                        key: QUEUE_MODE,
                        otherwise: Some("lazy".into()),
                    });
                } else if self.lazy {
                    set(QUEUE_MODE, "lazy".into());
                }
            }
        }
        if let Some(n) = self.max_length {
            set("x-max-length", n.into());
        }
        if let Some(n) = self.max_length_bytes {
            set("x-max-length-bytes", n.into());
        }
        let quorum = self.queue_type == QueueType::Quorum;
        let limit = match self.delivery_limit {
            DeliveryLimit::Limit(n) => Some(n),
            DeliveryLimit::Default if quorum && self.dead_letter != DeadLetter::Off => {
                Some(DEFAULT_DELIVERY_LIMIT)
            }
            // Without a dead-letter target, 4.0's default limit would drop
            // the message: no limit at all is the only safe default there.
            DeliveryLimit::Unlimited | DeliveryLimit::Default
                if quorum && version.is_some_and(|v| v.at_least(4, 0)) =>
            {
                Some(-1)
            }
            _ => None,
        };
        if let Some(n) = limit
            && !self.arguments.contains_key(DELIVERY_LIMIT)
        {
            set(DELIVERY_LIMIT, n.into());
            if !matches!(self.delivery_limit, DeliveryLimit::Limit(_)) {
                soft.push(SoftArgument {
                    key: DELIVERY_LIMIT,
                    otherwise: None,
                });
            }
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
        (args, soft)
    }

    /// True when this queue was asked for lazy mode and `version` ignores it.
    pub(crate) fn lazy_is_a_no_op(&self, version: Option<ServerVersion>) -> bool {
        self.lazy && version.is_some_and(|v| v.at_least(3, 12))
    }
}

const QUEUE_MODE: &str = "x-queue-mode";
const DELIVERY_LIMIT: &str = "x-delivery-limit";

/// How a queue's `x-delivery-limit` is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DeliveryLimit {
    /// [`DEFAULT_DELIVERY_LIMIT`] for quorum queues that dead-letter.
    Default,
    /// This many returns.
    Limit(i64),
    /// Never: -1 on RabbitMQ 4.0+, no argument before.
    Unlimited,
    /// No argument.
    BrokerDefault,
}

/// An argument rabbitry chose (not the user), which an existing queue may
/// hold otherwise: with `otherwise` (`None`: without the argument) the
/// declaration is equivalent to what an older rabbitry, or the same one on
/// an older broker, declared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SoftArgument {
    pub(crate) key: &'static str,
    pub(crate) otherwise: Option<ArgValue>,
}
