//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use rabbitry::{Broker, BrokerConfig, BrokerConfigBuilder};
use rabbitry_testkit::services;

/// A config builder pointed at the test broker.
pub fn config() -> BrokerConfigBuilder {
    rabbitry_testkit::init_tracing();
    BrokerConfig::builder()
        .endpoint(services().amqp_url())
        .connection_name("rabbitry-tests")
        .connect_timeout(Duration::from_secs(5))
}

/// A broker connected to the test broker.
pub async fn broker() -> Broker {
    Broker::connect(config().build().expect("valid config"))
        .await
        .expect("connect to the test broker")
}

/// Polls `check` every 50 ms until it returns true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
