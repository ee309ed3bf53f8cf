//! One connection with one confirm-mode channel, spoken frame by frame.

use std::io::{self, ErrorKind};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::properties::RawProperties;
use super::wire::{
    BASIC, CHANNEL, CONFIRM, CONNECTION, FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT,
    FRAME_METHOD, FRAME_OVERHEAD, Reader, bounded, frame, invalid, method, put_long, put_short,
};
use crate::config::Endpoint;

/// One connection with one confirm-mode channel. See the [module
/// docs](super).
///
/// `Debug` shows neither credentials nor message bytes (it holds none).
#[derive(Debug)]
pub struct RawClient {
    stream: TcpStream,
    frame_max: usize,
    timeout: Duration,
    published: u64,
}

/// Bound on each read and write unless [`RawClient::timeout`] says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl RawClient {
    /// Connects to `amqp://user:password@host:port/vhost` (PLAIN
    /// credentials, no TLS), opens channel 1 and puts it in confirm mode.
    /// The URL is parsed as rabbitry's [`Endpoint`]; no error repeats it.
    pub async fn connect(amqp_url: &str) -> io::Result<Self> {
        let endpoint = Endpoint::parse(amqp_url).map_err(|e| invalid(e.to_string()))?;
        Self::connect_endpoint(&endpoint, DEFAULT_TIMEOUT).await
    }

    /// Connects to one of rabbitry's endpoints with its credentials and
    /// vhost; every read and write, the connect included, is bounded by
    /// `timeout`. A TLS endpoint (`amqps://`) is `Unsupported`.
    pub async fn connect_endpoint(endpoint: &Endpoint, timeout: Duration) -> io::Result<Self> {
        if endpoint.is_tls() {
            return Err(io::Error::new(
                ErrorKind::Unsupported,
                "the raw client does not speak TLS",
            ));
        }
        let uri = endpoint.uri_with(Duration::ZERO, timeout);
        let address = (uri.authority.host.as_str(), uri.authority.port);
        let stream = bounded(timeout, "connect", TcpStream::connect(address)).await??;
        let mut client = RawClient {
            stream,
            frame_max: 4096,
            timeout,
            published: 0,
        };
        let login = &uri.authority.userinfo;
        bounded(
            timeout,
            "the handshake",
            client.handshake(&login.username, &login.password, &uri.vhost),
        )
        .await??;
        Ok(client)
    }

    /// Bounds each later read and write by `limit` (default 10 s).
    pub fn timeout(&mut self, limit: Duration) -> &mut Self {
        self.timeout = limit;
        self
    }

    /// The frame size the broker and this client agreed on.
    pub fn frame_max(&self) -> usize {
        self.frame_max
    }

    async fn handshake(&mut self, user: &str, password: &str, vhost: &str) -> io::Result<()> {
        self.write(b"AMQP\0\0\x09\x01").await?;
        self.expect_method(0, CONNECTION, 10).await?; // start
        let mut start_ok = method(CONNECTION, 11);
        super::value::put_table(&mut start_ok, &Vec::new())?; // client properties
        put_short(&mut start_ok, b"PLAIN")?;
        put_long(&mut start_ok, format!("\0{user}\0{password}").as_bytes())?;
        put_short(&mut start_ok, b"en_US")?;
        self.send_method(0, &start_ok).await?;
        let tune = self.expect_method(0, CONNECTION, 30).await?;
        let mut r = Reader::new(&tune);
        let channel_max = r.u16()?;
        let frame_max = r.u32()?;
        // 0 means "no limit"; keep frames modest all the same.
        self.frame_max = if frame_max == 0 {
            131_072
        } else {
            frame_max as usize
        };
        let mut tune_ok = method(CONNECTION, 31);
        tune_ok.extend_from_slice(&channel_max.to_be_bytes());
        tune_ok.extend_from_slice(&(self.frame_max as u32).to_be_bytes());
        tune_ok.extend_from_slice(&0u16.to_be_bytes()); // no heartbeats
        self.send_method(0, &tune_ok).await?;
        let mut open = method(CONNECTION, 40);
        put_short(&mut open, vhost.as_bytes())?;
        put_short(&mut open, b"")?;
        open.push(0);
        self.send_method(0, &open).await?;
        self.expect_method(0, CONNECTION, 41).await?;
        let mut channel_open = method(CHANNEL, 10);
        put_short(&mut channel_open, b"")?;
        self.send_method(1, &channel_open).await?;
        self.expect_method(1, CHANNEL, 11).await?;
        let mut select = method(CONFIRM, 10);
        select.push(0); // wait for select-ok
        self.send_method(1, &select).await?;
        self.expect_method(1, CONFIRM, 11).await?;
        Ok(())
    }

    /// Publishes one message (mandatory) and waits for the broker's
    /// confirm. See [`publish_bytes`](Self::publish_bytes).
    pub async fn publish(
        &mut self,
        exchange: &str,
        routing_key: &str,
        properties: &RawProperties,
        body: &[u8],
    ) -> io::Result<()> {
        let (exchange, routing_key) = (exchange.as_bytes(), routing_key.as_bytes());
        self.publish_bytes(exchange, routing_key, properties, body)
            .await
    }

    /// Publishes one message (mandatory) to an exchange and routing key
    /// given as bytes, and waits for the broker's confirm. The body goes in
    /// frames of at most `frame_max`. A nack, or a return because no queue
    /// took it, is an error.
    pub async fn publish_bytes(
        &mut self,
        exchange: &[u8],
        routing_key: &[u8],
        properties: &RawProperties,
        body: &[u8],
    ) -> io::Result<()> {
        let properties = properties.encode()?;
        self.publish_encoded(exchange, routing_key, &properties, body)
            .await
    }

    /// [`publish_bytes`](Self::publish_bytes) with the property flags and
    /// list already encoded (as [`RawMessage::property_bytes`](super::RawMessage::property_bytes)
    /// holds them).
    pub async fn publish_encoded(
        &mut self,
        exchange: &[u8],
        routing_key: &[u8],
        properties: &[u8],
        body: &[u8],
    ) -> io::Result<()> {
        let mut publish = method(BASIC, 40);
        publish.extend_from_slice(&0u16.to_be_bytes());
        put_short(&mut publish, exchange)?;
        put_short(&mut publish, routing_key)?;
        publish.push(0b01); // mandatory, not immediate
        self.send_method(1, &publish).await?;
        let mut header = Vec::new();
        header.extend_from_slice(&BASIC.to_be_bytes());
        header.extend_from_slice(&0u16.to_be_bytes()); // weight
        header.extend_from_slice(&(body.len() as u64).to_be_bytes());
        header.extend_from_slice(properties);
        self.write(&frame(FRAME_HEADER, 1, &header)).await?;
        for chunk in body.chunks(self.frame_max - FRAME_OVERHEAD) {
            self.write(&frame(FRAME_BODY, 1, chunk)).await?;
        }
        self.published += 1;
        let tag = self.published;
        let mut returned = None;
        loop {
            let (channel, payload) = self.read_method().await?;
            let mut r = Reader::new(&payload);
            match (channel, r.u16()?, r.u16()?) {
                (1, BASIC, 50) => {
                    let code = r.u16()?;
                    let text = String::from_utf8_lossy(&r.short()?).into_owned();
                    self.read_content().await?;
                    returned = Some(format!("{code} {text}"));
                }
                (1, BASIC, 80) => {
                    let acked = r.u64()?;
                    let multiple = r.u8()? & 1 != 0;
                    if acked == tag || (multiple && acked >= tag) {
                        return match returned {
                            Some(why) => Err(io::Error::other(format!(
                                "returned: no queue took it ({why})"
                            ))),
                            None => Ok(()),
                        };
                    }
                }
                (1, BASIC, 120) => return Err(io::Error::other("the broker nacked the message")),
                (c, class, id) => {
                    return Err(invalid(format!(
                        "unexpected method {class}.{id} on channel {c} while waiting for a confirm"
                    )));
                }
            }
        }
    }

    /// Closes the channel and the connection, waiting (bounded) for the
    /// broker's close-ok to each. Messages still unacked go back to their
    /// queues.
    pub async fn close(mut self) -> io::Result<()> {
        let mut close = method(CHANNEL, 40);
        close.extend_from_slice(&200u16.to_be_bytes());
        put_short(&mut close, b"done")?;
        close.extend_from_slice(&[0, 0, 0, 0]);
        self.send_method(1, &close).await?;
        self.expect_method(1, CHANNEL, 41).await?;
        let mut close = method(CONNECTION, 50);
        close.extend_from_slice(&200u16.to_be_bytes());
        put_short(&mut close, b"done")?;
        close.extend_from_slice(&[0, 0, 0, 0]);
        self.send_method(0, &close).await?;
        self.expect_method(0, CONNECTION, 51).await?;
        Ok(())
    }

    /// Reads a content header and its body frames: the property bytes (flags
    /// and list) and the body.
    pub(super) async fn read_content(&mut self) -> io::Result<(Vec<u8>, Vec<u8>)> {
        let (kind, _, header) = self.read_frame().await?;
        if kind != FRAME_HEADER {
            return Err(invalid(format!(
                "expected a content header, got frame type {kind}"
            )));
        }
        let mut r = Reader::new(&header);
        let _class = r.u16()?;
        let _weight = r.u16()?;
        let size = usize::try_from(r.u64()?).map_err(|_| invalid("body size"))?;
        let properties = r.rest().to_vec();
        // The size comes from the wire: grow as frames arrive rather than
        // trusting it for one allocation.
        let mut body = Vec::with_capacity(size.min(1 << 20));
        while body.len() < size {
            let (kind, _, chunk) = self.read_frame().await?;
            if kind != FRAME_BODY {
                return Err(invalid(format!(
                    "expected a body frame, got frame type {kind}"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((properties, body))
    }

    /// Reads the next method frame: its channel and payload (class, method,
    /// arguments). A `channel.close` or `connection.close` from the broker
    /// is an error carrying its reply code and text.
    pub(super) async fn read_method(&mut self) -> io::Result<(u16, Vec<u8>)> {
        let (kind, channel, payload) = self.read_frame().await?;
        if kind != FRAME_METHOD {
            return Err(invalid(format!("expected a method, got frame type {kind}")));
        }
        let mut r = Reader::new(&payload);
        let (class, id) = (r.u16()?, r.u16()?);
        if (class, id) == (CHANNEL, 40) || (class, id) == (CONNECTION, 50) {
            let code = r.u16()?;
            let text = String::from_utf8_lossy(&r.short()?).into_owned();
            let what = if class == CHANNEL {
                "channel"
            } else {
                "connection"
            };
            return Err(io::Error::new(
                ErrorKind::ConnectionAborted,
                format!("the broker closed the {what}: {code} {text}"),
            ));
        }
        Ok((channel, payload))
    }

    pub(super) async fn expect_method(
        &mut self,
        channel: u16,
        class: u16,
        id: u16,
    ) -> io::Result<Vec<u8>> {
        let (got_channel, payload) = self.read_method().await?;
        let mut r = Reader::new(&payload);
        let got = (got_channel, r.u16()?, r.u16()?);
        if got != (channel, class, id) {
            return Err(invalid(format!(
                "expected {class}.{id} on channel {channel}, got {}.{} on channel {}",
                got.1, got.2, got.0
            )));
        }
        Ok(r.rest().to_vec())
    }

    /// Reads one frame (skipping heartbeats): type, channel, payload.
    async fn read_frame(&mut self) -> io::Result<(u8, u16, Vec<u8>)> {
        loop {
            let mut head = [0u8; 7];
            bounded(self.timeout, "read", self.stream.read_exact(&mut head)).await??;
            let kind = head[0];
            let channel = u16::from_be_bytes([head[1], head[2]]);
            let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
            if size > self.frame_max.max(131_072) {
                return Err(invalid(format!("a frame of {size} bytes, over frame_max")));
            }
            let mut payload = vec![0u8; size + 1];
            bounded(self.timeout, "read", self.stream.read_exact(&mut payload)).await??;
            if payload.pop() != Some(FRAME_END) {
                return Err(invalid("frame without its end marker"));
            }
            if kind != FRAME_HEARTBEAT {
                return Ok((kind, channel, payload));
            }
        }
    }

    pub(super) async fn send_method(&mut self, channel: u16, payload: &[u8]) -> io::Result<()> {
        self.write(&frame(FRAME_METHOD, channel, payload)).await
    }

    async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        bounded(self.timeout, "write", self.stream.write_all(bytes)).await?
    }
}
