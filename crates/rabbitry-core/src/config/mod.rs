//! Connection settings: endpoints, names, timeouts, pool sizes.

mod endpoint;
mod env;
#[cfg(test)]
mod env_tests;
mod tls;

use std::fmt;
use std::time::Duration;

pub use self::endpoint::Endpoint;
pub(crate) use self::tls::TlsSettings;
use crate::error::{Error, Result};

/// Settings for [`Broker::connect`](crate::Broker::connect).
///
/// Build with [`BrokerConfig::builder`] or read from the environment with
/// [`BrokerConfig::from_env`] (its table maps each variable to its setter).
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
    pub(crate) tls: TlsSettings,
}

impl BrokerConfig {
    /// Starts a builder.
    pub fn builder() -> BrokerConfigBuilder {
        BrokerConfigBuilder::default()
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
    tls_ca: Option<TlsCa>,
    /// Setters whose value came from an environment variable, with the
    /// variable: `build()` names it when it refuses the value.
    sources: Vec<(&'static str, &'static str)>,
}

/// Where the extra CA comes from; read and checked by `build()`.
enum TlsCa {
    Pem(String),
    File(std::path::PathBuf),
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
            .field(
                "tls_ca",
                &self.tls_ca.as_ref().map(|ca| match ca {
                    TlsCa::Pem(_) => "<PEM>".to_owned(),
                    TlsCa::File(path) => path.display().to_string(),
                }),
            )
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

    /// The heartbeat interval asked of the broker, from 1 s to 65535 s.
    /// Default: 30 s. A URL's own `?heartbeat=` wins.
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = Some(interval);
        self
    }

    /// How long one connection attempt may take (TCP, TLS and AMQP
    /// handshake), at most an hour. Default: 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Bound on one broker round trip (declare, open a channel), at most a
    /// day. Default: 30 s.
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = Some(timeout);
        self
    }

    /// How long after losing a connection the first new one is opened.
    /// Default: 1 s. Zero reconnects at once; at most an hour. A node that dies closes its
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

    /// A certificate authority to trust for `amqps://` endpoints, in PEM
    /// (one or more `BEGIN CERTIFICATE` blocks), on top of the system's
    /// roots: for a broker whose certificate a private CA signed. The
    /// broker's certificate must name the host of the URL (a DNS name or an
    /// IP address in its subject alternative names). Default: the system's
    /// roots only. The last of this and [`tls_ca_file`](Self::tls_ca_file)
    /// wins.
    pub fn tls_ca_pem(mut self, pem: impl Into<String>) -> Self {
        self.tls_ca = Some(TlsCa::Pem(pem.into()));
        self
    }

    /// Like [`tls_ca_pem`](Self::tls_ca_pem), read from a PEM file by
    /// [`build`](Self::build).
    pub fn tls_ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.tls_ca = Some(TlsCa::File(path.into()));
        self
    }

    /// Validates the settings.
    pub fn build(self) -> Result<BrokerConfig> {
        let sources = self.sources;
        // "heartbeat", or "RABBITRY_HEARTBEAT_SECS (heartbeat)" for a value
        // read from the environment.
        let label = |setter: &str| match sources.iter().find(|(s, _)| *s == setter) {
            Some((_, var)) => format!("{var} ({setter})"),
            None => setter.to_owned(),
        };
        let mut endpoints = self.endpoints;
        for (i, url) in self.urls.iter().enumerate() {
            endpoints.push(Endpoint::parse_at(i, url)?);
        }
        if endpoints.is_empty() {
            return Err(Error::Config(
                "at least one endpoint URL is required".into(),
            ));
        }
        // Bounds that catch a unit mix-up (milliseconds given as seconds)
        // and values that would overflow the arithmetic built on them.
        let between = |name: &str, d: Option<Duration>, default: Duration, min, max| match d {
            None => Ok(default),
            Some(d) if d < min || d > max => Err(Error::Config(format!(
                "{} of {d:?} is out of range: it must be from {min:?} to {max:?}",
                label(name)
            ))),
            Some(d) => Ok(d),
        };
        const HOUR: Duration = Duration::from_secs(3600);
        const NONZERO: Duration = Duration::from_millis(1);
        let count = |name: &str, n: Option<usize>| match n {
            Some(0) => Err(Error::Config(format!("{} must be at least 1", label(name)))),
            Some(n) => Ok(n),
            None => Ok(1),
        };
        let connection_name = self.connection_name.unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "rabbitry".into())
        });
        let tls = match self.tls_ca {
            None => TlsSettings::default(),
            Some(TlsCa::Pem(pem)) => TlsSettings::with_ca_pem(pem)?,
            Some(TlsCa::File(path)) => {
                let pem = std::fs::read_to_string(&path).map_err(|e| {
                    let what = label("tls_ca_file");
                    Error::Config(format!("{what} {}: {e}", path.display()))
                })?;
                // Name the file (and the variable it came from) in what
                // the PEM check says.
                TlsSettings::with_ca_pem(pem).map_err(|e| match e {
                    Error::Config(why) => Error::Config(format!(
                        "{} {}: {why}",
                        label("tls_ca_file"),
                        path.display()
                    )),
                    other => other,
                })?
            }
        };
        Ok(BrokerConfig {
            tls,
            endpoints,
            connection_name,
            // AMQP negotiates whole seconds, up to 65535: under a second
            // would round to 0, which turns heartbeats off.
            heartbeat: between(
                "heartbeat",
                self.heartbeat,
                Duration::from_secs(30),
                Duration::from_secs(1),
                Duration::from_secs(u64::from(u16::MAX)),
            )?,
            connect_timeout: between(
                "connect_timeout",
                self.connect_timeout,
                Duration::from_secs(10),
                NONZERO,
                HOUR,
            )?,
            operation_timeout: between(
                "operation_timeout",
                self.operation_timeout,
                Duration::from_secs(30),
                NONZERO,
                24 * HOUR,
            )?,
            reconnect_delay: between(
                "reconnect_delay",
                self.reconnect_delay,
                Duration::from_secs(1),
                Duration::ZERO,
                HOUR,
            )?,
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
