//! The basic-class properties of a message, as bytes on the wire.

use std::io;

use super::value::{RawTable, put_table};
use super::wire::{Reader, invalid, put_short};

/// The basic-class properties of a message. `None` leaves a property out
/// (its flag bit clear); short strings are raw bytes (at most 255), so they
/// need not be UTF-8. `RawProperties::default()` is a message with no
/// properties at all: property flags 0.
///
/// `user_id` and `cluster_id` are left out on purpose: the broker checks
/// the first against the login and the second is deprecated.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RawProperties {
    /// content-type (shortstr)
    pub content_type: Option<Vec<u8>>,
    /// content-encoding (shortstr)
    pub content_encoding: Option<Vec<u8>>,
    /// headers (table)
    pub headers: Option<RawTable>,
    /// delivery-mode: 1 transient, 2 persistent
    pub delivery_mode: Option<u8>,
    /// priority
    pub priority: Option<u8>,
    /// correlation-id (shortstr)
    pub correlation_id: Option<Vec<u8>>,
    /// reply-to (shortstr)
    pub reply_to: Option<Vec<u8>>,
    /// expiration (shortstr, milliseconds as text)
    pub expiration: Option<Vec<u8>>,
    /// message-id (shortstr)
    pub message_id: Option<Vec<u8>>,
    /// timestamp (seconds since the epoch)
    pub timestamp: Option<u64>,
    /// type (shortstr)
    pub kind: Option<Vec<u8>>,
    /// app-id (shortstr)
    pub app_id: Option<Vec<u8>>,
}

// Property flag bits, highest first, in the order the values follow.
const P_CONTENT_TYPE: u16 = 1 << 15;
const P_CONTENT_ENCODING: u16 = 1 << 14;
const P_HEADERS: u16 = 1 << 13;
const P_DELIVERY_MODE: u16 = 1 << 12;
const P_PRIORITY: u16 = 1 << 11;
const P_CORRELATION_ID: u16 = 1 << 10;
const P_REPLY_TO: u16 = 1 << 9;
const P_EXPIRATION: u16 = 1 << 8;
const P_MESSAGE_ID: u16 = 1 << 7;
const P_TIMESTAMP: u16 = 1 << 6;
const P_TYPE: u16 = 1 << 5;
const P_USER_ID: u16 = 1 << 4;
const P_APP_ID: u16 = 1 << 3;
const P_CLUSTER_ID: u16 = 1 << 2;

impl RawProperties {
    /// The property flags and property list, as they follow the body size
    /// in a content header frame.
    pub fn encode(&self) -> io::Result<Vec<u8>> {
        let mut flags = 0u16;
        let mut list = Vec::new();
        let short = |bit: u16, v: &Option<Vec<u8>>, flags: &mut u16, list: &mut Vec<u8>| {
            if let Some(v) = v {
                *flags |= bit;
                put_short(list, v)?;
            }
            Ok::<(), io::Error>(())
        };
        short(P_CONTENT_TYPE, &self.content_type, &mut flags, &mut list)?;
        short(
            P_CONTENT_ENCODING,
            &self.content_encoding,
            &mut flags,
            &mut list,
        )?;
        if let Some(table) = &self.headers {
            flags |= P_HEADERS;
            put_table(&mut list, table)?;
        }
        if let Some(mode) = self.delivery_mode {
            flags |= P_DELIVERY_MODE;
            list.push(mode);
        }
        if let Some(priority) = self.priority {
            flags |= P_PRIORITY;
            list.push(priority);
        }
        short(
            P_CORRELATION_ID,
            &self.correlation_id,
            &mut flags,
            &mut list,
        )?;
        short(P_REPLY_TO, &self.reply_to, &mut flags, &mut list)?;
        short(P_EXPIRATION, &self.expiration, &mut flags, &mut list)?;
        short(P_MESSAGE_ID, &self.message_id, &mut flags, &mut list)?;
        if let Some(ts) = self.timestamp {
            flags |= P_TIMESTAMP;
            list.extend_from_slice(&ts.to_be_bytes());
        }
        short(P_TYPE, &self.kind, &mut flags, &mut list)?;
        short(P_APP_ID, &self.app_id, &mut flags, &mut list)?;
        let mut out = flags.to_be_bytes().to_vec();
        out.extend_from_slice(&list);
        Ok(out)
    }

    /// Reads property flags and a property list. `user-id` and
    /// `cluster-id` are skipped; continuation flags are refused.
    pub fn decode(bytes: &[u8]) -> io::Result<Self> {
        let mut r = Reader::new(bytes);
        let flags = r.u16()?;
        if flags & 1 != 0 {
            return Err(invalid("property flags continue: not supported"));
        }
        let mut p = RawProperties::default();
        let set = |bit: u16| flags & bit != 0;
        if set(P_CONTENT_TYPE) {
            p.content_type = Some(r.short()?);
        }
        if set(P_CONTENT_ENCODING) {
            p.content_encoding = Some(r.short()?);
        }
        if set(P_HEADERS) {
            p.headers = Some(r.table()?);
        }
        if set(P_DELIVERY_MODE) {
            p.delivery_mode = Some(r.u8()?);
        }
        if set(P_PRIORITY) {
            p.priority = Some(r.u8()?);
        }
        if set(P_CORRELATION_ID) {
            p.correlation_id = Some(r.short()?);
        }
        if set(P_REPLY_TO) {
            p.reply_to = Some(r.short()?);
        }
        if set(P_EXPIRATION) {
            p.expiration = Some(r.short()?);
        }
        if set(P_MESSAGE_ID) {
            p.message_id = Some(r.short()?);
        }
        if set(P_TIMESTAMP) {
            p.timestamp = Some(r.u64()?);
        }
        if set(P_TYPE) {
            p.kind = Some(r.short()?);
        }
        if set(P_USER_ID) {
            r.short()?;
        }
        if set(P_APP_ID) {
            p.app_id = Some(r.short()?);
        }
        if set(P_CLUSTER_ID) {
            r.short()?;
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use std::io::ErrorKind;

    use super::*;
    use crate::raw::RawValue;

    #[test]
    fn no_properties_is_two_zero_bytes() {
        assert_eq!(
            RawProperties::default().encode().expect("encodes"),
            vec![0, 0]
        );
    }

    #[test]
    fn a_message_id_is_any_bytes_in_a_short_string() {
        let p = RawProperties {
            message_id: Some(vec![0xff, 0xfe]),
            ..Default::default()
        };
        assert_eq!(
            p.encode().expect("encodes"),
            vec![0x00, 0x80, 2, 0xff, 0xfe]
        );
    }

    #[test]
    fn properties_follow_their_flags_in_order() {
        let p = RawProperties {
            content_type: Some(b"a".to_vec()),
            delivery_mode: Some(2),
            timestamp: Some(1),
            app_id: Some(b"z".to_vec()),
            ..Default::default()
        };
        let flags: u16 = P_CONTENT_TYPE | P_DELIVERY_MODE | P_TIMESTAMP | P_APP_ID;
        let mut want = flags.to_be_bytes().to_vec();
        want.extend_from_slice(&[1, b'a', 2, 0, 0, 0, 0, 0, 0, 0, 1, 1, b'z']);
        assert_eq!(p.encode().expect("encodes"), want);
    }

    #[test]
    fn a_header_name_need_not_be_utf8() {
        let p = RawProperties {
            headers: Some(vec![(vec![0xc3, 0x28], RawValue::I32(-2))]),
            ..Default::default()
        };
        let flags = P_HEADERS.to_be_bytes();
        let want = [
            flags[0], flags[1], 0, 0, 0, 8, // table size
            2, 0xc3, 0x28, b'I', 0xff, 0xff, 0xff, 0xfe,
        ];
        assert_eq!(p.encode().expect("encodes"), want);
    }

    #[test]
    fn every_value_type_round_trips() {
        let table = vec![
            (b"t".to_vec(), RawValue::Bool(true)),
            (b"b".to_vec(), RawValue::I8(-1)),
            (b"B".to_vec(), RawValue::U8(250)),
            (b"s".to_vec(), RawValue::I16(-300)),
            (b"u".to_vec(), RawValue::U16(60000)),
            (b"I".to_vec(), RawValue::I32(-70000)),
            (b"i".to_vec(), RawValue::U32(4_000_000_000)),
            (b"l".to_vec(), RawValue::I64(i64::MIN)),
            (b"f".to_vec(), RawValue::F32(0.5)),
            (b"d".to_vec(), RawValue::F64(-2.25)),
            (
                b"D".to_vec(),
                RawValue::Decimal {
                    scale: 2,
                    value: 12345,
                },
            ),
            (b"\xff".to_vec(), RawValue::LongString(vec![0xfe, 0])),
            (
                b"A".to_vec(),
                RawValue::Array(vec![RawValue::Void, RawValue::I32(1)]),
            ),
            (b"T".to_vec(), RawValue::Timestamp(1_700_000_000)),
            (
                b"F".to_vec(),
                RawValue::Table(vec![(b"\x80".to_vec(), RawValue::Bytes(vec![1, 2]))]),
            ),
        ];
        let p = RawProperties {
            content_type: Some(b"application/json".to_vec()),
            content_encoding: Some(b"gzip".to_vec()),
            headers: Some(table),
            delivery_mode: Some(2),
            priority: Some(9),
            correlation_id: Some(b"c".to_vec()),
            reply_to: Some(b"r".to_vec()),
            expiration: Some(b"1000".to_vec()),
            message_id: Some(b"\xc3\x28".to_vec()),
            timestamp: Some(42),
            kind: Some(b"k".to_vec()),
            app_id: Some(b"a".to_vec()),
        };
        assert_eq!(
            RawProperties::decode(&p.encode().expect("encodes")).expect("encodes"),
            p
        );
    }

    #[test]
    fn a_short_string_over_255_bytes_is_refused() {
        let p = RawProperties {
            message_id: Some(vec![b'x'; 256]),
            ..Default::default()
        };
        assert_eq!(
            p.encode().expect_err("refused").kind(),
            ErrorKind::InvalidData
        );
    }

    #[test]
    fn a_truncated_table_is_invalid_data_not_a_panic() {
        let mut bytes = P_HEADERS.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0, 0, 0, 9, 1, b'a', b'I', 0]);
        assert_eq!(
            RawProperties::decode(&bytes).expect_err("refused").kind(),
            ErrorKind::InvalidData
        );
    }
}
