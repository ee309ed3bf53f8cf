//! `BrokerConfig::from_env_with`: every variable read, and each refused
//! with an error that names it. A map stands in for the process
//! environment, which tests must not change (that takes `unsafe`).

use std::collections::HashMap;
use std::time::Duration;

use super::BrokerConfig;
use crate::error::{Error, Result};

const PASSWORD: &str = "s3cr3t-pw";

fn from(vars: &[(&str, &str)]) -> Result<BrokerConfig> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    BrokerConfig::from_env_with(|name| vars.get(name).cloned())
}

/// The message of the `Error::Config` that `vars` give.
fn refused(vars: &[(&str, &str)]) -> String {
    match from(vars) {
        Err(Error::Config(message)) => message,
        Err(other) => panic!("expected Error::Config, got {other:?}"),
        Ok(config) => panic!("expected an error, got {config:?}"),
    }
}

fn temp_file(contents: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "rabbitry-env-test-{}.pem",
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::write(&path, contents).expect("write a temporary file");
    path
}

#[test]
fn every_variable_reaches_its_setting() {
    let ca = temp_file("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
    let ca_path = ca.display().to_string();
    let config = from(&[
        (
            "RABBITRY_AMQP_URL",
            "amqp://app:s3cr3t-pw@rabbit-1:5672/%2f, amqps://app:s3cr3t-pw@rabbit-2:5671/orders",
        ),
        ("AMQP_URL", "amqp://ignored-host"),
        ("RABBITRY_CONNECTION_NAME", " billing "),
        ("RABBITRY_HEARTBEAT_SECS", "15"),
        ("RABBITRY_CONNECT_TIMEOUT_MS", "2500"),
        ("RABBITRY_OPERATION_TIMEOUT_MS", "45000"),
        ("RABBITRY_RECONNECT_DELAY_MS", "0"),
        ("RABBITRY_PUBLISH_CONNECTIONS", "2"),
        ("RABBITRY_CONSUME_CONNECTIONS", "3"),
        ("RABBITRY_TLS_CA_FILE", &ca_path),
    ]);
    std::fs::remove_file(&ca).ok();
    let config = config.expect("valid settings");
    let endpoints: Vec<String> = config.endpoints().iter().map(ToString::to_string).collect();
    assert_eq!(
        endpoints,
        [
            "amqp://app:***@rabbit-1:5672/%2f",
            "amqps://app:***@rabbit-2:5671/orders"
        ]
    );
    assert_eq!(config.connection_name(), "billing");
    assert_eq!(config.heartbeat, Duration::from_secs(15));
    assert_eq!(config.connect_timeout, Duration::from_millis(2500));
    assert_eq!(config.operation_timeout, Duration::from_secs(45));
    assert_eq!(config.reconnect_delay, Duration::ZERO);
    assert_eq!(config.publish_connections, 2);
    assert_eq!(config.consume_connections, 3);
    assert_eq!(format!("{:?}", config.tls), "TlsSettings { extra_cas: 1 }");
    assert!(!format!("{config:?}").contains(PASSWORD));
}

#[test]
fn unset_and_blank_variables_keep_the_builders_defaults() {
    let config = from(&[
        ("AMQP_URL", "amqp://rabbit-1"),
        ("RABBITRY_AMQP_URL", "  "),
        ("RABBITRY_HEARTBEAT_SECS", ""),
        ("RABBITRY_TLS_CA_FILE", " "),
    ])
    .expect("AMQP_URL is the fallback, blanks are unset");
    let defaults = BrokerConfig::builder()
        .endpoint("amqp://rabbit-1")
        .build()
        .expect("valid");
    assert_eq!(
        config.endpoints()[0].to_string(),
        "amqp://guest:***@rabbit-1:5672/%2f"
    );
    assert_eq!(config.heartbeat, defaults.heartbeat);
    assert_eq!(config.connect_timeout, defaults.connect_timeout);
    assert_eq!(config.operation_timeout, defaults.operation_timeout);
    assert_eq!(config.reconnect_delay, defaults.reconnect_delay);
    assert_eq!(config.publish_connections, defaults.publish_connections);
    assert_eq!(config.consume_connections, defaults.consume_connections);
    assert_eq!(config.connection_name, defaults.connection_name);
    assert_eq!(format!("{:?}", config.tls), "TlsSettings { extra_cas: 0 }");
}

#[test]
fn no_url_names_both_variables() {
    let message = refused(&[("RABBITRY_HEARTBEAT_SECS", "15")]);
    assert!(message.contains("RABBITRY_AMQP_URL"), "{message}");
    assert!(message.contains("AMQP_URL"), "{message}");
    let message = refused(&[("RABBITRY_AMQP_URL", " , ,")]);
    assert!(
        message.contains("RABBITRY_AMQP_URL holds no URL"),
        "{message}"
    );
}

#[test]
fn a_bad_url_is_named_by_variable_and_position_never_echoed() {
    for (var, urls) in [
        (
            "RABBITRY_AMQP_URL",
            "amqp://app:s3cr3t-pw@ok-host,http://app:s3cr3t-pw@h",
        ),
        (
            "AMQP_URL",
            "amqp://app:s3cr3t-pw@ok-host,amqp://app:s3cr3t-pw@[bad",
        ),
    ] {
        let message = refused(&[(var, urls)]);
        assert!(message.starts_with(&format!("{var}: ")), "{message}");
        assert!(message.contains("#1"), "{message}");
        assert!(!message.contains(PASSWORD), "{message}");
        assert!(!message.contains("ok-host"), "{message}");
    }
}

#[test]
fn a_value_that_does_not_parse_names_its_variable_and_not_the_value() {
    let url = ("RABBITRY_AMQP_URL", "amqp://app:s3cr3t-pw@rabbit-1");
    for var in [
        "RABBITRY_HEARTBEAT_SECS",
        "RABBITRY_CONNECT_TIMEOUT_MS",
        "RABBITRY_OPERATION_TIMEOUT_MS",
        "RABBITRY_RECONNECT_DELAY_MS",
        "RABBITRY_PUBLISH_CONNECTIONS",
        "RABBITRY_CONSUME_CONNECTIONS",
    ] {
        for bad in ["30s", "-1", "1.5", "99999999999999999999999", "s3cr3t-pw"] {
            let message = refused(&[url, (var, bad)]);
            assert!(
                message.starts_with(&format!("{var} must be a whole number")),
                "{var}={bad}: {message}"
            );
            assert!(!message.contains(bad), "{var}={bad} echoed: {message}");
        }
    }
}

#[test]
fn a_value_out_of_range_names_its_variable() {
    let url = ("RABBITRY_AMQP_URL", "amqp://rabbit-1");
    for (var, bad) in [
        ("RABBITRY_HEARTBEAT_SECS", "0"),
        ("RABBITRY_HEARTBEAT_SECS", "65536"),
        ("RABBITRY_CONNECT_TIMEOUT_MS", "0"),
        ("RABBITRY_CONNECT_TIMEOUT_MS", "3600001"),
        ("RABBITRY_OPERATION_TIMEOUT_MS", "0"),
        ("RABBITRY_OPERATION_TIMEOUT_MS", "86400001"),
        ("RABBITRY_RECONNECT_DELAY_MS", "3600001"),
        ("RABBITRY_PUBLISH_CONNECTIONS", "0"),
        ("RABBITRY_CONSUME_CONNECTIONS", "0"),
    ] {
        let message = refused(&[url, (var, bad)]);
        assert!(
            message.starts_with(&format!("{var} (")),
            "{var}={bad}: {message}"
        );
    }
}

#[test]
fn a_bad_ca_file_names_its_variable() {
    let url = ("RABBITRY_AMQP_URL", "amqps://rabbit-1");
    let missing = std::env::temp_dir().join("rabbitry-env-test-no-such-file.pem");
    let message = refused(&[
        url,
        ("RABBITRY_TLS_CA_FILE", &missing.display().to_string()),
    ]);
    assert!(
        message.starts_with("RABBITRY_TLS_CA_FILE (tls_ca_file)"),
        "{message}"
    );

    let key = temp_file("-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n");
    let message = refused(&[url, ("RABBITRY_TLS_CA_FILE", &key.display().to_string())]);
    std::fs::remove_file(&key).ok();
    assert!(
        message.starts_with("RABBITRY_TLS_CA_FILE (tls_ca_file)"),
        "{message}"
    );
    assert!(message.contains("private key"), "{message}");
    assert!(!message.contains("MIIB"), "{message}");
}

#[test]
fn the_builder_names_the_setter_when_no_variable_is_involved() {
    let err = BrokerConfig::builder()
        .endpoint("amqp://h")
        .heartbeat(Duration::ZERO)
        .build()
        .expect_err("zero heartbeat");
    assert!(err.to_string().contains(": heartbeat of 0ns"), "{err}");
    assert!(!err.to_string().contains("RABBITRY_"), "{err}");
}

#[test]
fn docs_configuration_lists_every_variable_the_library_reads() {
    let doc = include_str!("../../../../docs/configuration.md");
    let vars = [super::env::AMQP_URL, super::env::AMQP_URL_FALLBACK]
        .into_iter()
        .chain(super::env::SETTINGS.iter().map(|(var, ..)| *var));
    for var in vars {
        let row = doc
            .lines()
            .find(|line| line.starts_with(&format!("| `{var}` |")))
            .unwrap_or_else(|| panic!("docs/configuration.md has no row for {var}"));
        assert!(row.contains("library"), "{var}: {row}");
    }
}
