//! The partitioned publisher: every message needs a partition key, which
//! picks its partition; the partition count travels in a header.

use std::sync::Arc;

use super::count_check::PARTITIONS_HEADER;
use super::layout::Partitions;
use super::route::Route;
use crate::error::{Error, Result};
use crate::message::{HeaderValue, Message, PARTITION_KEY_HEADER};
use crate::publisher::{PublishOutcome, Publisher};

/// Publishes to a set of [`Partitions`]: a message's partition key picks
/// its partition queue, so one key's messages stay in one queue, in order.
/// Cheap to clone.
///
/// - A message without a partition key is refused
///   ([`Error::InvalidMessage`]), never spread at random.
/// - The message's exchange and routing key are replaced by the route's.
/// - With [`Route::Jump`] the `x-rabbitry-partitions` header carries the
///   partition count the publisher hashed with. With an exchange route the
///   broker picks the partition and the publisher's count means nothing,
///   so no header is sent.
/// - With an outbox, a message whose key still has an unsent row there is
///   deferred behind it ([`Publisher::publish_in_order`]).
///
/// ```no_run
/// # async fn run(broker: rabbitry_core::Broker) -> Result<(), rabbitry_core::Error> {
/// use rabbitry_core::{Message, PartitionedPublisher, Partitions, Publisher};
///
/// let partitions = Partitions::new("user-events", 4);
/// broker.declare(&partitions.topology()?).await?;
/// let publisher = PartitionedPublisher::new(Publisher::builder(broker).build()?, partitions)?;
/// publisher
///     .publish(Message::bytes("", "", "signed up").partition_key("user-42"))
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct PartitionedPublisher {
    publisher: Publisher,
    partitions: Arc<Partitions>,
}

impl PartitionedPublisher {
    /// Publishes through `publisher` to `partitions`. Fails on a bad
    /// partition set, or a route the broker (if connected) cannot carry.
    pub fn new(publisher: Publisher, partitions: Partitions) -> Result<Self> {
        partitions.validate()?;
        partitions
            .route_kind()
            .check(publisher.broker().server_version())?;
        Ok(Self {
            publisher,
            partitions: Arc::new(partitions),
        })
    }

    /// The partitions.
    pub fn partitions(&self) -> &Partitions {
        &self.partitions
    }

    /// Routes `message` by its partition key and publishes it, keeping its
    /// key's order with the outbox. See [`Publisher::publish`] for the
    /// outcomes.
    pub async fn publish(&self, message: Message) -> Result<PublishOutcome> {
        let message = self.route(message)?;
        self.publisher.publish_in_order(message).await
    }

    /// Routes `message` by its partition key: the destination and header it
    /// is sent with.
    pub fn route(&self, message: Message) -> Result<Message> {
        let route = self.partitions.route_kind();
        // A broker met after `new` (a lazy connection) is checked here.
        route.check(self.publisher.broker().server_version())?;
        let key = partition_key(&message)?.to_owned();
        let (exchange, routing_key) = match route {
            Route::Jump => (
                String::new(),
                self.partitions.queue_name(self.partitions.index_of(&key)),
            ),
            // The consistent-hash exchange hashes the key header and
            // ignores the routing key.
            Route::ConsistentHash => (
                self.partitions.exchange_name(),
                message.routing_key().to_owned(),
            ),
            Route::ModulusHash => (self.partitions.exchange_name(), key),
        };
        let message = message.route_to(exchange, routing_key);
        Ok(match route {
            Route::Jump => message.header(PARTITIONS_HEADER, i64::from(self.partitions.count())),
            // The broker's bindings decide; a count stamped here could be
            // stale while the partition is right, or right while it is not.
            Route::ConsistentHash | Route::ModulusHash => message,
        })
    }
}

/// The message's partition key, or why it has none usable.
fn partition_key(message: &Message) -> Result<&str> {
    let invalid = |reason: &str| Error::InvalidMessage {
        reason: reason.to_owned(),
    };
    match message.properties().headers.get(PARTITION_KEY_HEADER) {
        None => Err(invalid(
            "a partitioned publisher needs a partition key (Message::partition_key)",
        )),
        Some(HeaderValue::Str(key)) if key.is_empty() => Err(invalid("the partition key is empty")),
        Some(HeaderValue::Str(key)) => Ok(key),
        Some(_) => Err(invalid(&format!(
            "the {PARTITION_KEY_HEADER} header is not a string"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_publishers_own_hash_stamps_the_partition_count() {
        let publisher = Publisher::builder(crate::consumer::unreachable_broker())
            .build()
            .expect("publisher");
        let message = || Message::bytes("", "", "x").partition_key("user-1");
        let jump =
            PartitionedPublisher::new(publisher.clone(), Partitions::new("p", 4)).expect("jump");
        let routed = jump.route(message()).expect("routed");
        assert_eq!(
            routed.properties().headers.get(PARTITIONS_HEADER),
            Some(&HeaderValue::from(4i64))
        );
        let ring = Partitions::new("p", 4).route(Route::ConsistentHash);
        let ring = PartitionedPublisher::new(publisher, ring).expect("ring");
        let routed = ring.route(message()).expect("routed");
        assert_eq!(routed.properties().headers.get(PARTITIONS_HEADER), None);
    }
}
