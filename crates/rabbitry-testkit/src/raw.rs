//! A raw AMQP 0-9-1 client that builds its frames by hand.
//!
//! lapin (and so rabbitry) cannot build some messages that other clients
//! send every day: header names or short-string properties that are not
//! UTF-8, a content header with no properties at all. [`RawClient`] can:
//! a test publishes exactly the bytes it wants (with publisher confirms, so
//! the broker has the message when `publish` returns) and reads a queue back
//! with `basic.get` without parsing anything into strings, so that it can
//! also read what lapin cannot.
//!
//! It speaks just enough of the protocol for that: PLAIN login, one
//! channel, confirm mode, `basic.publish` (mandatory, so a message no queue
//! takes is an error), `basic.get`, and a clean close. Every read and write
//! is bounded by a timeout. It is test support, not a client library.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use rabbitry_testkit::{RawClient, RawProperties, RawValue};
//!
//! let mut client = RawClient::connect_test_broker().await?;
//! let properties = RawProperties {
//!     message_id: Some(b"\xff\xfe".to_vec()),
//!     headers: Some(vec![(b"bad-\xc3".to_vec(), RawValue::I32(7))]),
//!     ..RawProperties::default()
//! };
//! client.publish("", "some-queue", &properties, b"body").await?;
//! let got = client.get("some-queue").await?;
//! client.close().await
//! # }
//! ```

use std::io::{self, ErrorKind};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;
/// Bytes a frame adds around its payload: type, channel, size, end.
const FRAME_OVERHEAD: usize = 8;

const CONNECTION: u16 = 10;
const CHANNEL: u16 = 20;
const BASIC: u16 = 60;
const CONFIRM: u16 = 85;

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

/// A message read with [`RawClient::get`].
#[derive(Clone, Debug)]
pub struct RawMessage {
    /// Whether the broker delivered it before.
    pub redelivered: bool,
    /// The exchange it was published to.
    pub exchange: Vec<u8>,
    /// Its routing key.
    pub routing_key: Vec<u8>,
    /// Its properties, decoded without any UTF-8 check.
    pub properties: RawProperties,
    /// The content header's property flags and list, as received.
    pub property_bytes: Vec<u8>,
    /// The body.
    pub body: Vec<u8>,
}

/// One connection with one confirm-mode channel. See the [module
/// docs](self).
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
    /// Connects to the test broker ([`services`](crate::services)).
    pub async fn connect_test_broker() -> io::Result<Self> {
        Self::connect(crate::services().amqp_url()).await
    }

    /// Connects to `amqp://user:password@host:port/vhost` (only PLAIN
    /// credentials, no TLS), opens channel 1 and puts it in confirm mode.
    pub async fn connect(amqp_url: &str) -> io::Result<Self> {
        let url = url::Url::parse(amqp_url).map_err(|e| invalid(format!("AMQP URL: {e}")))?;
        let host = url.host_str().unwrap_or("127.0.0.1").to_owned();
        let port = url.port().unwrap_or(5672);
        let decode = percent_decode;
        let user = match url.username() {
            "" => "guest".to_owned(),
            u => decode(u),
        };
        let password = url.password().map_or_else(|| "guest".to_owned(), decode);
        let vhost = match url.path().trim_start_matches('/') {
            "" => "/".to_owned(),
            v => decode(v),
        };
        let stream =
            bounded(DEFAULT_TIMEOUT, "connect", TcpStream::connect((host, port))).await??;
        let mut client = RawClient {
            stream,
            frame_max: 4096,
            timeout: DEFAULT_TIMEOUT,
            published: 0,
        };
        client.handshake(&user, &password, &vhost).await?;
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
        put_table(&mut start_ok, &Vec::new())?; // client properties
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
    /// confirm. The body goes in frames of at most `frame_max`. A nack, or
    /// a return because no queue took it, is an error.
    pub async fn publish(
        &mut self,
        exchange: &str,
        routing_key: &str,
        properties: &RawProperties,
        body: &[u8],
    ) -> io::Result<()> {
        let mut publish = method(BASIC, 40);
        publish.extend_from_slice(&0u16.to_be_bytes());
        put_short(&mut publish, exchange.as_bytes())?;
        put_short(&mut publish, routing_key.as_bytes())?;
        publish.push(0b01); // mandatory, not immediate
        self.send_method(1, &publish).await?;
        let mut header = Vec::new();
        header.extend_from_slice(&BASIC.to_be_bytes());
        header.extend_from_slice(&0u16.to_be_bytes()); // weight
        header.extend_from_slice(&(body.len() as u64).to_be_bytes());
        header.extend_from_slice(&properties.encode()?);
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

    /// Takes the next message from `queue` with `basic.get` (acked on
    /// delivery), or `None` if the queue is empty.
    pub async fn get(&mut self, queue: &str) -> io::Result<Option<RawMessage>> {
        let mut get = method(BASIC, 70);
        get.extend_from_slice(&0u16.to_be_bytes());
        put_short(&mut get, queue.as_bytes())?;
        get.push(1); // no-ack
        self.send_method(1, &get).await?;
        let (channel, payload) = self.read_method().await?;
        let mut r = Reader::new(&payload);
        match (channel, r.u16()?, r.u16()?) {
            (1, BASIC, 72) => Ok(None),
            (1, BASIC, 71) => {
                let _tag = r.u64()?;
                let redelivered = r.u8()? & 1 != 0;
                let exchange = r.short()?;
                let routing_key = r.short()?;
                let (property_bytes, body) = self.read_content().await?;
                Ok(Some(RawMessage {
                    redelivered,
                    exchange,
                    routing_key,
                    properties: RawProperties::decode(&property_bytes)?,
                    property_bytes,
                    body,
                }))
            }
            (c, class, id) => Err(invalid(format!(
                "unexpected method {class}.{id} on channel {c} after basic.get"
            ))),
        }
    }

    /// Closes the channel and the connection, waiting (bounded) for the
    /// broker's close-ok to each.
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
    async fn read_content(&mut self) -> io::Result<(Vec<u8>, Vec<u8>)> {
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
        let mut body = Vec::with_capacity(size);
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
    async fn read_method(&mut self) -> io::Result<(u16, Vec<u8>)> {
        let (kind, channel, payload) = self.read_frame().await?;
        if kind != FRAME_METHOD {
            return Err(invalid(format!("expected a method, got frame type {kind}")));
        }
        let mut r = Reader::new(&payload);
        let (class, id) = (r.u16()?, r.u16()?);
        if (class, id) == (CHANNEL, 40) || (class, id) == (CONNECTION, 50) {
            let code = r.u16()?;
            let text = String::from_utf8_lossy(&r.short()?).into_owned();
            return Err(io::Error::new(
                ErrorKind::ConnectionAborted,
                format!(
                    "the broker closed the {}: {code} {text}",
                    if class == CHANNEL {
                        "channel"
                    } else {
                        "connection"
                    }
                ),
            ));
        }
        Ok((channel, payload))
    }

    async fn expect_method(&mut self, channel: u16, class: u16, id: u16) -> io::Result<Vec<u8>> {
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

    async fn send_method(&mut self, channel: u16, payload: &[u8]) -> io::Result<()> {
        self.write(&frame(FRAME_METHOD, channel, payload)).await
    }

    async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        bounded(self.timeout, "write", self.stream.write_all(bytes)).await?
    }
}

async fn bounded<T>(
    limit: Duration,
    what: &str,
    f: impl std::future::Future<Output = T>,
) -> io::Result<T> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| io::Error::new(ErrorKind::TimedOut, format!("{what} took over {limit:?}")))
}

/// `%2f` → `/`: user, password and vhost in an AMQP URL are percent-encoded.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, what.into())
}

/// A whole frame: type, channel, size, payload, end marker.
fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + FRAME_OVERHEAD);
    out.push(kind);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.push(FRAME_END);
    out
}

/// The start of a method payload: class and method ids.
fn method(class: u16, id: u16) -> Vec<u8> {
    let mut out = class.to_be_bytes().to_vec();
    out.extend_from_slice(&id.to_be_bytes());
    out
}

fn put_short(out: &mut Vec<u8>, s: &[u8]) -> io::Result<()> {
    let len = u8::try_from(s.len()).map_err(|_| invalid("short string over 255 bytes"))?;
    out.push(len);
    out.extend_from_slice(s);
    Ok(())
}

fn put_long(out: &mut Vec<u8>, s: &[u8]) -> io::Result<()> {
    let len = u32::try_from(s.len()).map_err(|_| invalid("long string over 4 GiB"))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s);
    Ok(())
}

fn put_table(out: &mut Vec<u8>, table: &RawTable) -> io::Result<()> {
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

/// A cursor over received bytes; running out is `InvalidData`.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.bytes.len() < n {
            return Err(invalid("truncated frame"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }
    fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> io::Result<u16> {
        self.array().map(u16::from_be_bytes)
    }
    fn u32(&mut self) -> io::Result<u32> {
        self.array().map(u32::from_be_bytes)
    }
    fn u64(&mut self) -> io::Result<u64> {
        self.array().map(u64::from_be_bytes)
    }
    fn short(&mut self) -> io::Result<Vec<u8>> {
        let n = self.u8()?;
        Ok(self.take(usize::from(n))?.to_vec())
    }
    fn long(&mut self) -> io::Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn table(&mut self) -> io::Result<RawTable> {
        let mut r = Reader::new(self.long()?);
        let mut table = Vec::new();
        while !r.bytes.is_empty() {
            let name = r.short()?;
            let value = r.value()?;
            table.push((name, value));
        }
        Ok(table)
    }
    fn value(&mut self) -> io::Result<RawValue> {
        Ok(match self.u8()? {
            b't' => RawValue::Bool(self.u8()? != 0),
            b'b' => RawValue::I8(self.array().map(i8::from_be_bytes)?),
            b'B' => RawValue::U8(self.u8()?),
            b's' => RawValue::I16(self.array().map(i16::from_be_bytes)?),
            b'u' => RawValue::U16(self.u16()?),
            b'I' => RawValue::I32(self.array().map(i32::from_be_bytes)?),
            b'i' => RawValue::U32(self.u32()?),
            b'l' => RawValue::I64(self.array().map(i64::from_be_bytes)?),
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn url_parts_are_percent_decoded() {
        assert_eq!(percent_decode("%2f"), "/");
        assert_eq!(percent_decode("a%40b%"), "a@b%");
    }

    #[test]
    fn a_frame_is_framed() {
        assert_eq!(
            frame(FRAME_BODY, 1, b"ab"),
            vec![3, 0, 1, 0, 0, 0, 2, b'a', b'b', 0xCE]
        );
    }
}
