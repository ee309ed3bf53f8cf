//! Removing a topology that was declared: for demos, tests and services
//! that create per-run queues.

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};

use super::Topology;
use crate::bounded::{bounded, close_channel};
use crate::connection::{Broker, Role};
use crate::error::{Error, Result};
use crate::wire::check_name;

/// What [`Broker::teardown`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TeardownReport {
    /// Queues deleted (a queue that was already gone counts too).
    pub queues: usize,
    /// Exchanges deleted.
    pub exchanges: usize,
    /// Messages that were still in the deleted queues, and went with them.
    pub messages_dropped: u64,
}

impl Broker {
    /// Deletes every queue and exchange of `topology` (queues first, with
    /// their bindings and **their messages**), and stops declaring it again
    /// after reconnects. Deleting what is already gone is not an error.
    ///
    /// Consumers on a deleted queue are cancelled by the broker: stop them
    /// first. The default exchange and `amq.*` exchanges are never deleted.
    pub async fn teardown(&self, topology: &Topology) -> Result<TeardownReport> {
        self.unregister_redeclare(topology);
        for name in topology
            .queues()
            .map(|q| q.name())
            .chain(topology.exchanges().map(|e| e.name()))
        {
            check_name("name", name).map_err(Error::Config)?;
        }
        let timeout = self.operation_timeout();
        let channel = self.open_channel(Role::Consume).await?;
        let mut report = TeardownReport::default();
        let removed = async {
            for q in topology.queues() {
                let dropped = bounded(
                    timeout,
                    "queue.delete",
                    channel.queue_delete(q.name().into(), QueueDeleteOptions::default()),
                )
                .await?;
                report.queues += 1;
                report.messages_dropped += u64::from(dropped);
            }
            for e in topology.exchanges() {
                if e.name().is_empty() || e.name().starts_with("amq.") {
                    continue;
                }
                bounded(
                    timeout,
                    "exchange.delete",
                    channel.exchange_delete(e.name().into(), ExchangeDeleteOptions::default()),
                )
                .await?;
                report.exchanges += 1;
            }
            Ok::<_, Error>(())
        }
        .await;
        close_channel(&channel, timeout, "teardown").await;
        removed.map(|()| report)
    }
}
