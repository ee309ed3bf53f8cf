//! Opening one lapin connection: rabbitry's client properties and TLS
//! settings, lapin's own recovery off, and its failures sorted into
//! rabbitry's errors.

use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::{Connection, ConnectionProperties, ErrorKind};

use crate::config::BrokerConfig;
use crate::error::Error;

/// A connection of its own, outside the pools, to the first endpoint that
/// answers: for work whose failure must not take the shared connections
/// with it.
pub(crate) async fn connect_dedicated(
    config: &BrokerConfig,
    purpose: &str,
) -> Result<Connection, Error> {
    let timeout = config.connect_timeout;
    let name = format!("{}-{purpose}", config.connection_name);
    let mut last = None;
    for endpoint in &config.endpoints {
        let uri = endpoint.uri_with(config.heartbeat, timeout);
        match tokio::time::timeout(timeout, open(uri, &name, config)).await {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(err)) => last = Some(map_connect_error(endpoint, &err)),
            Err(_) => {
                last = Some(Error::ConnectTimeout {
                    endpoint: endpoint.to_string(),
                    timeout,
                });
            }
        }
    }
    Err(last.unwrap_or_else(|| Error::Config("no endpoint".into())))
}

/// Opens one lapin connection with rabbitry's properties and TLS settings.
pub(super) async fn open(
    uri: lapin::uri::AMQPUri,
    name: &str,
    config: &BrokerConfig,
) -> lapin::Result<Connection> {
    let runtime = lapin::runtime::default_runtime()?;
    Connection::connect_uri_with_config(uri, properties(name), config.tls.lapin_config(), runtime)
        .await
}

/// Auto-recovery stays off (rabbitry replaces failed connections itself),
/// and so does lapin's TCP retry: a refused endpoint fails at once, and no
/// lapin thread keeps retrying after a failed connect.
fn properties(name: &str) -> ConnectionProperties {
    ConnectionProperties::default()
        .with_connection_name(name.into())
        .with_client_property("product".into(), "rabbitry".into())
        .with_client_property("version".into(), env!("CARGO_PKG_VERSION").into())
        .configure_backoff(|b| b.with_max_times(0))
}

/// Sorts a lapin connect failure into rabbitry's distinct errors.
pub(super) fn map_connect_error(endpoint: &crate::config::Endpoint, err: &lapin::Error) -> Error {
    // rustls reports a refused certificate, and a peer that does not speak
    // TLS, as `InvalidData`: no retry fixes either.
    if let ErrorKind::IOError(io) = err.kind()
        && endpoint.is_tls()
        && io.kind() == std::io::ErrorKind::InvalidData
    {
        return Error::Tls {
            endpoint: endpoint.to_string(),
            reason: io.to_string(),
        };
    }
    let endpoint = &endpoint.to_string();
    if let ErrorKind::ProtocolError(amqp) = err.kind() {
        let text = amqp.get_message().to_string();
        return match amqp.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
                if text.contains("Login was refused") =>
            {
                Error::AuthenticationFailed {
                    endpoint: endpoint.to_owned(),
                }
            }
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
            | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => Error::AccessRefused {
                endpoint: endpoint.to_owned(),
                reason: text,
            },
            _ => Error::Unreachable {
                endpoints: endpoint.to_owned(),
                last_error: err.to_string(),
            },
        };
    }
    Error::Unreachable {
        endpoints: endpoint.to_owned(),
        last_error: err.to_string(),
    }
}
