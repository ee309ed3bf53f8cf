//! Invalid configuration is reported by `build()`, with a message naming
//! the setting, never as a panic and never later at run time: bad URLs,
//! zero counts, an empty queue name, zero and absurd durations. No broker
//! is contacted (the broker handle is lazy).

use std::time::Duration;

use rabbitry::{Broker, BrokerConfig, Consumer, Error, Publisher};

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn broker() -> Broker {
    Broker::lazy(
        BrokerConfig::builder()
            .endpoint(URL)
            .build()
            .expect("valid"),
    )
    .expect("lazy")
}

/// The error is a configuration error whose text holds every one of `words`.
#[track_caller]
fn assert_config_error<T: std::fmt::Debug>(result: rabbitry::Result<T>, words: &[&str]) {
    let err = result.expect_err("must be refused");
    assert!(
        matches!(err, Error::Config(_) | Error::InvalidUrl { .. }),
        "{err:?}"
    );
    assert!(!err.is_retryable(), "{err:?}");
    let text = err.to_string();
    for word in words {
        assert!(text.contains(word), "{word:?} not in {text:?}");
    }
}

#[test]
fn bad_urls_are_refused_with_their_position_and_reason() {
    let cases: &[(&str, &[&str])] = &[
        ("", &["#0"]),
        ("   ", &["#0"]),
        ("127.0.0.1:5672", &["#0"]),
        ("http://h/", &["scheme", "amqp://"]),
        ("amqp://", &["#0"]),
        ("amqp://h:99999/", &["#0"]),
        ("amqp://h/%2f?heartbeat=-1", &["heartbeat", "number"]),
        ("amqp://h/%2f?frame_max=big", &["frame_max"]),
        ("amqp://h/%2f?nonsense=1", &["unknown query parameter"]),
        ("amqp://u:p@h/%ff", &["UTF-8"]),
    ];
    for (url, words) in cases {
        let result = BrokerConfig::builder().endpoint(*url).build();
        assert_config_error(result, words);
    }
    // The second URL is the bad one, and is named.
    let result = BrokerConfig::builder()
        .endpoints([URL, "amqp://[bad"])
        .build();
    assert_config_error(result, &["#1"]);
    assert_config_error(BrokerConfig::builder().build(), &["endpoint"]);
}

#[test]
fn zero_and_absurd_durations_are_refused_by_build() {
    let day = Duration::from_secs(86_400);
    let cases: Vec<(&str, rabbitry::BrokerConfigBuilder)> = vec![
        (
            "connect_timeout",
            BrokerConfig::builder().connect_timeout(Duration::ZERO),
        ),
        (
            "connect_timeout",
            BrokerConfig::builder().connect_timeout(Duration::MAX),
        ),
        (
            "operation_timeout",
            BrokerConfig::builder().operation_timeout(Duration::ZERO),
        ),
        (
            "operation_timeout",
            BrokerConfig::builder().operation_timeout(365 * day),
        ),
        (
            "reconnect_delay",
            BrokerConfig::builder().reconnect_delay(Duration::MAX),
        ),
        (
            "heartbeat",
            BrokerConfig::builder().heartbeat(Duration::ZERO),
        ),
        // Rounds to 0 s on the wire, which would turn heartbeats off.
        (
            "heartbeat",
            BrokerConfig::builder().heartbeat(Duration::from_millis(500)),
        ),
        ("heartbeat", BrokerConfig::builder().heartbeat(day)),
        (
            "publish_connections",
            BrokerConfig::builder().publish_connections(0),
        ),
        (
            "consume_connections",
            BrokerConfig::builder().consume_connections(0),
        ),
    ];
    for (name, builder) in cases {
        assert_config_error(builder.endpoint(URL).build(), &[name]);
    }
    // The largest accepted values build and make a broker handle without
    // overflowing anything.
    let config = BrokerConfig::builder()
        .endpoints([URL, URL, URL])
        .connect_timeout(Duration::from_secs(3600))
        .operation_timeout(day)
        .reconnect_delay(Duration::from_secs(3600))
        .heartbeat(Duration::from_secs(65_535))
        .build()
        .expect("the bounds themselves are valid");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async { drop(Broker::lazy(config).expect("lazy")) });
}

#[test]
fn publisher_and_consumer_settings_are_refused_by_build() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let b = broker();
        let publisher = |f: fn(rabbitry::PublisherBuilder) -> rabbitry::PublisherBuilder| {
            f(Publisher::builder(b.clone())).build()
        };
        assert_config_error(publisher(|p| p.window(0)), &["window"]);
        assert_config_error(publisher(|p| p.channels(0)), &["channels"]);
        assert_config_error(publisher(|p| p.timeout(Duration::ZERO)), &["timeout"]);
        assert_config_error(
            publisher(|p| p.outbox_timeout(Duration::ZERO)),
            &["timeout"],
        );

        let consumer =
            |queue: &str, f: fn(rabbitry::ConsumerBuilder) -> rabbitry::ConsumerBuilder| {
                f(Consumer::builder(b.clone(), queue)).build()
            };
        assert_config_error(consumer("", |c| c), &["queue name"]);
        assert_config_error(consumer("q", |c| c.prefetch(0)), &["prefetch"]);
        assert_config_error(consumer("q", |c| c.concurrency(0)), &["concurrency"]);
        assert_config_error(
            consumer("q", |c| c.prefetch(2).concurrency(8)),
            &["prefetch", "concurrency"],
        );
        assert_config_error(
            consumer("q", |c| c.handler_timeout(Some(Duration::ZERO))),
            &["handler timeout"],
        );
        for poll in [Duration::from_nanos(1), Duration::MAX] {
            let c = Consumer::builder(b.clone(), "q").backlog_poll(poll).build();
            assert_config_error(c, &["backlog poll"]);
        }
        let off = Consumer::builder(b.clone(), "q").backlog_poll(Duration::ZERO);
        assert!(off.build().is_ok(), "zero turns the backlog poll off");
        // AMQP names are at most 255 bytes; lapin would panic on more.
        let long = "q".repeat(256);
        assert_config_error(consumer(&long, |c| c), &["255"]);
        assert_config_error(consumer("q", |c| c.name("n".repeat(300))), &["255"]);
    });
}
