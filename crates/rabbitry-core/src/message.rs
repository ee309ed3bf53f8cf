//! Outgoing messages: payload, routing and properties, kept in a form that
//! can be stored in the outbox byte for byte and sent again unchanged.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use lapin::types::{AMQPValue, FieldTable};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};

/// Header carrying the partition key (read by the consistent-hash exchange
/// and by partitioned consumers).
pub const PARTITION_KEY_HEADER: &str = "x-partition-key";
/// W3C trace context header.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// A typed header value. Lossless in both directions between AMQP field
/// tables and JSON, so that headers survive a trip through the outbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", content = "v", rename_all = "lowercase")]
#[non_exhaustive]
pub enum HeaderValue {
    /// A string.
    Str(String),
    /// A signed integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// Raw bytes.
    Bytes(Vec<u8>),
    /// A timestamp, seconds since the epoch.
    Timestamp(u64),
    /// A list.
    Array(Vec<HeaderValue>),
    /// A nested table (as in `x-death`).
    Table(BTreeMap<String, HeaderValue>),
    /// No value.
    Void,
    /// An 8-bit signed integer, as another client may send it. The narrow
    /// integer, `Float32` and `Decimal` variants keep a header's AMQP type
    /// through a republish (retry, dead-letter, replay) and the outbox;
    /// [`as_i64`](Self::as_i64) reads every integer width.
    Int8(i8),
    /// An 8-bit unsigned integer.
    UInt8(u8),
    /// A 16-bit signed integer.
    Int16(i16),
    /// A 16-bit unsigned integer.
    UInt16(u16),
    /// A 32-bit signed integer.
    Int32(i32),
    /// A 32-bit unsigned integer.
    UInt32(u32),
    /// A 32-bit float.
    Float32(f32),
    /// An AMQP decimal: `value` × 10^-`scale`.
    Decimal {
        /// Digits after the decimal point.
        scale: u8,
        /// The unscaled value.
        value: u32,
    },
}

impl From<&str> for HeaderValue {
    fn from(s: &str) -> Self {
        HeaderValue::Str(s.to_owned())
    }
}
impl From<String> for HeaderValue {
    fn from(s: String) -> Self {
        HeaderValue::Str(s)
    }
}
impl From<i64> for HeaderValue {
    fn from(v: i64) -> Self {
        HeaderValue::Int(v)
    }
}
impl From<bool> for HeaderValue {
    fn from(v: bool) -> Self {
        HeaderValue::Bool(v)
    }
}

impl HeaderValue {
    /// The value as text, when it is a string (or bytes holding UTF-8).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            HeaderValue::Str(s) => Some(s),
            HeaderValue::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The value as an integer, when it is one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            HeaderValue::Int(i) => Some(*i),
            HeaderValue::Int8(i) => Some(i64::from(*i)),
            HeaderValue::UInt8(i) => Some(i64::from(*i)),
            HeaderValue::Int16(i) => Some(i64::from(*i)),
            HeaderValue::UInt16(i) => Some(i64::from(*i)),
            HeaderValue::Int32(i) => Some(i64::from(*i)),
            HeaderValue::UInt32(i) => Some(i64::from(*i)),
            HeaderValue::Timestamp(t) => i64::try_from(*t).ok(),
            _ => None,
        }
    }

    pub(crate) fn from_amqp(value: &AMQPValue) -> Self {
        match value {
            AMQPValue::Boolean(b) => HeaderValue::Bool(*b),
            AMQPValue::ShortShortInt(i) => HeaderValue::Int8(*i),
            AMQPValue::ShortShortUInt(i) => HeaderValue::UInt8(*i),
            AMQPValue::ShortInt(i) => HeaderValue::Int16(*i),
            AMQPValue::ShortUInt(i) => HeaderValue::UInt16(*i),
            AMQPValue::LongInt(i) => HeaderValue::Int32(*i),
            AMQPValue::LongUInt(i) => HeaderValue::UInt32(*i),
            AMQPValue::LongLongInt(i) => HeaderValue::Int(*i),
            AMQPValue::Float(f) => HeaderValue::Float32(*f),
            AMQPValue::Double(f) => HeaderValue::Float(*f),
            AMQPValue::DecimalValue(d) => HeaderValue::Decimal {
                scale: d.scale,
                value: d.value,
            },
            AMQPValue::ShortString(s) => HeaderValue::Str(s.to_string()),
            AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
                Ok(text) => HeaderValue::Str(text.to_owned()),
                Err(_) => HeaderValue::Bytes(s.as_bytes().to_vec()),
            },
            AMQPValue::ByteArray(b) => HeaderValue::Bytes(b.as_slice().to_vec()),
            AMQPValue::Timestamp(t) => HeaderValue::Timestamp(*t),
            AMQPValue::FieldArray(a) => {
                HeaderValue::Array(a.as_slice().iter().map(HeaderValue::from_amqp).collect())
            }
            AMQPValue::FieldTable(t) => HeaderValue::Table(table_to_headers(t)),
            AMQPValue::Void => HeaderValue::Void,
        }
    }
}

/// Message headers, by name.
pub type Headers = BTreeMap<String, HeaderValue>;

pub(crate) fn table_to_headers(table: &FieldTable) -> Headers {
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.to_string(), HeaderValue::from_amqp(v)))
        .collect()
}

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
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut headers = Headers::new();
        headers.insert(
            TRACEPARENT_HEADER.to_owned(),
            HeaderValue::Str(new_traceparent()),
        );
        Self {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            payload: Bytes::from(payload.into()),
            properties: MessageProperties {
                message_id: Uuid::now_v7().to_string(),
                timestamp: now,
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

    /// Checks the message against AMQP's limits without sending it: names,
    /// ids, other short-string properties and header names of at most 255
    /// bytes, an expiration in whole milliseconds. The publisher runs the
    /// same check and fails with [`Error::InvalidMessage`]; call this to
    /// find out sooner, for example before storing a message.
    pub fn validate(&self) -> Result<()> {
        crate::wire::destination(self)?;
        crate::wire::amqp_properties(self)?;
        Ok(())
    }

    pub(crate) fn set_app_id_if_missing(&mut self, app_id: &str) {
        if self.properties.app_id.is_none() {
            self.properties.app_id = Some(app_id.to_owned());
        }
    }
}

fn new_traceparent() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    // All-zero ids are invalid in W3C trace context.
    let trace: u128 = rng.random_range(1..=u128::MAX);
    let span: u64 = rng.random_range(1..=u64::MAX);
    format!("00-{trace:032x}-{span:016x}-01")
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
    fn amqp_headers_round_trip() {
        let msg = Message::bytes("ex", "rk", "x")
            .header("n", 5i64)
            .header("s", "v");
        let table = crate::wire::headers_to_table(&msg.properties().headers).expect("valid");
        assert_eq!(table_to_headers(&table), msg.properties().headers);
    }

    #[test]
    fn a_table_from_another_client_keeps_every_type_through_a_republish_and_the_outbox() {
        use lapin::types::{ByteArray, DecimalValue, FieldArray, LongString};
        let mut nested = FieldTable::default();
        nested.insert("count".into(), AMQPValue::LongInt(3));
        let values = [
            AMQPValue::Boolean(true),
            AMQPValue::ShortShortInt(-1),
            AMQPValue::ShortShortUInt(1),
            AMQPValue::ShortInt(-2),
            AMQPValue::ShortUInt(2),
            AMQPValue::LongInt(-3),
            AMQPValue::LongUInt(3),
            AMQPValue::LongLongInt(-4),
            AMQPValue::Float(1.5),
            AMQPValue::Double(2.5),
            AMQPValue::DecimalValue(DecimalValue {
                scale: 2,
                value: 12345,
            }),
            AMQPValue::LongString(LongString::from("text")),
            AMQPValue::ByteArray(ByteArray::from(vec![0u8, 255])),
            AMQPValue::Timestamp(1_700_000_000),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::ShortUInt(7)])),
            AMQPValue::FieldTable(nested),
            AMQPValue::Void,
        ];
        let mut table = FieldTable::default();
        for (i, v) in values.into_iter().enumerate() {
            table.insert(format!("h{i}").into(), v);
        }
        let headers = table_to_headers(&table);
        let json = serde_json::to_string(&headers).expect("serialize");
        let back: Headers = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, headers);
        assert_eq!(
            crate::wire::headers_to_table(&back).expect("valid"),
            table,
            "same names, values and AMQP types"
        );
        assert_eq!(headers["h5"].as_i64(), Some(-3));
    }

    #[test]
    fn every_message_gets_a_v7_id_and_a_traceparent() {
        let a = Message::bytes("ex", "rk", "x");
        let b = Message::bytes("ex", "rk", "x");
        assert_ne!(a.id(), b.id());
        assert_eq!(Uuid::parse_str(a.id()).expect("uuid").get_version_num(), 7);
        let tp = a.properties().headers[TRACEPARENT_HEADER]
            .as_str()
            .expect("string");
        assert_eq!(tp.len(), 55);
        assert!(a.properties().persistent);
    }
}
