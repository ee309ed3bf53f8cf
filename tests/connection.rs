//! Connecting: success, distinct errors, recovery.

mod common;

use std::time::Duration;

use rabbitry::{Broker, BrokerConfig, ConnectionState, Endpoint, Error, Role};
use rabbitry_testkit::services;

#[tokio::test]
async fn connects_with_separate_publish_and_consume_connections() {
    let broker = common::broker().await;
    assert_eq!(broker.state(Role::Publish), ConnectionState::Connected);
    assert_eq!(broker.state(Role::Consume), ConnectionState::Connected);
    broker
        .open_channel(Role::Publish)
        .await
        .expect("publish channel");
    broker
        .open_channel(Role::Consume)
        .await
        .expect("consume channel");
}

#[tokio::test]
async fn wrong_password_is_an_authentication_error_without_the_password() {
    let endpoint = Endpoint::parse(services().amqp_url())
        .expect("valid url")
        .with_password("definitely-wrong-pw");
    let config = BrokerConfig::builder()
        .parsed_endpoint(endpoint)
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("valid config");
    let err = Broker::connect(config)
        .await
        .expect_err("wrong password must fail");
    assert!(
        matches!(err, Error::AuthenticationFailed { .. }),
        "got {err:?}"
    );
    assert!(!err.is_retryable());
    let text = format!("{err} {err:?}");
    assert!(text.contains("authentication failed"), "{text}");
    assert!(
        !text.contains("definitely-wrong-pw"),
        "password leaked: {text}"
    );
}

#[tokio::test]
async fn unreachable_broker_fails_fast_with_a_clear_error() {
    let port = common::closed_port();
    let config = BrokerConfig::builder()
        .endpoint(format!("amqp://guest:secret-pw@127.0.0.1:{port}/%2f"))
        .endpoint(format!("amqp://guest:secret-pw@127.0.0.1:{port}/other"))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("valid config");
    let err = tokio::time::timeout(Duration::from_secs(20), Broker::connect(config))
        .await
        .expect("connect must not hang")
        .expect_err("nothing listens there");
    assert!(matches!(err, Error::Unreachable { .. }), "got {err:?}");
    assert!(err.is_retryable());
    let text = err.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(!text.contains("secret-pw"), "{text}");
}

#[tokio::test]
async fn a_bad_url_is_a_config_error() {
    let err = BrokerConfig::builder()
        .endpoint("rabbit://guest:pw@host")
        .build()
        .expect_err("bad scheme");
    assert!(matches!(err, Error::InvalidUrl { index: 0, .. }), "{err:?}");
}

/// A port nothing listens on: bind one, then free it.
fn refused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[tokio::test]
async fn a_refused_endpoint_is_unreachable_at_once_not_a_timeout() {
    let port = refused_port();
    let connect_timeout = Duration::from_secs(5);
    let config = BrokerConfig::builder()
        .endpoint(format!("amqp://guest:secret-pw@127.0.0.1:{port}/%2f"))
        .connect_timeout(connect_timeout)
        .build()
        .expect("valid config");
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(20), Broker::connect(config))
        .await
        .expect("connect must not hang")
        .expect_err("nothing listens there");
    assert!(matches!(err, Error::Unreachable { .. }), "got {err:?}");
    assert!(
        started.elapsed() < connect_timeout,
        "a refused connection waited {:?}, the whole connect timeout",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_refused_endpoint_fails_over_to_the_next_at_once() {
    let port = refused_port();
    let connect_timeout = Duration::from_secs(5);
    let config = BrokerConfig::builder()
        .endpoint(format!("amqp://guest:guest@127.0.0.1:{port}/%2f"))
        .endpoint(services().amqp_url())
        .connection_name("rabbitry-tests")
        .connect_timeout(connect_timeout)
        .build()
        .expect("valid config");
    let started = std::time::Instant::now();
    let broker = tokio::time::timeout(Duration::from_secs(30), Broker::connect(config))
        .await
        .expect("connect must not hang")
        .expect("the second endpoint answers");
    assert!(
        started.elapsed() < connect_timeout,
        "failing over took {:?}: the refused endpoint cost the connect timeout",
        started.elapsed()
    );
    assert_eq!(broker.state(Role::Publish), ConnectionState::Connected);
    assert_eq!(broker.state(Role::Consume), ConnectionState::Connected);
    broker.close().await;
}

/// Forwards every connection accepted on `[::1]` to `upstream`.
async fn ipv6_forwarder(upstream: String) -> Option<u16> {
    let listener = tokio::net::TcpListener::bind("[::1]:0").await.ok()?;
    let port = listener.local_addr().ok()?.port();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    Some(port)
}

/// The test broker listens on 127.0.0.1 only, so a forwarder on `[::1]`
/// stands in front of it: the connection really goes over IPv6.
#[tokio::test]
async fn an_ipv6_endpoint_connects() {
    let Some(port) = ipv6_forwarder(services().amqp_addr()).await else {
        eprintln!("SKIPPED: this machine has no IPv6 loopback");
        return;
    };
    let url = services().amqp_url_via("[::1]", port);
    assert!(url.contains("@[::1]:"), "the URL keeps its brackets");
    rabbitry_testkit::init_tracing();
    let config = BrokerConfig::builder()
        .endpoint(url)
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("valid config");
    let broker = tokio::time::timeout(Duration::from_secs(20), Broker::connect(config))
        .await
        .expect("connect must not hang")
        .expect("an IPv6 endpoint connects");
    broker
        .open_channel(Role::Publish)
        .await
        .expect("a channel over IPv6");
    broker.close().await;
}
