//! The broker's version, as it announces it in `connection.start`.

use std::fmt;
use std::io::{Read, Write};
use std::time::Duration;

use lapin::protocol::{AMQPClass, connection::AMQPMethod};
use lapin::types::AMQPValue;
use lapin::uri::AMQPUri;

/// A RabbitMQ version, e.g. `4.0.5`. Compares in version order.
///
/// ```
/// use rabbitry_core::ServerVersion;
///
/// let v = ServerVersion::parse("3.10.8").unwrap();
/// assert!(v < ServerVersion::new(3, 12, 0));
/// assert!(ServerVersion::parse("4.1.0-rc.1").unwrap().at_least(4, 1));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerVersion {
    /// The major version.
    pub major: u32,
    /// The minor version.
    pub minor: u32,
    /// The patch version.
    pub patch: u32,
}

impl ServerVersion {
    /// A version from its parts.
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }

    /// Reads `major.minor[.patch]`, ignoring a pre-release or build suffix
    /// (`4.1.0-rc.1`, `3.13.7+2.g1234`). `None` when it is not a version.
    pub fn parse(text: &str) -> Option<Self> {
        let core = text.trim().split(['-', '+', ' ']).next()?;
        let mut parts = core.split('.');
        let mut number = |required: bool| match parts.next() {
            Some(p) => p.parse::<u32>().ok(),
            None if required => None,
            None => Some(0),
        };
        let version = Self::new(number(true)?, number(true)?, number(false)?);
        parts.next().is_none().then_some(version)
    }

    /// True from `major.minor` on.
    pub fn at_least(self, major: u32, minor: u32) -> bool {
        self >= Self::new(major, minor, 0)
    }
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Asks the broker at `uri` for its version: opens a socket (TLS included,
/// as lapin would), sends the protocol header, reads `connection.start` and
/// hangs up. lapin 4.12 reads the same frame but keeps no server
/// properties, so this is the only way short of the management API. The
/// broker logs the early hang-up as a handshake that did not finish.
///
/// Blocking: run it on a blocking thread. Every read and write is bounded
/// by `timeout`.
pub(crate) fn probe(
    uri: &AMQPUri,
    tls: &lapin::tcp::OwnedTLSConfig,
    timeout: Duration,
) -> std::io::Result<Option<ServerVersion>> {
    use lapin::tcp::AMQPUriTcpExt;

    use lapin::tcp::HandshakeError;

    let mut stream = match uri.connect_with_config(tls.as_ref()) {
        Ok(stream) => stream,
        // A TLS handshake that would block: finish it on a blocking socket.
        Err(HandshakeError::WouldBlock(mut mid)) => {
            blocking(mid.get_mut(), timeout)?;
            mid.handshake()
                .map_err(|e| std::io::Error::other(e.to_string()))?
        }
        Err(HandshakeError::Failure(e)) => return Err(e),
    };
    blocking(&stream, timeout)?;
    stream.write_all(b"AMQP\x00\x00\x09\x01")?;
    stream.flush()?;
    // frame: type (1), channel (2), size (4), payload, frame-end
    let mut header = [0u8; 7];
    stream.read_exact(&mut header)?;
    let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
    if header[0] != 1 || size > 1 << 20 {
        return Ok(None);
    }
    let mut payload = vec![0u8; size];
    stream.read_exact(&mut payload)?;
    Ok(version_from_start(&payload))
}

fn blocking(socket: &std::net::TcpStream, timeout: Duration) -> std::io::Result<()> {
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(timeout))?;
    socket.set_write_timeout(Some(timeout))
}

/// The `version` server property of a `connection.start` method frame's
/// payload.
fn version_from_start(payload: &[u8]) -> Option<ServerVersion> {
    let (_, class) = lapin::protocol::parse_class(payload).ok()?;
    let AMQPClass::Connection(AMQPMethod::Start(start)) = class else {
        return None;
    };
    match start.server_properties.inner().get("version")? {
        AMQPValue::LongString(s) => ServerVersion::parse(&String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::ShortString(s) => ServerVersion::parse(s.as_str()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_release_pre_release_and_build_versions() {
        assert_eq!(
            ServerVersion::parse("3.10.8"),
            Some(ServerVersion::new(3, 10, 8))
        );
        assert_eq!(
            ServerVersion::parse("4.0.5"),
            Some(ServerVersion::new(4, 0, 5))
        );
        assert_eq!(
            ServerVersion::parse("4.1.0-rc.1"),
            Some(ServerVersion::new(4, 1, 0))
        );
        assert_eq!(
            ServerVersion::parse("3.13.7+2.g1a2b3c"),
            Some(ServerVersion::new(3, 13, 7))
        );
        assert_eq!(
            ServerVersion::parse("4.2"),
            Some(ServerVersion::new(4, 2, 0))
        );
        for bad in ["", "4", "x.y.z", "4.0.5.1", "4..1", "-1.0.0"] {
            assert_eq!(ServerVersion::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn compares_in_version_order() {
        let v = |s| ServerVersion::parse(s).expect("version");
        assert!(v("3.10.8") < v("3.12.0"));
        assert!(v("3.9.29") < v("3.10.0"), "numeric, not text, order");
        assert!(v("4.0.5") > v("3.13.7"));
        assert!(v("3.12.0").at_least(3, 12));
        assert!(!v("3.11.28").at_least(3, 12));
        assert!(v("4.0.0").at_least(4, 0));
        assert_eq!(v("4.0.5").to_string(), "4.0.5");
    }

    #[test]
    fn reads_the_version_from_a_connection_start_frame() {
        use lapin::protocol::connection::Start;
        use lapin::types::{FieldTable, LongString};

        let mut props = FieldTable::default();
        props.insert("product".into(), AMQPValue::LongString("RabbitMQ".into()));
        props.insert("version".into(), AMQPValue::LongString("4.0.5".into()));
        let start = AMQPClass::Connection(AMQPMethod::Start(Start {
            version_major: 0,
            version_minor: 9,
            server_properties: props,
            mechanisms: LongString::from("PLAIN"),
            locales: LongString::from("en_US"),
        }));
        let (buf, _) = cookie_factory::r#gen(lapin::protocol::gen_class(&start), Vec::new())
            .expect("serialize");
        let written = buf.len();
        assert_eq!(
            version_from_start(&buf[..written]),
            Some(ServerVersion::new(4, 0, 5))
        );
        assert_eq!(version_from_start(&buf[..written / 2]), None);
    }
}
