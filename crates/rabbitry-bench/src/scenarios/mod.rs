//! The scenarios. Each runs the SDK path and its baseline alternately.

pub(crate) mod consume;
pub(crate) mod consume_idempotent;
pub(crate) mod consume_inbox;
pub(crate) mod delay_precision;
pub(crate) mod enqueue;
pub(crate) mod ordered;
pub(crate) mod publish;
pub(crate) mod relay;
