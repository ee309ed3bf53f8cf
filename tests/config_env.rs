//! Settings read from environment variables reach the broker: the
//! connection name and heartbeat the management tools show are the ones
//! the variables gave. A map stands in for the process environment, which
//! a test must not change.

use std::collections::HashMap;
use std::time::Duration;

use rabbitry::{Broker, BrokerConfig, Error};
use rabbitry_testkit::{rabbitmqctl, services, unique};

fn from_map(vars: &HashMap<&str, String>) -> Result<BrokerConfig, Error> {
    BrokerConfig::from_env_with(|name| vars.get(name).cloned())
}

#[tokio::test]
async fn the_broker_sees_the_name_and_heartbeat_the_variables_set() {
    rabbitry_testkit::init_tracing();
    let name = unique("rabbitry-env");
    let vars = HashMap::from([
        ("RABBITRY_AMQP_URL", services().amqp_url().to_owned()),
        ("RABBITRY_CONNECTION_NAME", name.clone()),
        ("RABBITRY_HEARTBEAT_SECS", "17".to_owned()),
        ("RABBITRY_CONNECT_TIMEOUT_MS", "5000".to_owned()),
    ]);
    let broker = tokio::time::timeout(
        Duration::from_secs(20),
        Broker::connect(from_map(&vars).expect("valid settings")),
    )
    .await
    .expect("connect within 20 s")
    .expect("connect to the test broker");

    // One line per connection: "<timeout>\t<client properties>".
    let listing = rabbitmqctl(&[
        "-q",
        "list_connections",
        "--no-table-headers",
        "timeout",
        "client_properties",
    ]);
    let ours: Vec<&str> = listing.lines().filter(|l| l.contains(&name)).collect();
    for role in ["publish", "consume"] {
        let tag = format!("{{\"connection_name\",\"{name}-{role}\"}}");
        let line = ours
            .iter()
            .find(|l| l.contains(&tag))
            .unwrap_or_else(|| panic!("no {role} connection named {name}: {listing}"));
        let heartbeat = line.split('\t').next().unwrap_or_default().trim();
        assert_eq!(heartbeat, "17", "{role}: {line}");
    }
    tokio::time::timeout(Duration::from_secs(20), broker.close())
        .await
        .expect("close within 20 s");
}

#[test]
fn a_bad_variable_fails_before_any_connection_is_tried() {
    let vars = HashMap::from([
        ("RABBITRY_AMQP_URL", services().amqp_url().to_owned()),
        ("RABBITRY_OPERATION_TIMEOUT_MS", "30 seconds".to_owned()),
    ]);
    let err = from_map(&vars).expect_err("not a number of milliseconds");
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(!err.is_retryable(), "{err:?}");
    let text = format!("{err} {err:?}");
    assert!(text.contains("RABBITRY_OPERATION_TIMEOUT_MS"), "{text}");
    assert!(!text.contains("30 seconds"), "{text}");
}
