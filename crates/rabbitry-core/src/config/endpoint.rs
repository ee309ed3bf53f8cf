//! One broker node's address, parsed from an AMQP URL, with the password
//! kept out of every printout.

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

    pub(super) fn parse_at(index: usize, raw: &str) -> Result<Self> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
