//! What a service's log says under `rabbitry::RECOMMENDED_LOG_FILTER`,
//! checked against the same events captured with lapin at TRACE, so that
//! every test can fail: the events happen, and the filter is what keeps
//! them out (or lets them through).
//!
//! - a first connect says "connected", never "restored" or "recovered";
//! - a connection reset from the broker's side (a proxy in front of it)
//!   gives a WARN per role, naming the endpoint (password redacted) and the
//!   reason, then an INFO per role when it is back, with the outage's
//!   length;
//! - the first declaration of a topology lists its queues;
//! - a returned mandatory message's body never reaches the log;
//! - an expected 404 (a passive declare of a missing queue) is no ERROR;
//! - sqlx's notices on a repeated migration stay out;
//! - a message sent to the error queue is an ERROR naming the consumer,
//!   the queue and the message id, never the body; a subscription the
//!   broker cancels (its queue deleted) is a WARN naming both;
//! - a relay whose broker is away warns once, not once per batch.
//!
//! Its own test binary: it installs a global `tracing` subscriber with two
//! outputs, one per filter.

use std::future::Future;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rabbitry::postgres::{OutboxStore, Relay, RelayConfig};
use rabbitry::{
    Binding, Broker, BrokerConfig, CancellationToken, Consumer, Delivery, Error, Exchange,
    HandlerError, Message, PublishOutcome, Publisher, Queue, RECOMMENDED_LOG_FILTER, RetryPolicy,
    Topology,
};
use rabbitry_testkit::{FaultProxy, TestDatabase, eventually, services, unique};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Everything written to one output, shared with its writer.
#[derive(Clone, Default)]
struct Output(Arc<Mutex<Vec<u8>>>);

impl Output {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

impl Write for Output {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut out = self.0.lock().unwrap_or_else(|p| p.into_inner());
        out.extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The outputs of this process: under the recommended filter, under the
/// recommended filter with lapin raised to TRACE after it, and with lapin
/// at TRACE and everything else at INFO.
struct Logs {
    recommended: Output,
    raised: Output,
    trace: Output,
}

fn logs() -> &'static Logs {
    static LOGS: OnceLock<Logs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs {
            recommended: Output::default(),
            raised: Output::default(),
            trace: Output::default(),
        };
        let output = |out: &Output, filter: &str| {
            let out = out.clone();
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || out.clone())
                .with_filter(
                    EnvFilter::builder()
                        .parse(filter)
                        .unwrap_or_else(|e| panic!("{filter:?} does not parse: {e}")),
                )
        };
        tracing_subscriber::registry()
            .with(vec![
                output(&logs.recommended, RECOMMENDED_LOG_FILTER).boxed(),
                output(
                    &logs.raised,
                    &format!("{RECOMMENDED_LOG_FILTER},lapin=trace"),
                )
                .boxed(),
                output(&logs.trace, "info,lapin=trace,rabbitry_core=debug").boxed(),
            ])
            .init();
        logs
    })
}

/// The lines of `text` that contain `needle`.
fn lines_with<'a>(text: &'a str, needle: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.contains(needle)).collect()
}

/// Waits up to 30 s for a line of the recommended output that holds both
/// `a` and `b`, and returns it.
async fn wait_for_line(a: &str, b: &str) -> String {
    let find = || {
        lines_with(&logs().recommended.text(), a)
            .into_iter()
            .find(|l| l.contains(b))
            .map(str::to_owned)
    };
    let found = eventually(Duration::from_secs(30), || async { find().is_some() }).await;
    assert!(
        found,
        "no line with {a:?} and {b:?} in:\n{}",
        logs().recommended.text()
    );
    find().expect("seen")
}

/// Awaits `fut`, failing the test if it takes longer than a minute.
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    let limit = Duration::from_secs(60);
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {limit:?}"))
}

fn config(url: String, name: &str) -> BrokerConfig {
    BrokerConfig::builder()
        .endpoint(url)
        .connection_name(name)
        .connect_timeout(Duration::from_secs(5))
        .reconnect_delay(Duration::from_millis(100))
        .build()
        .expect("config")
}

/// A broker on the test node itself, no proxy between.
async fn connect_directly(prefix: &str) -> Broker {
    let config = config(services().amqp_url().to_owned(), &unique(prefix));
    within("connecting", Broker::connect(config))
        .await
        .expect("connect")
}

#[tokio::test]
async fn a_reset_connection_is_lost_at_warn_and_restored_at_info_and_the_topology_is_listed() {
    let logs = logs();
    let name = unique("logs-reset");
    let proxy = FaultProxy::start(services().amqp_addr()).await;
    let url = services().amqp_url_via("127.0.0.1", proxy.port());
    let broker = within("connecting", Broker::connect(config(url, &name)))
        .await
        .expect("connect through the proxy");

    // The first declaration of a topology lists it.
    let queue = unique("logs-orders");
    let exchange = unique("logs-ex");
    let topology = Topology::new()
        .exchange(Exchange::topic(&exchange))
        .queue(Queue::new(&queue))
        .binding(Binding::new(&exchange, &queue, "order.created"));
    within("declaring", broker.declare(&topology))
        .await
        .expect("declare");
    let declared = lines_with(&logs.recommended.text(), "topology declared")
        .into_iter()
        .filter(|l| l.contains(&queue))
        .map(str::to_owned)
        .collect::<Vec<_>>();
    assert_eq!(declared.len(), 1, "one start-up line: {declared:#?}");
    let line = &declared[0];
    assert!(line.contains(" INFO "), "{line}");
    for part in [
        format!("{queue} (quorum, dead-letters to {queue}.dlx)"),
        format!("{queue}.dlq (quorum)"),
        format!("{exchange} (topic)"),
        format!("{exchange} -> {queue} [order.created]"),
    ] {
        assert!(line.contains(&part), "{part:?} is not in {line}");
    }
    // Declared again: not a second INFO line.
    within("declaring again", broker.declare(&topology))
        .await
        .expect("declare again");
    let again = lines_with(&logs.recommended.text(), &queue).len();
    assert_eq!(again, 1, "declared again at DEBUG only");

    // A first connect is no recovery.
    let first = logs.recommended.text();
    let ours = lines_with(&first, &name);
    assert_eq!(
        ours.iter()
            .filter(|l| l.contains(" INFO ") && l.contains("rabbitry connected"))
            .count(),
        2,
        "one line per role: {ours:#?}"
    );
    assert!(
        ours.iter()
            .all(|l| !l.contains("restored") && !l.contains("recovered")),
        "a first connect is not a recovery: {ours:#?}"
    );

    // The broker's side resets both connections.
    proxy.reset();
    for role in ["publish", "consume"] {
        wait_for_line(&format!("{name}-{role}"), "rabbitry connection restored").await;
    }
    let text = logs.recommended.text();
    let ours = lines_with(&text, &name);
    for role in ["publish", "consume"] {
        let mine = |l: &&&str| l.contains(&format!("{name}-{role}"));
        let lost: Vec<_> = ours
            .iter()
            .filter(mine)
            .filter(|l| l.contains("rabbitry connection lost; reconnecting"))
            .collect();
        assert_eq!(lost.len(), 1, "one loss for {role}: {ours:#?}");
        let lost = lost[0];
        assert!(lost.contains(" WARN "), "{lost}");
        assert!(lost.contains(&format!("role=\"{role}\"")), "{lost}");
        assert!(
            lost.contains(&format!("guest:***@127.0.0.1:{}", proxy.port())),
            "the endpoint, redacted: {lost}"
        );
        assert!(lost.contains("reason="), "why: {lost}");
        let restored = ours
            .iter()
            .filter(mine)
            .find(|l| l.contains("rabbitry connection restored"))
            .expect("restored");
        assert!(restored.contains("outage="), "how long: {restored}");
        let at = |line: &str| text.find(line).expect("in the log");
        assert!(at(lost) < at(restored), "lost, then restored");
    }
    // lapin says the same at ERROR, without the role or the endpoint.
    assert!(
        !lines_with(&logs.trace.text(), "lapin::io_loop").is_empty(),
        "lapin logged the reset (else this proves nothing)"
    );
    let lapin: Vec<_> = text
        .lines()
        .filter(|l| l.contains("lapin::io_loop") || l.contains("lapin::channel"))
        .collect();
    assert!(lapin.is_empty(), "lapin's lines on a reset: {lapin:#?}");
    println!("{}", ours.join("\n"));

    within("teardown", broker.teardown(&topology))
        .await
        .expect("teardown");
    broker.close().await;
}

#[tokio::test]
async fn a_returned_message_body_stays_out_of_the_log() {
    let logs = logs();
    let broker = connect_directly("logs-return").await;
    let publisher = Publisher::builder(broker.clone())
        .build()
        .expect("publisher");
    let marker = unique("private-payload");
    let forms = [marker.clone(), format!("{:?}", marker.as_bytes())];
    // No queue by that name: the broker returns the message, body and all.
    let err = within(
        "publishing",
        publisher.publish(Message::bytes("", unique("nobody"), marker.clone())),
    )
    .await
    .expect_err("unroutable");
    assert!(matches!(err, Error::Unroutable { .. }), "{err:?}");

    let leaked = |out: &Output| {
        let text = out.text();
        forms.iter().any(|form| text.contains(form.as_str()))
    };
    assert!(
        eventually(Duration::from_secs(10), || async { leaked(&logs.trace) }).await,
        "lapin at TRACE prints the returned body (else this test proves nothing)"
    );
    assert!(
        !leaked(&logs.recommended),
        "the recommended filter let a payload through"
    );
    assert!(
        !leaked(&logs.raised),
        "the recommended filter with lapin=trace after it let a payload through"
    );
    broker.close().await;
}

#[tokio::test]
async fn an_expected_404_is_no_error_in_the_log() {
    let logs = logs();
    let broker = connect_directly("logs-404").await;
    let missing = unique("logs-missing");
    let err = within("a passive declare", broker.queue_stats(&missing))
        .await
        .expect_err("no such queue");
    assert!(matches!(err, Error::Broker { code: 404, .. }), "{err:?}");
    let closed = || {
        lines_with(&logs.trace.text(), &missing)
            .iter()
            .any(|l| l.contains("ERROR") && l.contains("lapin::channel"))
    };
    assert!(
        eventually(Duration::from_secs(10), || async { closed() }).await,
        "lapin logs the 404 at ERROR (else this test proves nothing): {}",
        lines_with(&logs.trace.text(), "Channel closed").join("\n")
    );
    let seen = lines_with(&logs.recommended.text(), &missing)
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    assert!(seen.is_empty(), "an expected 404 in the log: {seen:#?}");
    broker.close().await;
}

#[tokio::test]
async fn sqlx_notices_of_a_repeated_migration_stay_out() {
    let logs = logs();
    let db = TestDatabase::create().await;
    let store = within("connecting to Postgres", OutboxStore::connect(db.url()))
        .await
        .expect("connect");
    for _ in 0..2 {
        within("migrating", store.migrate()).await.expect("migrate");
    }
    let notice = "already exists, skipping";
    assert!(
        !lines_with(&logs.trace.text(), notice).is_empty(),
        "Postgres sent its notice (else this test proves nothing)"
    );
    let seen = lines_with(&logs.recommended.text(), notice)
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    assert!(seen.is_empty(), "sqlx's notices in the log: {seen:#?}");
    within("closing", store.pool().close()).await;
}

#[tokio::test]
async fn a_dead_letter_and_a_cancelled_subscription_name_the_consumer_and_queue() {
    // Installed before anything logs: the subscriber is shared, and a
    // line logged before it exists is lost.
    let _ = logs();
    let broker = connect_directly("logs-consumer").await;
    let queue = unique("logs-work");
    let consumer_name = unique("logs-worker");
    let topology = Topology::new().queue(Queue::new(&queue));
    within("declaring", broker.declare(&topology))
        .await
        .expect("declare");
    let consumer = Consumer::builder(broker.clone(), &queue)
        .name(&consumer_name)
        .retry(RetryPolicy::none())
        .build()
        .expect("consumer");
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let (consumer, shutdown) = (consumer.clone(), shutdown.clone());
        async move {
            let never = |_: Delivery| async { Err(HandlerError::permanent("order 7 is unknown")) };
            consumer.run(never, shutdown).await
        }
    });
    let marker = unique("private-body");
    let publisher = Publisher::builder(broker.clone())
        .build()
        .expect("publisher");
    let sent = within(
        "publishing",
        publisher.publish(Message::bytes("", &queue, marker.clone())),
    )
    .await;
    assert!(matches!(sent, Ok(PublishOutcome::Confirmed)), "{sent:?}");
    let dead = wait_for_line(&queue, "message dead-lettered").await;
    assert!(dead.contains("ERROR"), "{dead}");
    assert!(dead.contains(&consumer_name), "the consumer: {dead}");
    assert!(dead.contains("order 7 is unknown"), "why: {dead}");
    assert!(!dead.contains(&marker), "no body: {dead}");

    // The queue deleted under the consumer: the broker cancels it.
    within("teardown", broker.teardown(&topology))
        .await
        .expect("teardown");
    let lost = wait_for_line(&queue, "subscription lost").await;
    assert!(lost.contains("WARN"), "{lost}");
    assert!(lost.contains(&consumer_name), "the consumer: {lost}");
    assert!(lost.contains("cancelled by the broker"), "why: {lost}");

    shutdown.cancel();
    within("the consumer's shutdown", running)
        .await
        .expect("joined")
        .expect("stopped cleanly");
    broker.close().await;
}

#[tokio::test]
async fn a_relay_whose_broker_is_away_warns_once_not_per_batch() {
    // Installed before anything logs: the subscriber is shared, and a
    // line logged before it exists is lost.
    let _ = logs();
    let db = TestDatabase::create().await;
    let store = within("connecting to Postgres", OutboxStore::connect(db.url()))
        .await
        .expect("connect");
    within("migrating", store.migrate()).await.expect("migrate");
    let proxy = FaultProxy::start(services().amqp_addr()).await;
    proxy.set_down(true);
    let url = services().amqp_url_via("127.0.0.1", proxy.port());
    let broker = Broker::lazy(config(url, &unique("logs-relay"))).expect("lazy");
    let publisher = Publisher::builder(broker.clone())
        .build()
        .expect("publisher");
    let relay = Relay::new(store.clone(), publisher, RelayConfig::default()).expect("relay");
    for _ in 0..3 {
        let message = Message::bytes("", unique("logs-relay-q"), "x");
        within("enqueueing", store.enqueue(&message))
            .await
            .expect("enqueue");
        let report = within("a batch", relay.run_batch()).await.expect("batch");
        assert_eq!(report.failed, 1, "the broker is away: {report:?}");
    }
    let ours = format!("127.0.0.1:{}", proxy.port());
    let warned: Vec<String> = lines_with(&logs().recommended.text(), "outbox rows not published")
        .into_iter()
        .filter(|l| l.contains(&ours))
        .map(str::to_owned)
        .collect();
    assert_eq!(warned.len(), 1, "once per 30 s, not per batch: {warned:#?}");
    broker.close().await;
    within("closing", store.pool().close()).await;
}

#[test]
fn the_filter_parses_and_keeps_payloads_out_whatever_lapin_gets() {
    for filter in [
        RECOMMENDED_LOG_FILTER.to_owned(),
        format!("{RECOMMENDED_LOG_FILTER},lapin=trace,rabbitry=debug"),
    ] {
        EnvFilter::builder()
            .parse(&filter)
            .unwrap_or_else(|e| panic!("{filter:?}: {e}"));
    }
}
