//! How a message goes on the wire, and AMQP's limits on it.
//!
//! lapin panics on a short string over 255 bytes (`&str` into `ShortString`),
//! and the broker closes the whole connection when a content header exceeds
//! the negotiated `frame_max` (501 FRAME_ERROR), failing every publish in
//! flight on it. Both are checked here, before anything is sent, so that one
//! bad message gets a clear error and harms nothing else.

use lapin::BasicProperties;
use lapin::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};

use crate::error::{Error, Result};
use crate::header::{HeaderValue, Headers};
use crate::message::Message;

/// The longest AMQP short string: exchange and queue names, routing keys,
/// message ids and other properties, header names.
pub const MAX_SHORT_STRING: usize = 255;

/// Bytes a content header frame spends outside its properties: frame header
/// (7), class id, weight and body size (12), property flags (2), frame end
/// (1).
const HEADER_FRAME_OVERHEAD: usize = 22;

/// A short string, or an error naming `what` (never its value, which may be
/// long or sensitive).
pub(crate) fn short(what: &str, value: &str) -> Result<ShortString> {
    if value.len() > MAX_SHORT_STRING {
        return Err(Error::InvalidMessage {
            reason: format!(
                "{what} is {} bytes; AMQP allows at most {MAX_SHORT_STRING}",
                value.len()
            ),
        });
    }
    Ok(ShortString::from(value))
}

/// Checks a name (queue, exchange, routing key, argument, consumer tag)
/// that rabbitry will send as a short string. The error shows the start of
/// the name only.
pub(crate) fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.len() > MAX_SHORT_STRING {
        let mut end = 40;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        return Err(format!(
            "{what} '{}…' is {} bytes; AMQP allows at most {MAX_SHORT_STRING}",
            &name[..end],
            name.len()
        ));
    }
    Ok(())
}

/// Headers as an AMQP field table; fails on a name (at any depth) over 255
/// bytes.
pub(crate) fn headers_to_table(headers: &Headers) -> Result<FieldTable> {
    let mut table = FieldTable::default();
    for (name, value) in headers {
        table.insert(short("a header name", name)?, to_amqp(value)?);
    }
    Ok(table)
}

fn to_amqp(value: &HeaderValue) -> Result<AMQPValue> {
    Ok(match value {
        HeaderValue::Str(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        HeaderValue::Int(i) => AMQPValue::LongLongInt(*i),
        HeaderValue::Float(f) => AMQPValue::Double(finite(*f)?),
        HeaderValue::Bool(b) => AMQPValue::Boolean(*b),
        HeaderValue::Bytes(b) => AMQPValue::ByteArray(ByteArray::from(b.clone())),
        HeaderValue::Timestamp(t) => AMQPValue::Timestamp(*t),
        HeaderValue::Array(a) => AMQPValue::FieldArray(FieldArray::from(
            a.iter().map(to_amqp).collect::<Result<Vec<_>>>()?,
        )),
        HeaderValue::Table(t) => AMQPValue::FieldTable(headers_to_table(t)?),
        HeaderValue::Void => AMQPValue::Void,
        HeaderValue::Int8(i) => AMQPValue::ShortShortInt(*i),
        HeaderValue::UInt8(i) => AMQPValue::ShortShortUInt(*i),
        HeaderValue::Int16(i) => AMQPValue::ShortInt(*i),
        HeaderValue::UInt16(i) => AMQPValue::ShortUInt(*i),
        HeaderValue::Int32(i) => AMQPValue::LongInt(*i),
        HeaderValue::UInt32(i) => AMQPValue::LongUInt(*i),
        HeaderValue::Float32(f) => AMQPValue::Float(finite(f64::from(*f)).map(|_| *f)?),
        HeaderValue::Decimal { scale, value } => AMQPValue::DecimalValue(DecimalValue {
            scale: *scale,
            value: *value,
        }),
    })
}

/// A float header value the broker takes: RabbitMQ (seen on 3.10.8)
/// closes the whole connection with 541 INTERNAL_ERROR on a NaN or an
/// infinity at any depth, failing every publish in flight on it.
fn finite(f: f64) -> Result<f64> {
    if f.is_finite() {
        Ok(f)
    } else {
        Err(Error::InvalidMessage {
            reason: format!("a header holds the float {f}; RabbitMQ refuses NaN and infinities"),
        })
    }
}

/// The AMQP properties of `message`, checked: every short string fits, the
/// expiration is a number of milliseconds.
pub(crate) fn amqp_properties(message: &Message) -> Result<BasicProperties> {
    let p = message.properties();
    let mut props = BasicProperties::default()
        .with_delivery_mode(if p.persistent { 2 } else { 1 })
        .with_headers(headers_to_table(&p.headers)?);
    // rabbitry gives every message it creates an id and a timestamp; a copy
    // of another client's message that had neither does not get invented
    // ones (an empty id, the epoch).
    if !p.message_id.is_empty() {
        props = props.with_message_id(short("the message id", &p.message_id)?);
    }
    if p.timestamp != 0 {
        props = props.with_timestamp(p.timestamp);
    }
    if let Some(v) = &p.content_type {
        props = props.with_content_type(short("the content type", v)?);
    }
    if let Some(v) = &p.content_encoding {
        props = props.with_content_encoding(short("the content encoding", v)?);
    }
    if let Some(v) = &p.correlation_id {
        props = props.with_correlation_id(short("the correlation id", v)?);
    }
    if let Some(v) = &p.reply_to {
        props = props.with_reply_to(short("reply-to", v)?);
    }
    if let Some(v) = &p.kind {
        props = props.with_type(short("the message type", v)?);
    }
    if let Some(v) = &p.app_id {
        props = props.with_app_id(short("the app id", v)?);
    }
    if let Some(v) = &p.expiration {
        // The broker closes the channel (406) on an expiration that is not
        // a non-negative integer, failing every publish in flight on it.
        // RabbitMQ takes at most 2^32 - 1 ms.
        let valid = v.bytes().all(|b| b.is_ascii_digit())
            && v.parse::<u64>().is_ok_and(|ms| ms <= u64::from(u32::MAX));
        if !valid {
            return Err(Error::InvalidMessage {
                reason: "the expiration must be a whole number of milliseconds".into(),
            });
        }
        props = props.with_expiration(ShortString::from(v.as_str()));
    }
    if let Some(v) = p.priority {
        props = props.with_priority(v);
    }
    Ok(props)
}

/// The destination of `message` as short strings.
pub(crate) fn destination(message: &Message) -> Result<(ShortString, ShortString)> {
    Ok((
        short("the exchange name", message.exchange_name())?,
        short("the routing key", message.routing_key())?,
    ))
}

/// The size of `message`'s content header frame on the wire, in bytes.
pub(crate) fn header_frame_size(message: &Message) -> usize {
    let p = message.properties();
    let short_len = |s: &str| 1 + s.len();
    let optional = [
        &p.content_type,
        &p.content_encoding,
        &p.correlation_id,
        &p.reply_to,
        &p.kind,
        &p.app_id,
        &p.expiration,
    ]
    .into_iter()
    .flatten()
    .map(|s| short_len(s))
    .sum::<usize>();
    HEADER_FRAME_OVERHEAD
        + if p.message_id.is_empty() { 0 } else { short_len(&p.message_id) }
        + if p.timestamp == 0 { 0 } else { 8 }
        + 1 // delivery mode
        + usize::from(p.priority.is_some())
        + optional
        + table_size(&p.headers)
}

fn table_size(headers: &Headers) -> usize {
    4 + headers
        .iter()
        .map(|(name, value)| 1 + name.len() + value_size(value))
        .sum::<usize>()
}

/// Encoded size of one field value, its type tag included.
fn value_size(value: &HeaderValue) -> usize {
    1 + match value {
        HeaderValue::Str(s) => 4 + s.len(),
        HeaderValue::Bytes(b) => 4 + b.len(),
        HeaderValue::Int(_) | HeaderValue::Float(_) | HeaderValue::Timestamp(_) => 8,
        HeaderValue::Bool(_) => 1,
        HeaderValue::Array(a) => 4 + a.iter().map(value_size).sum::<usize>(),
        HeaderValue::Table(t) => table_size(t),
        HeaderValue::Void => 0,
        HeaderValue::Int8(_) | HeaderValue::UInt8(_) => 1,
        HeaderValue::Int16(_) | HeaderValue::UInt16(_) => 2,
        HeaderValue::Int32(_) | HeaderValue::UInt32(_) | HeaderValue::Float32(_) => 4,
        HeaderValue::Decimal { .. } => 5,
    }
}

/// Fails with [`Error::TooLarge`] when `message`'s content header would not
/// fit in one frame of `frame_max` bytes (0: no limit).
pub(crate) fn check_header_frame(message: &Message, frame_max: u32) -> Result<()> {
    let size = header_frame_size(message);
    let max = usize::try_from(frame_max).unwrap_or(usize::MAX);
    if frame_max != 0 && size > max {
        return Err(Error::TooLarge {
            what: "headers and properties",
            size,
            max,
        });
    }
    Ok(())
}

impl Message {
    /// Checks the message against AMQP's limits without sending it: names,
    /// ids, other short-string properties and header names of at most 255
    /// bytes, an expiration in whole milliseconds. The publisher runs the
    /// same check and fails with [`Error::InvalidMessage`]; call this to
    /// find out sooner, for example before storing a message.
    pub fn validate(&self) -> Result<()> {
        destination(self)?;
        amqp_properties(self)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serializes properties the way lapin does and measures them, to pin
    /// `header_frame_size` to the real encoding.
    fn encoded_properties_len(message: &Message) -> usize {
        let props = amqp_properties(message).expect("valid");
        let (_, written) =
            cookie_factory::r#gen(lapin::protocol::basic::gen_properties(&props), Vec::new())
                .expect("serialize");
        usize::try_from(written).expect("small")
    }

    #[test]
    fn header_frame_size_matches_lapins_encoding() {
        let mut nested = Headers::new();
        nested.insert("n".into(), HeaderValue::Int(1));
        let message = Message::bytes("ex", "rk", "body")
            .correlation_id("corr")
            .content_type("application/json")
            .kind("order.created")
            .priority(3)
            .expiration(std::time::Duration::from_secs(5))
            .header("s", "value")
            .header("b", HeaderValue::Bytes(vec![1, 2, 3]))
            .header("t", HeaderValue::Table(nested))
            .header(
                "a",
                HeaderValue::Array(vec![HeaderValue::Bool(true), HeaderValue::Void]),
            )
            .header(
                "narrow",
                HeaderValue::Array(vec![
                    HeaderValue::Int8(-1),
                    HeaderValue::UInt8(1),
                    HeaderValue::Int16(-2),
                    HeaderValue::UInt16(2),
                    HeaderValue::Int32(-3),
                    HeaderValue::UInt32(3),
                    HeaderValue::Float32(1.5),
                    HeaderValue::Decimal {
                        scale: 2,
                        value: 12345,
                    },
                ]),
            );
        assert_eq!(
            header_frame_size(&message),
            HEADER_FRAME_OVERHEAD - 2 + encoded_properties_len(&message)
        );
    }

    #[test]
    fn every_short_string_is_checked_without_panicking() {
        let long = "x".repeat(300);
        let cases = [
            Message::bytes("ex", "rk", "").correlation_id(long.as_str()),
            Message::bytes("ex", "rk", "").message_id(long.as_str()),
            Message::bytes("ex", "rk", "").content_type(long.as_str()),
            Message::bytes("ex", "rk", "").reply_to(long.as_str()),
            Message::bytes("ex", "rk", "").kind(long.as_str()),
            Message::bytes("ex", "rk", "").header(long.as_str(), 1i64),
        ];
        for message in cases {
            let err = amqp_properties(&message).expect_err("too long");
            assert!(matches!(err, Error::InvalidMessage { .. }), "{err}");
            assert!(!err.to_string().contains(&long), "the value is not echoed");
        }
        let err = destination(&Message::bytes("ex", long.as_str(), "")).expect_err("too long");
        assert!(err.to_string().contains("routing key"), "{err}");
    }

    #[test]
    fn a_bad_expiration_is_refused_before_the_broker_sees_it() {
        let mut props = Message::bytes("ex", "rk", "").properties().clone();
        for bad in ["soon", "", "-1", "4294967296"] {
            props.expiration = Some(bad.into());
            let message = Message::from_parts("ex", "rk", Vec::new(), props.clone());
            assert!(
                matches!(amqp_properties(&message), Err(Error::InvalidMessage { .. })),
                "{bad:?}"
            );
        }
        props.expiration = Some("4294967295".into());
        let message = Message::from_parts("ex", "rk", Vec::new(), props);
        amqp_properties(&message).expect("the largest expiration is fine");
    }

    #[test]
    fn an_oversized_header_is_too_large_for_the_frame() {
        let message = Message::bytes("ex", "rk", "").header("big", "x".repeat(200_000));
        let err = check_header_frame(&message, 131_072).expect_err("too large");
        assert!(matches!(err, Error::TooLarge { .. }), "{err}");
        check_header_frame(&Message::bytes("ex", "rk", ""), 131_072).expect("fits");
    }

    // Header tables: every AMQP type survives a round trip.

    #[test]
    fn amqp_headers_round_trip() {
        let msg = Message::bytes("ex", "rk", "x")
            .header("n", 5i64)
            .header("s", "v");
        let table = headers_to_table(&msg.properties().headers).expect("valid");
        assert_eq!(
            crate::header::table_to_headers(&table),
            msg.properties().headers
        );
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
        let headers = crate::header::table_to_headers(&table);
        let json = serde_json::to_string(&headers).expect("serialize");
        let back: Headers = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, headers);
        assert_eq!(
            headers_to_table(&back).expect("valid"),
            table,
            "same names, values and AMQP types"
        );
        assert_eq!(headers["h5"].as_i64(), Some(-3));
    }
}
