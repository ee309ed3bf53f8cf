//! A password never shows: not in rabbitry's or lapin's logs (captured at
//! TRACE), not in errors (`Display` and `Debug`), not in the `Debug` of the
//! configuration, builder, endpoint or broker. Covered: a wrong password, an
//! unreachable port, a refused TLS certificate, URLs that do not parse, a
//! connection lost and reconnecting, and a publish that fails for want of a
//! broker; the password needs percent-encoding in a URL, so every encoded
//! form is looked for too.
//!
//! Its own test binary: it installs its own `tracing` subscriber.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rabbitry::{Broker, BrokerConfig, Endpoint, Message, Publisher, Role};
use rabbitry_testkit::{FaultProxy, TestCerts, TlsStub, rabbitmqctl, services, tls_skip, unique};

/// Characters a URL must escape (`:@/#?&=%+`, a space, non-ASCII), around
/// a marker that any partial leak would include.
const SECRET: &str = "Zq:s3cr3t@p/w#rd?&=%+ ü-Xy";
const MARKER: &str = "s3cr3t";

/// Every form the password could leak in.
fn forms() -> Vec<String> {
    let upper = encode(SECRET, false);
    vec![
        SECRET.to_owned(),
        MARKER.to_owned(),
        upper.clone(),
        encode(SECRET, true),
        upper.replace("%20", "+"),
        format!("{SECRET:?}"),
    ]
}

fn encode(s: &str, lower: bool) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ if lower => format!("%{b:02x}"),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn url_with_secret(user: &str, host: &str, port: u16) -> String {
    format!("amqp://{user}:{}@{host}:{port}/%2f", encode(SECRET, false))
}

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every log line of this process so far, at TRACE for rabbitry and lapin.
fn logs() -> String {
    static BUFFER: OnceLock<Buffer> = OnceLock::new();
    let buffer = BUFFER.get_or_init(|| {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "rabbitry=trace,rabbitry_core=trace,lapin=trace,amq_protocol=trace,info",
            ))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        buffer
    });
    String::from_utf8_lossy(&buffer.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
}

/// Fails, naming the form and the place, if any form of the password is in
/// `text`.
fn assert_clean(place: &str, text: &str) {
    for form in forms() {
        assert!(
            !text.contains(&form),
            "the password ({form:?}) leaked in {place}: {text}"
        );
    }
}

fn assert_error_clean(place: &str, err: &rabbitry::Error) {
    assert_clean(place, &format!("{err} / {err:?}"));
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        assert_clean(place, &format!("{s} / {s:?}"));
        source = s.source();
    }
}

fn config(url: &str) -> BrokerConfig {
    BrokerConfig::builder()
        .endpoint(url)
        .connection_name("rabbitry-credentials-test")
        .connect_timeout(Duration::from_secs(3))
        .reconnect_delay(Duration::from_millis(100))
        .build()
        .expect("a URL with an escaped password is valid")
}

#[tokio::test]
async fn a_wrong_password_leaks_nowhere() {
    logs();
    let addr = services().amqp_addr();
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let config = config(&url_with_secret("guest", host, port.parse().expect("port")));
    assert_clean("the config's Debug", &format!("{config:?}"));
    let err = Broker::connect(config).await.expect_err("wrong password");
    assert!(
        matches!(err, rabbitry::Error::AuthenticationFailed { .. }),
        "{err:?}"
    );
    assert_error_clean("the authentication error", &err);
    assert!(
        logs().contains("connection attempt failed"),
        "the failure was logged"
    );
    assert_clean("the logs", &logs());
}

#[tokio::test]
async fn an_unreachable_port_leaks_nowhere() {
    logs();
    let url = url_with_secret("guest", "127.0.0.1", common::closed_port());
    let err = Broker::connect(config(&url))
        .await
        .expect_err("nothing listens");
    assert!(
        matches!(err, rabbitry::Error::Unreachable { .. }),
        "{err:?}"
    );
    assert_error_clean("the unreachable error", &err);
    assert!(
        err.to_string().contains("guest:***@"),
        "the endpoint is named: {err}"
    );

    // A publish through a broker that was never reached.
    let broker = Broker::lazy(config(&url)).expect("lazy");
    assert_clean("the broker's Debug", &format!("{broker:?}"));
    let publisher = Publisher::builder(broker).build().expect("publisher");
    let err = publisher
        .publish(Message::bytes("", unique("nowhere"), "x"))
        .await
        .expect_err("no broker");
    assert_error_clean("the publish error", &err);
    assert_clean("the logs", &logs());
}

#[tokio::test]
async fn a_refused_tls_certificate_leaks_nowhere() {
    logs();
    let certs = match TestCerts::generate() {
        Ok(certs) => certs,
        Err(why) => return tls_skip(&format!("cannot make test certificates: {why}")),
    };
    let stub = match TlsStub::start(&certs) {
        Ok(stub) => stub,
        Err(why) => return tls_skip(&format!("no TLS listener: {why}")),
    };
    let url = url_with_secret("guest", "localhost", stub.port()).replacen("amqp:", "amqps:", 1);
    let config = BrokerConfig::builder()
        .endpoint(&url)
        .tls_ca_pem(certs.other_ca_pem())
        .connect_timeout(Duration::from_secs(3))
        .build()
        .expect("valid");
    assert_clean("the TLS config's Debug", &format!("{config:?}"));
    let err = Broker::connect(config)
        .await
        .expect_err("untrusted certificate");
    assert!(matches!(err, rabbitry::Error::Tls { .. }), "{err:?}");
    assert_error_clean("the TLS error", &err);
    assert_clean("the logs", &logs());
}

#[test]
fn urls_that_do_not_parse_and_debug_output_leak_nowhere() {
    let e = encode(SECRET, false);
    for bad in [
        format!("amqp://guest:{e}@127.0.0.1:99999/%2f"),
        format!("amqp://guest:{e}@[::1/%2f"),
        format!("amqp://guest:{e}@h/%2f?heartbeat=soon"),
        format!("amqp://guest:{e}@h/%2f?password={e}"),
        format!("http://guest:{e}@h/"),
        format!("amqp://guest:{SECRET}@h/%2f"),
        format!("amqp://guest:{e}@/%2f"),
        format!("amqp://guest:{e}@h/%ff%fe"),
    ] {
        let builder = BrokerConfig::builder().endpoint(&bad);
        assert_clean("the builder's Debug", &format!("{builder:?}"));
        if let Err(err) = builder.build() {
            assert_error_clean("a URL error", &err);
        }
        if let Err(err) = Endpoint::parse(&bad) {
            assert_error_clean("a URL error", &err);
        }
    }
    let endpoint = Endpoint::parse(&url_with_secret("guest", "h", 5672)).expect("valid");
    assert_clean("the endpoint", &format!("{endpoint} {endpoint:?}"));
    let endpoint = endpoint.with_password(SECRET);
    assert_clean("the endpoint", &format!("{endpoint} {endpoint:?}"));
}

/// A user whose password is [`SECRET`], deleted when dropped.
struct SecretUser(String);

impl SecretUser {
    fn create() -> Self {
        let name = unique("rabbitry-cred");
        rabbitmqctl(&["add_user", &name, SECRET]);
        let user = Self(name);
        rabbitmqctl(&["set_permissions", "-p", "/", &user.0, ".*", ".*", ".*"]);
        user
    }
}

impl Drop for SecretUser {
    fn drop(&mut self) {
        rabbitmqctl(&["delete_user", &self.0]);
    }
}

/// Connected with the password, then cut off and back: the loss, the
/// failed attempts and the return are logged with the endpoint, never the
/// password.
#[tokio::test]
async fn a_lost_and_restored_connection_leaks_nowhere() {
    logs();
    let user = SecretUser::create();
    let proxy = FaultProxy::start(services().amqp_addr()).await;
    let broker = Broker::connect(config(&url_with_secret(&user.0, "127.0.0.1", proxy.port())))
        .await
        .expect("the user connects with its unusual password");
    proxy.set_down(true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.set_down(false);
    let back = rabbitry_testkit::eventually(Duration::from_secs(15), || async {
        broker.state(Role::Publish).is_connected() && broker.state(Role::Consume).is_connected()
    })
    .await;
    assert!(back, "the connections came back");
    assert_clean("the broker's Debug", &format!("{broker:?}"));
    broker.close().await;
    let logs = logs();
    assert!(logs.contains("connection lost"), "the loss was logged");
    assert!(
        logs.contains("TRACE lapin") && logs.contains("Server sent connection::Start"),
        "lapin's handshake was captured at TRACE"
    );
    assert!(
        logs.contains(&format!("{}:***@", user.0)),
        "the endpoint is named, redacted"
    );
    assert_clean("the logs", &logs);
}
