//! The hook through which a failed publish is stored for a later resend.

use std::future::Future;
use std::pin::Pin;

use crate::error::Error;
use crate::message::Message;

/// A boxed future, as returned by [`Outbox::defer`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Stores messages whose publish failed, to be resent until the broker
/// confirms them. `rabbitry-postgres`'s `OutboxStore` implements it.
///
/// A delayed message carries its due time ([`Message::due_at`]): a store
/// must not send it before then, or it is delivered early. It holds the
/// message for its destination queue, so sent at its due time it arrives
/// there at once.
pub trait Outbox: Send + Sync + 'static {
    /// Stores `message` durably; `cause` is why publishing failed. Returns
    /// the row id.
    fn defer<'a>(
        &'a self,
        message: &'a Message,
        cause: &'a Error,
    ) -> BoxFuture<'a, Result<i64, Box<dyn std::error::Error + Send + Sync>>>;

    /// Whether a message with partition key `key` is stored and not yet
    /// sent (or parked as dead): a keyed publish must then queue behind it
    /// instead of overtaking it ([`Publisher::publish_in_order`](super::Publisher::publish_in_order)).
    ///
    /// The default answers with an error: an outbox that cannot tell makes
    /// an ordered publish fail rather than risk overtaking.
    fn holds_key<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<bool, Box<dyn std::error::Error + Send + Sync>>> {
        let _ = key;
        Box::pin(async { Err("this outbox cannot tell which partition keys it holds".into()) })
    }
}
