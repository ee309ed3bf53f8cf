//! Whether lapin can parse a message: the check the consumer's rescue makes
//! on each message it takes, so that it moves aside only the ones that
//! would kill a lapin connection again.
//!
//! lapin (amq-protocol 10.6) reads every short string, and every field
//! name in a header table, as UTF-8 and fails the whole frame, and with it
//! the connection, when one is not. RabbitMQ and other clients do not
//! care. Long string values are bytes to lapin too, so they may hold
//! anything.

use super::basic::RawMessage;
use super::properties::RawProperties;
use super::value::{RawTable, RawValue};

/// Why lapin cannot parse `message`, or `None` when it can.
///
/// Checks the exchange and routing key of the delivery, every short-string
/// property, every header name (in nested tables and arrays too), and
/// finally runs lapin's own property parser over the bytes as received, so
/// that what this module does not know about is caught as well.
pub fn lapin_cannot_parse(message: &RawMessage) -> Option<&'static str> {
    if !utf8(&message.exchange) || !utf8(&message.routing_key) {
        return Some("its exchange or routing key is not UTF-8");
    }
    let Ok(properties) = RawProperties::decode(&message.property_bytes) else {
        return Some("its properties do not decode");
    };
    if let Some(why) = properties_unparseable(&properties) {
        return Some(why);
    }
    let lapin_reads = lapin::protocol::basic::parse_properties(&message.property_bytes[..])
        .is_ok_and(|(rest, _)| rest.is_empty());
    if !lapin_reads {
        return Some("lapin's parser refuses its properties");
    }
    None
}

/// The UTF-8 part of the check, on decoded properties.
pub(super) fn properties_unparseable(p: &RawProperties) -> Option<&'static str> {
    let shorts = [
        &p.content_type,
        &p.content_encoding,
        &p.correlation_id,
        &p.reply_to,
        &p.expiration,
        &p.message_id,
        &p.kind,
        &p.app_id,
    ];
    if shorts
        .iter()
        .any(|s| s.as_deref().is_some_and(|s| !utf8(s)))
    {
        return Some("a property (such as message_id) is not UTF-8");
    }
    if p.headers.as_ref().is_some_and(|t| !table_names_utf8(t)) {
        return Some("a header name is not UTF-8");
    }
    None
}

fn utf8(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok()
}

fn table_names_utf8(table: &RawTable) -> bool {
    table
        .iter()
        .all(|(name, value)| utf8(name) && value_names_utf8(value))
}

fn value_names_utf8(value: &RawValue) -> bool {
    match value {
        RawValue::Table(table) => table_names_utf8(table),
        RawValue::Array(items) => items.iter().all(value_names_utf8),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(properties: &RawProperties) -> RawMessage {
        RawMessage {
            delivery_tag: 1,
            redelivered: false,
            exchange: b"ex".to_vec(),
            routing_key: b"rk".to_vec(),
            properties: properties.clone(),
            property_bytes: properties.encode().expect("encodes"),
            body: Vec::new(),
        }
    }

    fn with_headers(headers: RawTable) -> RawProperties {
        RawProperties {
            headers: Some(headers),
            ..RawProperties::default()
        }
    }

    const BAD: &[u8] = b"bad-\xc3\x28";

    #[test]
    fn valid_messages_parse() {
        let nested = with_headers(vec![
            (
                b"a".to_vec(),
                RawValue::LongString(b"\xff any bytes".to_vec()),
            ),
            (
                b"t".to_vec(),
                RawValue::Table(vec![(b"n".to_vec(), RawValue::I16(-1))]),
            ),
            (b"x".to_vec(), RawValue::Array(vec![RawValue::Void])),
        ]);
        assert_eq!(lapin_cannot_parse(&message(&nested)), None);
        assert_eq!(
            lapin_cannot_parse(&message(&RawProperties::default())),
            None
        );
    }

    #[test]
    fn a_name_that_is_not_utf8_is_found_at_any_depth() {
        let top = with_headers(vec![(BAD.to_vec(), RawValue::I32(1))]);
        let in_table = with_headers(vec![(
            b"outer".to_vec(),
            RawValue::Table(vec![(BAD.to_vec(), RawValue::Void)]),
        )]);
        let in_array = with_headers(vec![(
            b"list".to_vec(),
            RawValue::Array(vec![
                RawValue::I32(1),
                RawValue::Array(vec![RawValue::Table(vec![(
                    BAD.to_vec(),
                    RawValue::Bool(true),
                )])]),
            ]),
        )]);
        for p in [top, in_table, in_array] {
            assert_eq!(
                properties_unparseable(&p),
                Some("a header name is not UTF-8"),
                "{p:?}"
            );
            assert!(lapin_cannot_parse(&message(&p)).is_some());
        }
    }

    #[test]
    fn a_short_string_property_that_is_not_utf8_is_found() {
        let p = RawProperties {
            message_id: Some(b"id-\xff".to_vec()),
            ..RawProperties::default()
        };
        assert!(properties_unparseable(&p).is_some());
        let p = RawProperties {
            app_id: Some(b"\x80".to_vec()),
            ..RawProperties::default()
        };
        assert!(lapin_cannot_parse(&message(&p)).is_some());
    }

    #[test]
    fn the_delivery_fields_and_undecodable_properties_count_too() {
        let mut m = message(&RawProperties::default());
        m.routing_key = b"\xfe".to_vec();
        assert!(lapin_cannot_parse(&m).is_some());
        let mut m = message(&RawProperties::default());
        // Headers flag set, then a table that claims more than there is.
        m.property_bytes = vec![0x20, 0, 0, 0, 0, 9, 1, b'a'];
        assert_eq!(lapin_cannot_parse(&m), Some("its properties do not decode"));
    }
}
