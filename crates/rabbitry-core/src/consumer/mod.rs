//! The consumer: ack modes, dispatch strategies, layers, retry then
//! dead-letter, re-subscription after a broker cancel, graceful shutdown.
//!
//! Every delivery ends in one [`Disposition`], carried out by an executor
//! (confirmed republishes) and settled by one settle task per channel:
//! ack, requeue, or reject (broker dead-letter). In auto mode the handler's
//! result picks it: the table is on [`AckMode::Auto`], in the public docs.
//!
//! The file layout follows the way of a delivery: [`builder`] (settings),
//! `runtime` (subscribe, intake, recovery, drain), `dispatch` (when a
//! handler may start), `pipeline` (one delivery's way), `layer` and
//! `builtin` (the chain around the handler), `decision` (pure) and
//! `executor` (republishes), `settle` (acks on the wire).

mod backlog;
mod builder;
mod builtin;
mod decision;
mod delivery;
mod dispatch;
mod disposition;
mod error_queue;
mod executor;
mod handler;
mod lanes;
mod layer;
mod ordered;
mod pipeline;
mod policy;
mod republish;
mod rescue;
mod runtime;
mod settle;
mod subscription;
mod telemetry;

pub use self::builder::{
    AckMode, Consumer, ConsumerBuilder, ConsumerState, DEFAULT_HANDLER_TIMEOUT,
};
pub use self::delivery::{COUNTED_IN_HEADER, Delivery, REDELIVERIES_HEADER, RETRIES_HEADER};
pub use self::dispatch::{Concurrent, Dispatch, Slot};
pub use self::disposition::{Disposition, FailureKind};
pub use self::error_queue::{
    DEFAULT_SCAN, ErrorFilter, ErrorQueue, FailedMessage, ListQuery, Listing, ReplayReport,
};
pub use self::handler::{Handler, HandlerError, HandlerResult, JsonHandler, json};
pub use self::lanes::Lanes;
pub use self::layer::Next;
pub use self::ordered::{OrderedRetry, WhenExhausted};
pub use self::policy::{RetryPolicy, retry_queue_name};
pub use self::republish::headers;
pub use self::telemetry::ConsumerMetrics;

/// A broker that is never reached: for tests of the builder's checks.
#[cfg(test)]
pub(crate) fn unreachable_broker() -> crate::Broker {
    let config = crate::BrokerConfig::builder()
        .endpoint("amqp://guest:guest@127.0.0.1:1/%2f")
        .build()
        .expect("config");
    crate::Broker::lazy(config).expect("lazy broker")
}
