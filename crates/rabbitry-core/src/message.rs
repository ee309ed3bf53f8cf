//! Outgoing messages: payload, routing and properties, kept in a form that
//! can be stored in the outbox byte for byte and sent again unchanged.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use crate::header::{HeaderValue, Headers};

/// Header carrying the partition key (read by the consistent-hash exchange
/// and by partitioned consumers).
pub const PARTITION_KEY_HEADER: &str = "x-partition-key";
/// W3C trace context header.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// The AMQP properties rabbitry sets and keeps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MessageProperties {
    /// Unique id, a UUIDv7 unless set.
    pub message_id: String,
    /// Seconds since the epoch when the message was created.
    pub timestamp: u64,
    /// MIME type of the payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Content encoding (gzip, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    /// Correlation id, to link replies and related messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Reply-to queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// Application-defined message type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Application id; the publisher fills it in when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    /// Per-message TTL in milliseconds, as AMQP's `expiration` string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
    /// Priority (priority queues only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// Persistent delivery mode (2). Default: true.
    pub persistent: bool,
    /// Headers, including `traceparent` and `x-partition-key`.
    #[serde(default)]
    pub headers: Headers,
}

/// A message to publish: destination, payload and properties.
///
/// ```
/// use rabbitry_core::Message;
///
/// #[derive(serde::Serialize)]
/// struct OrderCreated { id: u64 }
///
/// let msg = Message::json("orders", "order.created", &OrderCreated { id: 7 })?
///     .partition_key("customer-42")
///     .correlation_id("req-1");
/// assert_eq!(msg.properties().content_type.as_deref(), Some("application/json"));
/// assert_eq!(msg.key(), Some("customer-42"));
/// # Ok::<(), rabbitry_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
#[must_use]
pub struct Message {
    exchange: String,
    routing_key: String,
    /// Shared, so that a publish hands the collector its own reference
    /// without copying the body.
    payload: Bytes,
    properties: MessageProperties,
}

impl Message {
    /// Raw bytes, with no content type.
    pub fn bytes(
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
        payload: impl Into<Vec<u8>>,
    ) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut headers = Headers::new();
        headers.insert(
            TRACEPARENT_HEADER.to_owned(),
            HeaderValue::Str(crate::trace_context::outgoing()),
        );
        Self {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            payload: Bytes::from(payload.into()),
            properties: MessageProperties {
                message_id: new_message_id(now),
                timestamp: now.as_secs(),
                content_type: None,
                content_encoding: None,
                correlation_id: None,
                reply_to: None,
                kind: None,
                app_id: None,
                expiration: None,
                priority: None,
                persistent: true,
                headers,
            },
        }
    }

    /// A value serialized as JSON, with content type `application/json`.
    pub fn json<T: Serialize + ?Sized>(
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
        value: &T,
    ) -> Result<Self> {
        let payload = serde_json::to_vec(value)?;
        Ok(Self::bytes(exchange, routing_key, payload).content_type("application/json"))
    }

    /// Rebuilds a message from stored parts (the outbox does this).
    pub fn from_parts(
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
        payload: Vec<u8>,
        properties: MessageProperties,
    ) -> Self {
        Self {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            payload: Bytes::from(payload),
            properties,
        }
    }

    /// A message around a payload someone else holds too (a delivery being
    /// republished): nothing is copied.
    pub(crate) fn from_shared(
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
        payload: Bytes,
        properties: MessageProperties,
    ) -> Self {
        Self {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            payload,
            properties,
        }
    }

    /// Sets the message id (default: a new UUIDv7).
    pub fn message_id(mut self, id: impl Into<String>) -> Self {
        self.properties.message_id = id.into();
        self
    }
    /// Sets the content type.
    pub fn content_type(mut self, ct: impl Into<String>) -> Self {
        self.properties.content_type = Some(ct.into());
        self
    }
    /// Sets the correlation id.
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.properties.correlation_id = Some(id.into());
        self
    }
    /// Sets the reply-to queue.
    pub fn reply_to(mut self, queue: impl Into<String>) -> Self {
        self.properties.reply_to = Some(queue.into());
        self
    }
    /// Sets the application-defined message type.
    pub fn kind(mut self, kind: impl Into<String>) -> Self {
        self.properties.kind = Some(kind.into());
        self
    }
    /// Sets the partition key (header `x-partition-key`), which keeps
    /// messages with the same key in order through partitioned queues and
    /// through an ordered relay.
    pub fn partition_key(mut self, key: impl Into<String>) -> Self {
        self.properties.headers.insert(
            PARTITION_KEY_HEADER.to_owned(),
            HeaderValue::Str(key.into()),
        );
        self
    }
    /// Sets a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<HeaderValue>) -> Self {
        self.properties.headers.insert(name.into(), value.into());
        self
    }
    /// Sets the W3C `traceparent` (default: a fresh sampled trace).
    pub fn traceparent(self, value: impl Into<String>) -> Self {
        self.header(TRACEPARENT_HEADER, value.into())
    }
    /// Sets a per-message TTL.
    pub fn expiration(mut self, ttl: std::time::Duration) -> Self {
        self.properties.expiration = Some(ttl.as_millis().to_string());
        self
    }
    /// Persistent (default) or transient delivery mode.
    pub fn persistent(mut self, yes: bool) -> Self {
        self.properties.persistent = yes;
        self
    }
    /// Sets the priority.
    pub fn priority(mut self, p: u8) -> Self {
        self.properties.priority = Some(p);
        self
    }

    /// The exchange.
    pub fn exchange_name(&self) -> &str {
        &self.exchange
    }
    /// The routing key.
    pub fn routing_key(&self) -> &str {
        &self.routing_key
    }
    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
    /// The payload, shared (no copy).
    pub(crate) fn shared_payload(&self) -> Bytes {
        self.payload.clone()
    }
    /// The properties.
    pub fn properties(&self) -> &MessageProperties {
        &self.properties
    }
    /// The message id.
    pub fn id(&self) -> &str {
        &self.properties.message_id
    }
    /// The partition key, if set.
    pub fn key(&self) -> Option<&str> {
        self.properties
            .headers
            .get(PARTITION_KEY_HEADER)
            .and_then(HeaderValue::as_str)
    }

    /// The same message, sent to another exchange and routing key.
    pub(crate) fn route_to(mut self, exchange: String, routing_key: String) -> Self {
        self.exchange = exchange;
        self.routing_key = routing_key;
        self
    }

    pub(crate) fn set_app_id_if_missing(&mut self, app_id: &str) {
        if self.properties.app_id.is_none() {
            self.properties.app_id = Some(app_id.to_owned());
        }
    }
}

/// A UUIDv7 for a message created `since_epoch` after the Unix epoch, its
/// random bits from the thread's generator: `Uuid::now_v7` reads the
/// operating system's (a `getrandom` system call per message).
fn new_message_id(since_epoch: std::time::Duration) -> String {
    use rand::Rng;
    let millis = u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX);
    let random: [u8; 10] = rand::rng().random();
    let id = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    id.hyphenated().encode_lower(&mut text).to_owned()
}

/// Validates a message against the publisher's payload limit.
pub(crate) fn check_size(message: &Message, max: usize) -> Result<()> {
    let size = message.payload.len();
    if size > max {
        return Err(Error::TooLarge {
            what: "payload",
            size,
            max,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn properties_round_trip_through_json_losslessly() {
        let mut nested = BTreeMap::new();
        nested.insert("count".to_owned(), HeaderValue::Int(3));
        let msg = Message::bytes("ex", "rk", vec![0, 159, 146, 150])
            .header("nested", HeaderValue::Table(nested))
            .header(
                "list",
                HeaderValue::Array(vec![HeaderValue::Bool(true), HeaderValue::Float(1.5)]),
            )
            .header("raw", HeaderValue::Bytes(vec![255, 0]))
            .partition_key("k1")
            .correlation_id("c");
        let json = serde_json::to_string(msg.properties()).expect("serialize");
        let back: MessageProperties = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(&back, msg.properties());
        assert_eq!(
            Message::from_parts("ex", "rk", msg.payload().to_vec(), back),
            msg
        );
    }

    #[test]
    fn every_message_gets_a_v7_id_and_a_traceparent() {
        let a = Message::bytes("ex", "rk", "x");
        let b = Message::bytes("ex", "rk", "x");
        assert_ne!(a.id(), b.id());
        let id = uuid::Uuid::parse_str(a.id()).expect("uuid");
        assert_eq!(id.get_version_num(), 7);
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        // The id's time is the message's creation time.
        let (secs, _) = id.get_timestamp().expect("v7 time").to_unix();
        assert!(secs.abs_diff(a.properties().timestamp) <= 1);
        let tp = a.properties().headers[TRACEPARENT_HEADER]
            .as_str()
            .expect("string");
        assert_eq!(tp.len(), 55);
        // version-trace id-parent id-flags, lowercase hex, ids not all zero.
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4, "{tp}");
        assert_eq!((parts[0], parts[3]), ("00", "01"));
        assert_eq!((parts[1].len(), parts[2].len()), (32, 16));
        for id in &parts[1..3] {
            assert!(
                id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
                "{tp}"
            );
            assert!(id.bytes().any(|b| b != b'0'), "{tp}");
        }
        assert_ne!(
            tp,
            b.properties().headers[TRACEPARENT_HEADER]
                .as_str()
                .expect("string")
        );
        assert!(a.properties().persistent);
    }
}
