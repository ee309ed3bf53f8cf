//! The cascade on the broker: a topic exchange and a quorum queue per
//! level, the delivery exchange, and the parking queue for what no
//! destination takes.
//!
//! The trap: with at-least-once dead-lettering, a level queue keeps a
//! message until the exchange it dead-letters to has routed it somewhere.
//! A message whose destination queue was deleted would be retried there
//! forever, and once enough of them pile up they hold back every message
//! of the level behind them. So the delivery exchange has an alternate
//! exchange: whatever no destination takes is routed to the parking queue
//! `<prefix>.unroutable`, where an operator sees it (its routing key ends
//! with the destination it was meant for), instead of staying in a level.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::ExchangeBindOptions;
use lapin::types::FieldTable;

use super::cascade::{self, Names};
use crate::bounded::{bounded, close_channel};
use crate::connection::{Broker, Redeclare, RedeclareFuture, Role};
use crate::error::Result;
use crate::topology::{Binding, DeadLetter, Exchange, Queue, Topology};
use crate::wire::short;

/// The exchanges, queues and exchange-to-queue bindings of a cascade of
/// `levels` levels.
pub(crate) fn topology(names: &Names, levels: u32) -> Topology {
    let unroutable = names.unroutable();
    let mut t = Topology::new()
        .exchange(Exchange::fanout(&unroutable))
        .queue(
            Queue::new(&unroutable)
                .dead_letter(DeadLetter::Off)
                .unlimited_deliveries(),
        )
        .binding(Binding::new(&unroutable, &unroutable, ""))
        .exchange(Exchange::topic(names.delivery()).argument("alternate-exchange", unroutable));
    for level in 0..levels {
        let name = names.level(level);
        t = t
            .exchange(Exchange::topic(&name))
            .queue(level_queue(names, level))
            .binding(Binding::new(&name, &name, cascade::queue_binding(level)));
    }
    t
}

/// Level `level`'s queue: a quorum queue (at-least-once dead-lettering, so
/// a message is not lost between levels) whose messages all live 2^level
/// seconds, then go to the next exchange down. Nobody consumes it, so it
/// has no delivery limit of its own.
fn level_queue(names: &Names, level: u32) -> Queue {
    let next = match level {
        0 => names.delivery(),
        _ => names.level(level - 1),
    };
    Queue::new(names.level(level))
        .broker_default_delivery_limit()
        .message_ttl(Duration::from_secs(1 << level))
        .dead_letter(DeadLetter::To {
            exchange: next,
            routing_key: None,
        })
}

/// `(destination, source, key)`: each level's exchange passes what waits
/// at no level of its own to the next exchange down.
pub(crate) fn exchange_bindings(names: &Names, levels: u32) -> Vec<(String, String, String)> {
    (0..levels)
        .map(|level| {
            let next = match level {
                0 => names.delivery(),
                _ => names.level(level - 1),
            };
            (
                next,
                names.level(level),
                cascade::fall_through_binding(level),
            )
        })
        .collect()
}

/// Declares the whole cascade (idempotent), and registers it to be
/// declared again after every reconnect: exchanges and queues first, then
/// the exchange-to-exchange bindings, which a broker that lost its
/// definitions would otherwise miss (a level would hold what falls
/// through it).
pub(crate) async fn declare(broker: &Broker, names: &Names, levels: u32) -> Result<()> {
    broker.declare(&topology(names, levels)).await?;
    let fall_through = FallThrough(exchange_bindings(names, levels));
    fall_through.bind(broker).await?;
    broker.register_redeclare(Arc::new(fall_through));
    Ok(())
}

/// The cascade's exchange-to-exchange bindings, `(destination, source,
/// key)`. Registered after the cascade's topology, so redeclared after its
/// exchanges.
#[derive(Debug, PartialEq)]
struct FallThrough(Vec<(String, String, String)>);

impl FallThrough {
    async fn bind(&self, broker: &Broker) -> Result<()> {
        let timeout = broker.operation_timeout();
        let channel = broker.open_channel(Role::Publish).await?;
        let result = async {
            for (destination, source, key) in &self.0 {
                bounded(
                    timeout,
                    "exchange.bind",
                    channel.exchange_bind(
                        short("an exchange name", destination)?,
                        short("an exchange name", source)?,
                        short("a binding key", key)?,
                        ExchangeBindOptions::default(),
                        FieldTable::default(),
                    ),
                )
                .await?;
            }
            Ok(())
        }
        .await;
        close_channel(&channel, timeout, "delay cascade bound").await;
        result
    }
}

impl Redeclare for FallThrough {
    fn redeclare<'a>(&'a self, broker: &'a Broker) -> RedeclareFuture<'a> {
        Box::pin(self.bind(broker))
    }

    fn same_as(&self, other: &dyn Any) -> bool {
        other.downcast_ref::<FallThrough>() == Some(self)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_level_dead_letters_to_the_next_exchange_down_and_level_zero_to_delivery() {
        let names = Names::new("d");
        let t = topology(&names, 3);
        let queues: Vec<_> = t.queues().map(|q| q.name().to_owned()).collect();
        assert_eq!(
            queues,
            ["d.unroutable", "d.level-00", "d.level-01", "d.level-02"]
        );
        let args = level_queue(&names, 2).arguments();
        assert_eq!(args["x-message-ttl"], 4_000_i64.into());
        assert_eq!(args["x-dead-letter-exchange"], "d.level-01".into());
        assert_eq!(args["x-dead-letter-strategy"], "at-least-once".into());
        assert_eq!(args["x-overflow"], "reject-publish".into());
        assert_eq!(
            level_queue(&names, 0).arguments()["x-dead-letter-exchange"],
            "d.delivery".into()
        );
        let delivery = t
            .exchanges()
            .find(|e| e.name() == "d.delivery")
            .expect("delivery");
        assert_eq!(
            delivery.arguments["alternate-exchange"],
            "d.unroutable".into()
        );
        let e2e = exchange_bindings(&names, 3);
        assert_eq!(e2e[0].0, "d.delivery");
        assert_eq!(
            e2e[2],
            (
                "d.level-01".into(),
                "d.level-02".into(),
                cascade::fall_through_binding(2)
            )
        );
    }
}
