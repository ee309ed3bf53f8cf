//! TLS (`amqps://`) against a broker node of its own with only a TLS
//! listener and a certificate from a CA made when the test runs: trusting
//! that CA connects, publishes and consumes; trusting another CA, or only
//! the system's roots, fails at once with an error that names the
//! certificate, never hangs and never panics.
//!
//! The node is the installed `rabbitmq-server` (root needed), whatever
//! `AMQP_URL` says. On a machine that cannot run it the test prints
//! `SKIPPED: …`; a node that starts and does not boot fails the test.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rabbitry::{
    Broker, BrokerConfig, Consumer, Delivery, Error, Message, Publisher, Queue, Topology,
};
use rabbitry_testkit::{eventually, services, tls_node_for_test, unique};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn tls_config(url: &str) -> rabbitry::BrokerConfigBuilder {
    rabbitry_testkit::init_tracing();
    BrokerConfig::builder()
        .endpoint(url)
        .connection_name("rabbitry-tls-test")
        .connect_timeout(CONNECT_TIMEOUT)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_with_the_right_ca_delivers_and_a_wrong_ca_fails_clearly() {
    let Some((certs, node)) = tls_node_for_test("") else {
        return;
    };

    // By host name and by IP address: the certificate names both.
    for host in ["localhost", "127.0.0.1"] {
        let broker = Broker::connect(
            tls_config(&node.url(host))
                .tls_ca_pem(certs.ca_pem())
                .build()
                .expect("valid config"),
        )
        .await
        .unwrap_or_else(|e| panic!("amqps to {host} with the test CA: {e}"));
        assert!(broker.config().endpoints()[0].is_tls());
        publish_and_consume_one(&broker).await;
        broker.close().await;
    }

    // The same CA read from a file.
    let broker = Broker::connect(
        tls_config(&node.url("localhost"))
            .tls_ca_file(certs.path("ca.pem"))
            .build()
            .expect("valid config"),
    )
    .await
    .expect("amqps with the CA from a file");
    broker.close().await;

    // Another CA, and none (the system's roots only): the certificate is
    // refused, quickly, and the error says so.
    for (what, builder) in [
        (
            "an unrelated CA",
            tls_config(&node.url("localhost")).tls_ca_pem(certs.other_ca_pem()),
        ),
        ("the system roots", tls_config(&node.url("localhost"))),
    ] {
        let err = connect_fails(builder.build().expect("valid config")).await;
        assert!(matches!(err, Error::Tls { .. }), "{what}: {err:?}");
        assert!(
            !err.is_retryable(),
            "{what}: a certificate is not fixed by retrying: {err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("certificate") && text.contains("UnknownIssuer"),
            "{what}: the error must name the certificate problem: {text}"
        );
    }
    drop(node);
}

/// Connecting fails within the connect timeout (plus slack for a loaded
/// machine), with an error, never a hang.
async fn connect_fails(config: BrokerConfig) -> Error {
    let started = Instant::now();
    let result = tokio::time::timeout(CONNECT_TIMEOUT * 3, Broker::connect(config))
        .await
        .expect("connect returns within its bound");
    let err = result.expect_err("the handshake must fail");
    assert!(
        started.elapsed() < CONNECT_TIMEOUT + Duration::from_secs(2),
        "failed after {:?}",
        started.elapsed()
    );
    err
}

async fn publish_and_consume_one(broker: &Broker) {
    let queue = unique("tls");
    broker
        .declare(&Topology::new().queue(Queue::new(&queue)))
        .await
        .expect("declare over TLS");
    let publisher = Publisher::builder(broker.clone())
        .build()
        .expect("publisher");
    let outcome = publisher
        .publish(Message::bytes("", &queue, "over tls"))
        .await
        .expect("publish");
    assert!(outcome.is_confirmed(), "{outcome:?}");

    let seen = Arc::new(AtomicUsize::new(0));
    let consumer = Consumer::builder(broker.clone(), &queue)
        .build()
        .expect("consumer");
    let s = seen.clone();
    let (shutdown, task) = common::spawn_consumer(&consumer, move |d: Delivery| {
        let ok = d.payload() == b"over tls";
        if ok {
            s.fetch_add(1, Ordering::SeqCst);
        }
        async move {
            if ok {
                Ok(())
            } else {
                Err(rabbitry::HandlerError::permanent("not the message sent"))
            }
        }
    });
    assert!(
        eventually(Duration::from_secs(20), || async {
            seen.load(Ordering::SeqCst) == 1
        })
        .await,
        "the message came back over TLS"
    );
    common::stop_consumer(shutdown, task).await;
    assert_eq!(seen.load(Ordering::SeqCst), 1, "exactly once");
}

/// `amqps://` to a plain AMQP listener (the test broker's): the handshake
/// fails with a TLS error, within the connect timeout, without the password.
#[tokio::test]
async fn amqps_to_a_plain_listener_fails_within_the_timeout() {
    let url = services().amqp_url().replacen("amqp://", "amqps://", 1);
    let err = connect_fails(tls_config(&url).build().expect("valid config")).await;
    assert!(matches!(err, Error::Tls { .. }), "{err:?}");
    assert!(!err.is_retryable(), "{err:?}");
}

#[test]
fn a_ca_that_is_not_a_pem_certificate_is_a_build_error() {
    let err = tls_config("amqps://u:p@localhost/%2f")
        .tls_ca_pem("just some text")
        .build()
        .expect_err("not PEM");
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(err.to_string().contains("PEM"), "{err}");
    let err = tls_config("amqps://u:p@localhost/%2f")
        .tls_ca_file("/nonexistent/ca.pem")
        .build()
        .expect_err("no file");
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}
