//! Frames and the primitive types inside them: short and long strings, a
//! cursor over received bytes, and the bound on every read and write.

use std::io::{self, ErrorKind};
use std::time::Duration;

pub(super) const FRAME_METHOD: u8 = 1;
pub(super) const FRAME_HEADER: u8 = 2;
pub(super) const FRAME_BODY: u8 = 3;
pub(super) const FRAME_HEARTBEAT: u8 = 8;
pub(super) const FRAME_END: u8 = 0xCE;
/// Bytes a frame adds around its payload: type, channel, size, end.
pub(super) const FRAME_OVERHEAD: usize = 8;

pub(super) const CONNECTION: u16 = 10;
pub(super) const CHANNEL: u16 = 20;
pub(super) const BASIC: u16 = 60;
pub(super) const CONFIRM: u16 = 85;

pub(super) fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, what.into())
}

/// `f`, or a `TimedOut` error naming `what` once `limit` has passed.
pub(super) async fn bounded<T>(
    limit: Duration,
    what: &str,
    f: impl std::future::Future<Output = T>,
) -> io::Result<T> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| io::Error::new(ErrorKind::TimedOut, format!("{what} took over {limit:?}")))
}

/// A whole frame: type, channel, size, payload, end marker.
pub(super) fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + FRAME_OVERHEAD);
    out.push(kind);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.push(FRAME_END);
    out
}

/// The start of a method payload: class and method ids.
pub(super) fn method(class: u16, id: u16) -> Vec<u8> {
    let mut out = class.to_be_bytes().to_vec();
    out.extend_from_slice(&id.to_be_bytes());
    out
}

pub(super) fn put_short(out: &mut Vec<u8>, s: &[u8]) -> io::Result<()> {
    let len = u8::try_from(s.len()).map_err(|_| invalid("short string over 255 bytes"))?;
    out.push(len);
    out.extend_from_slice(s);
    Ok(())
}

pub(super) fn put_long(out: &mut Vec<u8>, s: &[u8]) -> io::Result<()> {
    let len = u32::try_from(s.len()).map_err(|_| invalid("long string over 4 GiB"))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s);
    Ok(())
}

/// A cursor over received bytes; running out is `InvalidData`.
pub(super) struct Reader<'a> {
    pub(super) bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }
    pub(super) fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.bytes.len() < n {
            return Err(invalid("truncated frame"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    pub(super) fn array<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    pub(super) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }
    pub(super) fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub(super) fn u16(&mut self) -> io::Result<u16> {
        self.array().map(u16::from_be_bytes)
    }
    pub(super) fn u32(&mut self) -> io::Result<u32> {
        self.array().map(u32::from_be_bytes)
    }
    pub(super) fn u64(&mut self) -> io::Result<u64> {
        self.array().map(u64::from_be_bytes)
    }
    pub(super) fn short(&mut self) -> io::Result<Vec<u8>> {
        let n = self.u8()?;
        Ok(self.take(usize::from(n))?.to_vec())
    }
    pub(super) fn long(&mut self) -> io::Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_framed() {
        assert_eq!(
            frame(FRAME_BODY, 1, b"ab"),
            vec![3, 0, 1, 0, 0, 0, 2, b'a', b'b', 0xCE]
        );
    }

    #[test]
    fn running_out_is_invalid_data_not_a_panic() {
        let mut r = Reader::new(&[0, 5, b'a']);
        assert_eq!(r.u8().expect("one byte"), 0);
        assert_eq!(
            r.short().expect_err("truncated").kind(),
            ErrorKind::InvalidData
        );
    }
}
