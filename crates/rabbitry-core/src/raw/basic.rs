//! The basic-class methods the rescue needs besides publishing: `qos`,
//! `get` with or without ack, `ack`, `nack` and `reject`.

use std::io;

use super::client::RawClient;
use super::properties::RawProperties;
use super::wire::{BASIC, Reader, invalid, method, put_short};

/// A message read with [`RawClient::get`] or [`RawClient::get_unacked`].
///
/// `Debug` shows the body's and the properties' sizes, not their bytes.
#[derive(Clone)]
pub struct RawMessage {
    /// The delivery tag on the client's channel (0 for a message taken
    /// with [`RawClient::get`], which the broker forgets at once).
    pub delivery_tag: u64,
    /// Whether the broker delivered it before.
    pub redelivered: bool,
    /// The exchange it was published to.
    pub exchange: Vec<u8>,
    /// Its routing key.
    pub routing_key: Vec<u8>,
    /// Its properties, decoded without any UTF-8 check; empty when they do
    /// not decode (`property_bytes` has them as received).
    pub properties: RawProperties,
    /// The content header's property flags and list, as received.
    pub property_bytes: Vec<u8>,
    /// The body.
    pub body: Vec<u8>,
}

impl std::fmt::Debug for RawMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lossy = String::from_utf8_lossy;
        f.debug_struct("RawMessage")
            .field("delivery_tag", &self.delivery_tag)
            .field("redelivered", &self.redelivered)
            .field("exchange", &lossy(&self.exchange))
            .field("routing_key", &lossy(&self.routing_key))
            .field("property_bytes", &self.property_bytes.len())
            .field("body_bytes", &self.body.len())
            .finish_non_exhaustive()
    }
}

impl RawClient {
    /// `basic.qos`: at most `prefetch` unacked messages on the channel.
    pub async fn qos(&mut self, prefetch: u16) -> io::Result<()> {
        let mut qos = method(BASIC, 10);
        qos.extend_from_slice(&0u32.to_be_bytes()); // prefetch size: any
        qos.extend_from_slice(&prefetch.to_be_bytes());
        qos.push(0); // this channel only
        self.send_method(1, &qos).await?;
        self.expect_method(1, BASIC, 11).await?;
        Ok(())
    }

    /// Takes the next message from `queue` with `basic.get` (acked on
    /// delivery), or `None` if the queue is empty.
    pub async fn get(&mut self, queue: &str) -> io::Result<Option<RawMessage>> {
        self.basic_get(queue, true).await
    }

    /// Takes the next message from `queue` with `basic.get` and no-ack off:
    /// it stays the broker's until [`ack`](Self::ack)ed, and goes back to
    /// the queue when [`nack`](Self::nack)ed or when this connection ends.
    /// `None` if the queue is empty.
    pub async fn get_unacked(&mut self, queue: &str) -> io::Result<Option<RawMessage>> {
        self.basic_get(queue, false).await
    }

    async fn basic_get(&mut self, queue: &str, no_ack: bool) -> io::Result<Option<RawMessage>> {
        let mut get = method(BASIC, 70);
        get.extend_from_slice(&0u16.to_be_bytes());
        put_short(&mut get, queue.as_bytes())?;
        get.push(u8::from(no_ack));
        self.send_method(1, &get).await?;
        let (channel, payload) = self.read_method().await?;
        let mut r = Reader::new(&payload);
        match (channel, r.u16()?, r.u16()?) {
            (1, BASIC, 72) => Ok(None),
            (1, BASIC, 71) => {
                let tag = r.u64()?;
                let redelivered = r.u8()? & 1 != 0;
                let exchange = r.short()?;
                let routing_key = r.short()?;
                let (property_bytes, body) = self.read_content().await?;
                Ok(Some(RawMessage {
                    delivery_tag: if no_ack { 0 } else { tag },
                    redelivered,
                    exchange,
                    routing_key,
                    properties: RawProperties::decode(&property_bytes).unwrap_or_default(),
                    property_bytes,
                    body,
                }))
            }
            (c, class, id) => Err(invalid(format!(
                "unexpected method {class}.{id} on channel {c} after basic.get"
            ))),
        }
    }

    /// `basic.ack` of one message taken with [`get_unacked`](Self::get_unacked).
    pub async fn ack(&mut self, delivery_tag: u64) -> io::Result<()> {
        let mut ack = method(BASIC, 80);
        ack.extend_from_slice(&delivery_tag.to_be_bytes());
        ack.push(0); // not multiple
        self.send_method(1, &ack).await
    }

    /// `basic.nack`: gives messages back (`requeue`) or drops them (to the
    /// queue's dead-letter exchange, if it has one).
    pub async fn nack(
        &mut self,
        delivery_tag: u64,
        multiple: bool,
        requeue: bool,
    ) -> io::Result<()> {
        let mut nack = method(BASIC, 120);
        nack.extend_from_slice(&delivery_tag.to_be_bytes());
        nack.push(u8::from(multiple) | (u8::from(requeue) << 1));
        self.send_method(1, &nack).await
    }

    /// `basic.reject` of one message.
    pub async fn reject(&mut self, delivery_tag: u64, requeue: bool) -> io::Result<()> {
        let mut reject = method(BASIC, 90);
        reject.extend_from_slice(&delivery_tag.to_be_bytes());
        reject.push(u8::from(requeue));
        self.send_method(1, &reject).await
    }
}
