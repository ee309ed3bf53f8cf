//! A keyed publish that never overtakes its key's unsent outbox rows.
//!
//! A publish that fails goes to the outbox, and the relay sends it later.
//! If the next message with the same key were published directly in the
//! meantime, it would reach the queue first. So, with an outbox configured,
//! a keyed message first asks the outbox whether its key has a row still
//! waiting there, and if so is deferred behind it; an ordered relay then
//! sends both in order.

use super::Publisher;
use crate::error::{Error, Result};
use crate::message::Message;
use crate::publisher::PublishOutcome;

impl Publisher {
    /// [`publish`](Self::publish), keeping the order of messages with the
    /// same partition key across the outbox: when the outbox still holds an
    /// unsent (or dead) message with this key, this one is deferred behind
    /// it (`Deferred`, cause [`Error::HeldForOrder`]) instead of being sent
    /// ahead of it. Run the relay in ordered mode.
    ///
    /// This costs one outbox lookup per keyed publish. When the outbox
    /// cannot answer (the database is down, or within the outbox timeout),
    /// the publish fails with [`Error::OutboxFailed`] and nothing is sent:
    /// order is not traded for availability. Without an outbox, or without
    /// a key, it is [`publish`](Self::publish).
    pub async fn publish_in_order(&self, mut message: Message) -> Result<PublishOutcome> {
        let (Some(outbox), Some(key)) = (&self.inner.outbox, message.key()) else {
            return self.publish(message).await;
        };
        let limit = self.inner.settings.outbox_timeout;
        let held = match tokio::time::timeout(limit, outbox.holds_key(key)).await {
            Ok(Ok(held)) => held,
            Ok(Err(e)) => return Err(unknown(&message, e.to_string())),
            Err(_) => {
                let e = format!("no answer from the outbox within {limit:?}");
                return Err(unknown(&message, e));
            }
        };
        if !held {
            return self.publish(message).await;
        }
        message.set_app_id_if_missing(&self.inner.settings.app_id);
        let cause = Error::HeldForOrder {
            message_id: message.id().to_owned(),
        };
        self.defer(outbox.as_ref(), &message, cause).await
    }
}

fn unknown(message: &Message, outbox: String) -> Error {
    Error::OutboxFailed {
        publish: Box::new(Error::HeldForOrder {
            message_id: message.id().to_owned(),
        }),
        outbox: format!("whether the partition key has unsent messages is unknown: {outbox}"),
    }
}
