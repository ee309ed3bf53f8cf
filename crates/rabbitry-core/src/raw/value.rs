//! Header-table values with RabbitMQ's type tags, names and strings kept
//! as bytes.

use std::io;

use super::wire::{Reader, invalid, put_long, put_short};

/// A field value as it travels in a header table, with RabbitMQ's type tags
/// (which differ from the AMQP 0-9-1 spec's for short ints; see RabbitMQ's
/// "AMQP 0-9-1 errata").
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum RawValue {
    /// `t`
    Bool(bool),
    /// `b`
    I8(i8),
    /// `B`
    U8(u8),
    /// `s` (RabbitMQ: a signed 16-bit int)
    I16(i16),
    /// `u`
    U16(u16),
    /// `I`
    I32(i32),
    /// `i`
    U32(u32),
    /// `l`
    I64(i64),
    /// `f`
    F32(f32),
    /// `d`
    F64(f64),
    /// `D`: `value / 10^scale`.
    Decimal {
        /// Decimal places.
        scale: u8,
        /// The unscaled value.
        value: u32,
    },
    /// `S`: any bytes, UTF-8 or not.
    LongString(Vec<u8>),
    /// `A`
    Array(Vec<RawValue>),
    /// `T`: seconds since the epoch.
    Timestamp(u64),
    /// `F`: names are bytes, UTF-8 or not.
    Table(RawTable),
    /// `V`
    Void,
    /// `x`
    Bytes(Vec<u8>),
}

/// A header table: entries in wire order, names as raw bytes.
pub type RawTable = Vec<(Vec<u8>, RawValue)>;

/// Finds `name` in a table.
pub fn raw_header<'t>(table: &'t RawTable, name: &[u8]) -> Option<&'t RawValue> {
    table.iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

pub(super) fn put_table(out: &mut Vec<u8>, table: &RawTable) -> io::Result<()> {
    let mut entries = Vec::new();
    for (name, value) in table {
        put_short(&mut entries, name)?;
        put_value(&mut entries, value)?;
    }
    put_long(out, &entries)
}

fn put_value(out: &mut Vec<u8>, value: &RawValue) -> io::Result<()> {
    match value {
        RawValue::Bool(v) => out.extend_from_slice(&[b't', u8::from(*v)]),
        RawValue::I8(v) => out.extend_from_slice(&[b'b', v.to_be_bytes()[0]]),
        RawValue::U8(v) => out.extend_from_slice(&[b'B', *v]),
        RawValue::I16(v) => {
            out.push(b's');
            out.extend_from_slice(&v.to_be_bytes());
        }
        RawValue::U16(v) => {
            out.push(b'u');
            out.extend_from_slice(&v.to_be_bytes());
        }
        RawValue::I32(v) => {
            out.push(b'I');
            out.extend_from_slice(&v.to_be_bytes());
        }
        RawValue::U32(v) => {
            out.push(b'i');
            out.extend_from_slice(&v.to_be_bytes());
        }
        RawValue::I64(v) => {
            out.push(b'l');
            out.extend_from_slice(&v.to_be_bytes());
        }
        RawValue::F32(v) => {
            out.push(b'f');
            out.extend_from_slice(&v.to_be_bytes());
        }
        RawValue::F64(v) => {
            out.push(b'd');
            out.extend_from_slice(&v.to_be_bytes());
        }
        RawValue::Decimal { scale, value } => {
            out.extend_from_slice(&[b'D', *scale]);
            out.extend_from_slice(&value.to_be_bytes());
        }
        RawValue::LongString(s) => {
            out.push(b'S');
            put_long(out, s)?;
        }
        RawValue::Array(items) => {
            out.push(b'A');
            let mut inner = Vec::new();
            for item in items {
                put_value(&mut inner, item)?;
            }
            put_long(out, &inner)?;
        }
        RawValue::Timestamp(v) => {
            out.push(b'T');
            out.extend_from_slice(&v.to_be_bytes());
        }
        RawValue::Table(t) => {
            out.push(b'F');
            put_table(out, t)?;
        }
        RawValue::Void => out.push(b'V'),
        RawValue::Bytes(b) => {
            out.push(b'x');
            put_long(out, b)?;
        }
    }
    Ok(())
}

impl Reader<'_> {
    pub(super) fn table(&mut self) -> io::Result<RawTable> {
        let mut r = Reader::new(self.long()?);
        let mut table = Vec::new();
        while !r.bytes.is_empty() {
            let name = r.short()?;
            let value = r.value()?;
            table.push((name, value));
        }
        Ok(table)
    }
    pub(super) fn value(&mut self) -> io::Result<RawValue> {
        Ok(match self.u8()? {
            b't' => RawValue::Bool(self.u8()? != 0),
            b'b' => RawValue::I8(self.array().map(i8::from_be_bytes)?),
            b'B' => RawValue::U8(self.u8()?),
            // lapin also reads the spec's 'U' and 'L'; so does this.
            b's' | b'U' => RawValue::I16(self.array().map(i16::from_be_bytes)?),
            b'u' => RawValue::U16(self.u16()?),
            b'I' => RawValue::I32(self.array().map(i32::from_be_bytes)?),
            b'i' => RawValue::U32(self.u32()?),
            b'l' | b'L' => RawValue::I64(self.array().map(i64::from_be_bytes)?),
            b'f' => RawValue::F32(self.array().map(f32::from_be_bytes)?),
            b'd' => RawValue::F64(self.array().map(f64::from_be_bytes)?),
            b'D' => RawValue::Decimal {
                scale: self.u8()?,
                value: self.u32()?,
            },
            b'S' => RawValue::LongString(self.long()?.to_vec()),
            b'A' => {
                let mut r = Reader::new(self.long()?);
                let mut items = Vec::new();
                while !r.bytes.is_empty() {
                    items.push(r.value()?);
                }
                RawValue::Array(items)
            }
            b'T' => RawValue::Timestamp(self.u64()?),
            b'F' => RawValue::Table(self.table()?),
            b'V' => RawValue::Void,
            b'x' => RawValue::Bytes(self.long()?.to_vec()),
            tag => return Err(invalid(format!("unknown field type {:?}", char::from(tag)))),
        })
    }
}
