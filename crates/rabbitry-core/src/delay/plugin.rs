//! Is the `x-delayed-message` plugin there? Asked by declaring its
//! exchange, on a connection of its own.
//!
//! A connection of its own, not just a channel: RabbitMQ 3.x answers an
//! unknown exchange type with 503 COMMAND_INVALID, a connection-level
//! error, which closes the whole connection (4.x answers 406, a channel
//! error). The shared publishing connection, and every confirm in flight on
//! it, stays out of it.

use lapin::options::ExchangeDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};

use crate::bounded::within;
use crate::connection::{Broker, ServerVersion};
use crate::error::{Error, Result};
use crate::wire::short;

/// The exchange type the plugin adds.
pub(crate) const EXCHANGE_TYPE: &str = "x-delayed-message";

/// What the broker said about the plugin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Plugin {
    /// The exchange is declared and usable.
    Present,
    /// Not usable, and why (for the log).
    Missing(String),
}

/// RabbitMQ 4.3 removed Mnesia, which the plugin is built on: never try it
/// there.
pub(crate) fn cannot_run_on(version: Option<ServerVersion>) -> bool {
    version.is_some_and(|v| v.at_least(4, 3))
}

/// Declares `exchange` as an `x-delayed-message` exchange routing like a
/// direct one: `Present` if the broker has the plugin, `Missing` if it
/// refused the type. Any other failure (the broker unreachable) is an error.
pub(crate) async fn detect(broker: &Broker, exchange: &str) -> Result<Plugin> {
    if let Some(v) = broker.server_version().filter(|v| cannot_run_on(Some(*v))) {
        return Ok(Plugin::Missing(format!(
            "RabbitMQ {v} cannot run the delayed-message plugin (it needs Mnesia, removed in 4.3)"
        )));
    }
    let name = short("the delayed-message exchange name", exchange)?;
    let (conn, channel) = broker.open_dedicated("delay-plugin-check").await?;
    let timeout = broker.operation_timeout();
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-delayed-type"),
        AMQPValue::LongString("direct".into()),
    );
    let options = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let declared = within(
        timeout,
        "exchange.declare (x-delayed-message)",
        channel.exchange_declare(
            name,
            lapin::ExchangeKind::Custom(EXCHANGE_TYPE.to_owned()),
            options,
            args,
        ),
    )
    .await;
    let _ = tokio::time::timeout(timeout, conn.close(200, "plugin checked".into())).await;
    match declared? {
        Ok(()) => Ok(Plugin::Present),
        Err(e) => match Error::from_lapin("exchange.declare (x-delayed-message)", &e) {
            // 503 on 3.x (the connection is closed), 406 on 4.x.
            Error::Broker {
                code: 406 | 503,
                text,
                ..
            } => Ok(Plugin::Missing(text)),
            other => Err(other),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_tried_from_rabbitmq_4_3_on() {
        assert!(!cannot_run_on(None));
        assert!(!cannot_run_on(Some(ServerVersion::new(3, 10, 8))));
        assert!(!cannot_run_on(Some(ServerVersion::new(4, 2, 9))));
        assert!(cannot_run_on(Some(ServerVersion::new(4, 3, 0))));
        assert!(cannot_run_on(Some(ServerVersion::new(5, 0, 0))));
    }
}
