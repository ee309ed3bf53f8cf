//! Header values: typed, and lossless in both directions between AMQP field
//! tables and JSON (the outbox), so that a republished or stored message
//! keeps every header as it came.

use std::collections::BTreeMap;

use lapin::types::{AMQPValue, FieldTable};
use serde::{Deserialize, Serialize};

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

/// Removes the broker's dead-letter history (`x-death`,
/// `x-first-death-*`, `x-last-death-*`) from `headers`.
///
/// A message sent on with that history and dead-lettered again through a
/// queue it names is dropped by RabbitMQ 3.x as a dead-letter cycle, with
/// nothing logged: whatever rabbitry sends into a dead-lettering path
/// (retry queues, delay queues, the cascade) goes without it.
pub(crate) fn strip_death_history(headers: &mut Headers) {
    headers.retain(|k, _| {
        !(k == "x-death" || k.starts_with("x-first-death-") || k.starts_with("x-last-death-"))
    });
}

pub(crate) fn table_to_headers(table: &FieldTable) -> Headers {
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.to_string(), HeaderValue::from_amqp(v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dead_letter_history_is_stripped_and_nothing_else() {
        let mut h = Headers::new();
        for k in [
            "x-death",
            "x-first-death-queue",
            "x-first-death-reason",
            "x-last-death-exchange",
            "x-rabbitry-due-at",
            "x-deathly",
            "app",
        ] {
            h.insert(k.into(), HeaderValue::Int(1));
        }
        strip_death_history(&mut h);
        let left: Vec<_> = h.keys().map(String::as_str).collect();
        assert_eq!(left, ["app", "x-deathly", "x-rabbitry-due-at"]);
    }
}
