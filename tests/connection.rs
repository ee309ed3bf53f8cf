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
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
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
