//! What an outage logs: the loss once at WARN, the return once at INFO, and
//! the failed attempts in between rate-limited.
//!
//! Its own test binary: it installs its own `tracing` subscriber.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rabbitry::{Broker, BrokerConfig, Role};
use rabbitry_testkit::{FaultProxy, services};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

type Lines = Arc<Mutex<Vec<(Level, String)>>>;

/// Records rabbitry's own log lines (level and message).
struct Capture(Lines);

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        struct Message(String);
        impl Visit for Message {
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        if !event.metadata().target().starts_with("rabbitry") {
            return;
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        self.0
            .lock()
            .expect("lock")
            .push((*event.metadata().level(), message.0));
    }
}

fn count(lines: &Lines, level: Level, message: &str) -> usize {
    lines
        .lock()
        .expect("lock")
        .iter()
        .filter(|(l, m)| *l == level && m == message)
        .count()
}

// Single-threaded: every rabbitry task runs on this thread, where the
// capturing subscriber is the default.
#[tokio::test(flavor = "current_thread")]
async fn an_outage_logs_the_loss_and_the_return_once_and_throttles_the_rest() {
    let lines: Lines = Arc::default();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::registry().with(Capture(lines.clone())),
    );
    let proxy = FaultProxy::start(services().amqp_addr()).await;
    let broker = Broker::connect(
        BrokerConfig::builder()
            .endpoint(services().amqp_url_via("127.0.0.1", proxy.port()))
            .connection_name("rabbitry-tests-logs")
            .connect_timeout(Duration::from_secs(2))
            .reconnect_delay(Duration::from_millis(50))
            .build()
            .expect("config"),
    )
    .await
    .expect("connect through the proxy");

    // Down long enough for several failed reconnect attempts per role.
    proxy.set_down(true);
    tokio::time::sleep(Duration::from_secs(4)).await;
    proxy.set_down(false);
    let back = rabbitry_testkit::eventually(Duration::from_secs(15), || async {
        broker.state(Role::Publish).is_connected() && broker.state(Role::Consume).is_connected()
    })
    .await;
    assert!(back, "the connections did not come back");
    broker.close().await;

    let all = lines.lock().expect("lock").clone();
    assert_eq!(
        count(
            &lines,
            Level::WARN,
            "rabbitry connection lost; reconnecting"
        ),
        2,
        "one loss per role: {all:#?}"
    );
    assert_eq!(
        count(&lines, Level::INFO, "rabbitry connection restored"),
        2,
        "one return per role: {all:#?}"
    );
    // Attempts failed every 0.1 to 2 s for 4 s; one warning per role per
    // 30 s gets through.
    assert_eq!(
        count(
            &lines,
            Level::WARN,
            "rabbitry still reconnecting; check that a broker node is up and reachable from here"
        ),
        2,
        "failed attempts are rate-limited: {all:#?}"
    );
}
