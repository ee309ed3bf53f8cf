//! Connection settings: endpoints, names, timeouts, pool sizes.

use std::fmt;
use std::time::Duration;

use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};

use crate::error::{Error, Result};

/// One broker node to connect to, parsed from an `amqp://` or `amqps://` URL.
///
/// `Debug` and `Display` show the URL with the password replaced by `***`.
#[derive(Clone)]
pub struct Endpoint {
    uri: AMQPUri,
}

impl Endpoint {
    /// Parses an AMQP URL: `amqp[s]://user:password@host:port/vhost`.
    ///
    /// The vhost is percent-encoded (`%2f` is `/`, the default).
    pub fn parse(url: &str) -> Result<Self> {
        Self::parse_at(0, url)
    }

    fn parse_at(index: usize, raw: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidUrl { index, reason };
        // Parse with `url` ourselves instead of `AMQPUri::from_str`: the latter
        // echoes the whole URL, password included, in its errors.
        let url = url::Url::parse(raw.trim()).map_err(|e| invalid(e.to_string()))?;
        let scheme = match url.scheme() {
            "amqp" => AMQPScheme::AMQP,
            "amqps" => AMQPScheme::AMQPS,
            other => {
                return Err(invalid(format!(
                    "scheme '{other}' is not supported; use amqp:// or amqps://"
                )));
            }
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| invalid("the URL has no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let decode = |s: &str| {
            percent_decode(s)
                .map_err(|_| invalid("user name, password or vhost is not valid UTF-8".into()))
        };
        let username = match url.username() {
            "" => "guest".to_owned(),
            u => decode(u)?,
        };
        let password = match url.password() {
            None => "guest".to_owned(),
            Some(p) => decode(p)?,
        };
        let vhost = match url.path() {
            "" | "/" => "/".to_owned(),
            p => decode(&p[1..])?,
        };
        let mut query = AMQPQueryString::default();
        for (key, value) in url.query_pairs() {
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|_| invalid(format!("query parameter '{key}' must be a number")))
            };
            match key.as_ref() {
                "heartbeat" => query.heartbeat = Some(clamp(number()?)),
                "connection_timeout" => query.connection_timeout = Some(number()?),
                "frame_max" => query.frame_max = Some(clamp(number()?)),
                "channel_max" => query.channel_max = Some(clamp(number()?)),
                other => {
                    return Err(invalid(format!("unknown query parameter '{other}'")));
                }
            }
        }
        let port = url.port().unwrap_or_else(|| scheme.default_port());
        Ok(Self {
            uri: AMQPUri {
                scheme,
                authority: AMQPAuthority {
                    userinfo: AMQPUserInfo { username, password },
                    host,
                    port,
                },
                vhost,
                query,
            },
        })
    }

    /// The host name or address.
    pub fn host(&self) -> &str {
        &self.uri.authority.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.uri.authority.port
    }

    /// The user name.
    pub fn username(&self) -> &str {
        &self.uri.authority.userinfo.username
    }

    /// The virtual host.
    pub fn vhost(&self) -> &str {
        &self.uri.vhost
    }

    /// Whether this endpoint uses TLS (`amqps://`).
    pub fn is_tls(&self) -> bool {
        self.uri.scheme == AMQPScheme::AMQPS
    }

    /// The same endpoint with another password (used by tests and by
    /// credential rotation).
    #[must_use]
    pub fn with_password(mut self, password: impl Into<String>) -> Self {
        self.uri.authority.userinfo.password = password.into();
        self
    }

    /// The same endpoint on another host and port (used to route through a proxy).
    #[must_use]
    pub fn with_address(mut self, host: impl Into<String>, port: u16) -> Self {
        self.uri.authority.host = host.into();
        self.uri.authority.port = port;
        self
    }

    pub(crate) fn uri_with(&self, heartbeat: Duration, connect_timeout: Duration) -> AMQPUri {
        let mut uri = self.uri.clone();
        uri.query
            .heartbeat
            .get_or_insert(clamp(heartbeat.as_secs()));
        uri.query
            .connection_timeout
            .get_or_insert(u64::try_from(connect_timeout.as_millis()).unwrap_or(u64::MAX));
        uri
    }
}

fn clamp<T: TryFrom<u64> + Bounded>(v: u64) -> T {
    T::try_from(v).unwrap_or(T::MAX)
}

trait Bounded {
    const MAX: Self;
}
impl Bounded for u16 {
    const MAX: Self = u16::MAX;
}
impl Bounded for u32 {
    const MAX: Self = u32::MAX;
}

fn percent_decode(s: &str) -> std::result::Result<String, std::string::FromUtf8Error> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out)
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.is_tls() { "amqps" } else { "amqp" };
        let host = if self.host().contains(':') {
            format!("[{}]", self.host())
        } else {
            self.host().to_owned()
        };
        let vhost = if self.vhost() == "/" {
            "%2f".to_owned()
        } else {
            self.vhost().to_owned()
        };
        write!(
            f,
            "{scheme}://{}:***@{host}:{}/{vhost}",
            self.username(),
            self.port()
        )
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoint({self})")
    }
}

/// Settings for [`Broker::connect`](crate::Broker::connect).
///
/// Build with [`BrokerConfig::builder`] or read from the environment with
/// [`BrokerConfig::from_env`].
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    pub(crate) endpoints: Vec<Endpoint>,
    pub(crate) connection_name: String,
    pub(crate) heartbeat: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) operation_timeout: Duration,
    pub(crate) reconnect_delay: Duration,
    pub(crate) publish_connections: usize,
    pub(crate) consume_connections: usize,
}

impl BrokerConfig {
    /// Starts a builder.
    pub fn builder() -> BrokerConfigBuilder {
        BrokerConfigBuilder::default()
    }

    /// Reads `RABBITRY_AMQP_URL`, else `AMQP_URL`. Either may hold several
    /// comma-separated URLs (one per cluster node). `RABBITRY_CONNECTION_NAME`
    /// sets the connection name.
    pub fn from_env() -> Result<Self> {
        let urls = std::env::var("RABBITRY_AMQP_URL")
            .or_else(|_| std::env::var("AMQP_URL"))
            .map_err(|_| {
                Error::Config("set RABBITRY_AMQP_URL or AMQP_URL (for example amqp://guest:guest@127.0.0.1:5672/%2f)".into())
            })?;
        let mut builder =
            Self::builder().endpoints(urls.split(',').filter(|s| !s.trim().is_empty()));
        if let Ok(name) = std::env::var("RABBITRY_CONNECTION_NAME") {
            builder = builder.connection_name(name);
        }
        builder.build()
    }

    /// The endpoints, in the order they are tried.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The connection name base shown in the management UI.
    pub fn connection_name(&self) -> &str {
        &self.connection_name
    }
}

/// Builder for [`BrokerConfig`]. A bad setting is reported once, by [`build`](Self::build).
///
/// `Debug` shows the URLs with their passwords replaced by `***`.
#[derive(Default)]
#[must_use]
pub struct BrokerConfigBuilder {
    urls: Vec<String>,
    endpoints: Vec<Endpoint>,
    connection_name: Option<String>,
    heartbeat: Option<Duration>,
    connect_timeout: Option<Duration>,
    operation_timeout: Option<Duration>,
    reconnect_delay: Option<Duration>,
    publish_connections: Option<usize>,
    consume_connections: Option<usize>,
}

impl fmt::Debug for BrokerConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The raw URLs hold passwords: show them parsed and redacted, or not
        // at all when they do not parse.
        let urls: Vec<String> = self
            .urls
            .iter()
            .enumerate()
            .map(|(i, url)| match Endpoint::parse_at(i, url) {
                Ok(e) => e.to_string(),
                Err(_) => format!("<invalid URL #{i}>"),
            })
            .collect();
        f.debug_struct("BrokerConfigBuilder")
            .field("urls", &urls)
            .field("endpoints", &self.endpoints)
            .field("connection_name", &self.connection_name)
            .field("heartbeat", &self.heartbeat)
            .field("connect_timeout", &self.connect_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .field("reconnect_delay", &self.reconnect_delay)
            .field("publish_connections", &self.publish_connections)
            .field("consume_connections", &self.consume_connections)
            .finish()
    }
}

impl BrokerConfigBuilder {
    /// Adds one endpoint URL. Endpoints are tried in order, then round-robin.
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.urls.push(url.into());
        self
    }

    /// Adds several endpoint URLs (the cluster's nodes).
    pub fn endpoints<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.urls.extend(urls.into_iter().map(Into::into));
        self
    }

    /// Adds an already parsed endpoint.
    pub fn parsed_endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoints.push(endpoint);
        self
    }

    /// The name shown in the management UI; `-publish` and `-consume` are
    /// appended per role. Default: the executable's name.
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = Some(name.into());
        self
    }

    /// The heartbeat interval asked of the broker. Default: 30 s. A URL's
    /// own `?heartbeat=` wins.
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = Some(interval);
        self
    }

    /// How long one connection attempt may take (TCP, TLS and AMQP
    /// handshake). Default: 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Bound on one broker round trip (declare, open a channel). Default: 30 s.
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = Some(timeout);
        self
    }

    /// How long after losing a connection the first new one is opened.
    /// Default: 1 s. Zero reconnects at once. A node that dies closes its
    /// sockets at once, before the cluster has elected new queue leaders;
    /// coming back within those few hundred milliseconds was seen to leave
    /// channels whose publishes to a quorum queue are all nacked.
    pub fn reconnect_delay(mut self, delay: Duration) -> Self {
        self.reconnect_delay = Some(delay);
        self
    }

    /// Connections used for publishing. Default: 1.
    pub fn publish_connections(mut self, n: usize) -> Self {
        self.publish_connections = Some(n);
        self
    }

    /// Connections used for consuming. Default: 1.
    pub fn consume_connections(mut self, n: usize) -> Self {
        self.consume_connections = Some(n);
        self
    }

    /// Validates the settings.
    pub fn build(self) -> Result<BrokerConfig> {
        let mut endpoints = self.endpoints;
        for (i, url) in self.urls.iter().enumerate() {
            endpoints.push(Endpoint::parse_at(i, url)?);
        }
        if endpoints.is_empty() {
            return Err(Error::Config(
                "at least one endpoint URL is required".into(),
            ));
        }
        let positive = |name: &str, d: Option<Duration>, default: Duration| match d {
            Some(d) if d.is_zero() => {
                Err(Error::Config(format!("{name} must be greater than zero")))
            }
            Some(d) => Ok(d),
            None => Ok(default),
        };
        let count = |name: &str, n: Option<usize>| match n {
            Some(0) => Err(Error::Config(format!("{name} must be at least 1"))),
            Some(n) => Ok(n),
            None => Ok(1),
        };
        let connection_name = self.connection_name.unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "rabbitry".into())
        });
        Ok(BrokerConfig {
            endpoints,
            connection_name,
            heartbeat: positive("heartbeat", self.heartbeat, Duration::from_secs(30))?,
            connect_timeout: positive(
                "connect_timeout",
                self.connect_timeout,
                Duration::from_secs(10),
            )?,
            operation_timeout: positive(
                "operation_timeout",
                self.operation_timeout,
                Duration::from_secs(30),
            )?,
            reconnect_delay: self.reconnect_delay.unwrap_or(Duration::from_secs(1)),
            publish_connections: count("publish_connections", self.publish_connections)?,
            consume_connections: count("consume_connections", self.consume_connections)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_never_shows_in_debug_or_display() {
        let e = Endpoint::parse("amqp://alice:s3cr%40t@rabbit-1:5673/orders").expect("valid");
        assert_eq!(e.to_string(), "amqp://alice:***@rabbit-1:5673/orders");
        assert!(!format!("{e:?}").contains("s3cr"));
        let cfg = BrokerConfig::builder()
            .parsed_endpoint(e)
            .build()
            .expect("valid");
        assert!(!format!("{cfg:?}").contains("s3cr"));
    }

    #[test]
    fn the_builder_debug_never_shows_a_password() {
        let builder = BrokerConfig::builder()
            .endpoint("amqp://alice:s3cr3t-pw@rabbit-1:5672/%2f")
            .endpoint("amqp://bob:0ther-pw@[bad")
            .parsed_endpoint(Endpoint::parse("amqp://carol:th1rd-pw@h/").expect("valid"));
        let text = format!("{builder:?}");
        for secret in ["s3cr3t-pw", "0ther-pw", "th1rd-pw"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert!(
            text.contains("amqp://alice:***@rabbit-1:5672/%2f"),
            "{text}"
        );
        assert!(text.contains("<invalid URL #1>"), "{text}");
    }

    /// lapin connects to `(host, port)`: an IPv6 host must reach it bare,
    /// and the URI must never go through a string (which drops the brackets
    /// and fails with "empty host").
    #[test]
    fn an_ipv6_host_reaches_the_connector_intact() {
        use std::net::ToSocketAddrs;
        let e = Endpoint::parse("amqp://u:p@[::1]:5672/%2f").expect("valid");
        let uri = e.uri_with(Duration::from_secs(30), Duration::from_secs(10));
        assert_eq!(uri.authority.host, "::1");
        let addrs: Vec<_> = (uri.authority.host.as_str(), uri.authority.port)
            .to_socket_addrs()
            .expect("resolves")
            .collect();
        assert_eq!(addrs, vec!["[::1]:5672".parse().expect("addr")]);
        assert_eq!(e.to_string(), "amqp://u:***@[::1]:5672/%2f");
    }

    #[test]
    fn ip_hosts_are_kept() {
        let e = Endpoint::parse("amqp://u:p@10.1.2.3:5672/%2f").expect("valid");
        assert_eq!(e.host(), "10.1.2.3");
        assert_eq!(e.vhost(), "/");
        let e = Endpoint::parse("amqps://u:p@[::1]/%2f").expect("valid");
        assert_eq!(e.host(), "::1");
        assert_eq!(e.port(), 5671);
        assert!(e.is_tls());
    }

    /// Pins why rabbitry parses URLs itself: `amq-protocol-uri` 10.6 (lapin's
    /// parser) echoes the whole URL, password included, in its errors.
    #[test]
    fn amq_protocol_uri_echoes_the_password_in_errors() {
        let err = "amqp:hunter2"
            .parse::<AMQPUri>()
            .expect_err("cannot be a base");
        assert!(err.contains("hunter2"), "{err}");
    }

    #[test]
    fn bad_urls_get_clear_errors_without_the_password() {
        let err = Endpoint::parse("http://u:hunter2@h/").expect_err("bad scheme");
        let text = err.to_string();
        assert!(text.contains("amqp://"), "{text}");
        assert!(!text.contains("hunter2"));
        let err = Endpoint::parse("not a url hunter2").expect_err("garbage");
        assert!(!err.to_string().contains("hunter2"));
        let err = Endpoint::parse("amqp://u:p@h/?heartbeat=abc").expect_err("bad query");
        assert!(err.to_string().contains("heartbeat"));
    }

    #[test]
    fn builder_rejects_empty_and_zero_settings() {
        assert!(matches!(
            BrokerConfig::builder().build(),
            Err(Error::Config(_))
        ));
        let err = BrokerConfig::builder()
            .endpoint("amqp://h")
            .connect_timeout(Duration::ZERO)
            .build()
            .expect_err("zero timeout");
        assert!(err.to_string().contains("connect_timeout"));
        let err = BrokerConfig::builder()
            .endpoint("amqp://h")
            .endpoint("amqp://[bad")
            .build()
            .expect_err("second url bad");
        assert!(err.to_string().contains("#1"), "{err}");
    }
}
