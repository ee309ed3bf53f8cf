//! Broker settings read from environment variables, one per builder setter.
//!
//! The reading is a function of a lookup, so that it can be tested (and
//! fed from a file's map) without touching the process environment.
//! `docs/configuration.md` lists these with every other variable rabbitry
//! reads.

use std::env::VarError;
use std::time::Duration;

use super::endpoint::Endpoint;
use super::{BrokerConfig, BrokerConfigBuilder};
use crate::error::{Error, Result};

/// The endpoint list: comma-separated AMQP URLs, one per cluster node.
pub(super) const AMQP_URL: &str = "RABBITRY_AMQP_URL";
/// Read when [`AMQP_URL`] is unset: the name tests and tools share.
pub(super) const AMQP_URL_FALLBACK: &str = "AMQP_URL";
const CONNECTION_NAME: &str = "RABBITRY_CONNECTION_NAME";
const HEARTBEAT_SECS: &str = "RABBITRY_HEARTBEAT_SECS";
const CONNECT_TIMEOUT_MS: &str = "RABBITRY_CONNECT_TIMEOUT_MS";
const OPERATION_TIMEOUT_MS: &str = "RABBITRY_OPERATION_TIMEOUT_MS";
const RECONNECT_DELAY_MS: &str = "RABBITRY_RECONNECT_DELAY_MS";
const PUBLISH_CONNECTIONS: &str = "RABBITRY_PUBLISH_CONNECTIONS";
const CONSUME_CONNECTIONS: &str = "RABBITRY_CONSUME_CONNECTIONS";
const TLS_CA_FILE: &str = "RABBITRY_TLS_CA_FILE";

const SECONDS: &str = "a whole number of seconds, such as 30";
const MILLIS: &str = "a whole number of milliseconds, such as 5000";
const COUNT: &str = "a whole number, such as 2";

/// Applies a variable's (trimmed) value to the builder; `None` when the
/// value does not parse.
type Apply = fn(BrokerConfigBuilder, &str) -> Option<BrokerConfigBuilder>;

/// Every variable after the endpoint list: its name, the setter it feeds,
/// what its value must look like, and how it is applied.
pub(super) const SETTINGS: [(&str, &str, &str, Apply); 8] = [
    (CONNECTION_NAME, "connection_name", "text", |b, v| {
        Some(b.connection_name(v))
    }),
    (HEARTBEAT_SECS, "heartbeat", SECONDS, |b, v| {
        Some(b.heartbeat(Duration::from_secs(v.parse().ok()?)))
    }),
    (CONNECT_TIMEOUT_MS, "connect_timeout", MILLIS, |b, v| {
        Some(b.connect_timeout(Duration::from_millis(v.parse().ok()?)))
    }),
    (OPERATION_TIMEOUT_MS, "operation_timeout", MILLIS, |b, v| {
        Some(b.operation_timeout(Duration::from_millis(v.parse().ok()?)))
    }),
    (RECONNECT_DELAY_MS, "reconnect_delay", MILLIS, |b, v| {
        Some(b.reconnect_delay(Duration::from_millis(v.parse().ok()?)))
    }),
    (PUBLISH_CONNECTIONS, "publish_connections", COUNT, |b, v| {
        Some(b.publish_connections(v.parse().ok()?))
    }),
    (CONSUME_CONNECTIONS, "consume_connections", COUNT, |b, v| {
        Some(b.consume_connections(v.parse().ok()?))
    }),
    (TLS_CA_FILE, "tls_ca_file", "a path", |b, v| {
        Some(b.tls_ca_file(v))
    }),
];

impl BrokerConfig {
    /// Reads the settings from the process environment.
    ///
    /// | variable | setter | format | default |
    /// | --- | --- | --- | --- |
    /// | `RABBITRY_AMQP_URL`, else `AMQP_URL` | [`endpoints`](BrokerConfigBuilder::endpoints) | comma-separated `amqp://` or `amqps://` URLs | required |
    /// | `RABBITRY_CONNECTION_NAME` | [`connection_name`](BrokerConfigBuilder::connection_name) | text | the executable's name |
    /// | `RABBITRY_HEARTBEAT_SECS` | [`heartbeat`](BrokerConfigBuilder::heartbeat) | whole seconds, 1 to 65535 | 30 |
    /// | `RABBITRY_CONNECT_TIMEOUT_MS` | [`connect_timeout`](BrokerConfigBuilder::connect_timeout) | milliseconds, 1 to 3600000 | 10000 |
    /// | `RABBITRY_OPERATION_TIMEOUT_MS` | [`operation_timeout`](BrokerConfigBuilder::operation_timeout) | milliseconds, 1 to 86400000 | 30000 |
    /// | `RABBITRY_RECONNECT_DELAY_MS` | [`reconnect_delay`](BrokerConfigBuilder::reconnect_delay) | milliseconds, 0 to 3600000 | 1000 |
    /// | `RABBITRY_PUBLISH_CONNECTIONS` | [`publish_connections`](BrokerConfigBuilder::publish_connections) | a count, at least 1 | 1 |
    /// | `RABBITRY_CONSUME_CONNECTIONS` | [`consume_connections`](BrokerConfigBuilder::consume_connections) | a count, at least 1 | 1 |
    /// | `RABBITRY_TLS_CA_FILE` | [`tls_ca_file`](BrokerConfigBuilder::tls_ca_file) | path to a PEM file | the system's roots only |
    ///
    /// A variable that is unset, empty or only blanks counts as unset; the
    /// setter's default applies. A value that does not parse, is out of
    /// range or is not valid UTF-8 is an [`Error::Config`] that names the
    /// variable. A value that does not parse is never repeated (it may be a
    /// password pasted into the wrong variable), and neither is a URL: a bad
    /// one is named by its position in the list, from 0.
    ///
    /// `docs/configuration.md` in the repository lists these with every
    /// other variable rabbitry's binaries, examples and tests read.
    pub fn from_env() -> Result<Self> {
        let mut not_unicode = None;
        let config = Self::from_env_with(|name| match std::env::var(name) {
            Ok(value) => Some(value),
            Err(VarError::NotPresent) => None,
            Err(VarError::NotUnicode(_)) => {
                not_unicode.get_or_insert_with(|| name.to_owned());
                None
            }
        });
        match not_unicode {
            Some(name) => Err(Error::Config(format!("{name} is not valid UTF-8"))),
            None => config,
        }
    }

    /// Like [`from_env`](Self::from_env), with each variable read through
    /// `lookup` instead of the process environment: for tests, or for
    /// settings kept in a map of their own.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use std::time::Duration;
    ///
    /// let vars = HashMap::from([
    ///     ("RABBITRY_AMQP_URL", "amqp://app:secret@rabbit-1:5672/%2f,amqp://app:secret@rabbit-2:5672/%2f"),
    ///     ("RABBITRY_HEARTBEAT_SECS", "15"),
    /// ]);
    /// let config = rabbitry_core::BrokerConfig::from_env_with(|name| vars.get(name).map(|v| v.to_string()))?;
    /// assert_eq!(config.endpoints().len(), 2);
    ///
    /// let vars = HashMap::from([("RABBITRY_AMQP_URL", "amqp://h"), ("RABBITRY_CONNECT_TIMEOUT_MS", "10s")]);
    /// let err = rabbitry_core::BrokerConfig::from_env_with(|name| vars.get(name).map(|v| v.to_string()))
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("RABBITRY_CONNECT_TIMEOUT_MS"));
    /// # Ok::<(), rabbitry_core::Error>(())
    /// ```
    pub fn from_env_with<F>(mut lookup: F) -> Result<Self>
    where
        F: FnMut(&str) -> Option<String>,
    {
        let mut get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let (url_var, urls) = match get(AMQP_URL) {
            Some(urls) => (AMQP_URL, urls),
            None => match get(AMQP_URL_FALLBACK) {
                Some(urls) => (AMQP_URL_FALLBACK, urls),
                None => {
                    return Err(Error::Config(format!(
                        "set {AMQP_URL} or {AMQP_URL_FALLBACK} \
                         (for example amqp://guest:guest@127.0.0.1:5672/%2f)"
                    )));
                }
            },
        };
        let mut builder = BrokerConfig::builder();
        let mut any = false;
        for (i, url) in urls.split(',').filter(|s| !s.trim().is_empty()).enumerate() {
            // The parse error names the position, never the URL.
            let endpoint =
                Endpoint::parse_at(i, url).map_err(|e| Error::Config(format!("{url_var}: {e}")))?;
            builder = builder.parsed_endpoint(endpoint);
            any = true;
        }
        if !any {
            return Err(Error::Config(format!("{url_var} holds no URL")));
        }
        for (var, setter, expected, apply) in SETTINGS {
            if let Some(raw) = get(var) {
                builder = apply(builder.read_from(setter, var), raw.trim())
                    .ok_or_else(|| Error::Config(format!("{var} must be {expected}")))?;
            }
        }
        builder.build()
    }
}

impl BrokerConfigBuilder {
    /// Remembers that `setter`'s value came from the variable `var`, so that
    /// `build()` names the variable when it refuses the value.
    fn read_from(mut self, setter: &'static str, var: &'static str) -> Self {
        self.sources.push((setter, var));
        self
    }
}
