//! The relay's `/metrics`: Prometheus text from the `metrics` recorder the
//! relay installs, with its counters and the outbox's depth up to date at
//! each scrape. The relay binary against the real broker and Postgres.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rabbitry_core::{Broker, BrokerConfig, Message, Queue, Topology};
use rabbitry_postgres::OutboxStore;
use rabbitry_testkit::{BrokerCleanup, TestDatabase, eventually, services, unique};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_rabbitry-relay");

/// Kills the relay when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn scrape(port: u16) -> Option<String> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: relay\r\n\r\n")
            .await?;
        let mut body = String::new();
        s.read_to_string(&mut body).await?;
        std::io::Result::Ok(body)
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .ok()?
        .ok()
}

/// The value of the sample line that starts with `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_show_the_rows_relayed_and_the_outbox_drained() {
    rabbitry_testkit::init_tracing();
    let db = TestDatabase::create().await;
    let store = OutboxStore::connect(db.url()).await.expect("store");
    store.migrate().await.expect("migrate");
    let broker = Broker::connect(
        BrokerConfig::builder()
            .endpoint(services().amqp_url())
            .build()
            .expect("config"),
    )
    .await
    .expect("broker");
    let queue = unique("relay-metrics");
    let mut cleanup = BrokerCleanup::new();
    cleanup.queue(&queue);
    broker
        .declare(&Topology::new().queue(Queue::new(&queue)))
        .await
        .expect("declare");
    for i in 0..5 {
        store
            .enqueue(&Message::bytes("", &queue, format!("m{i}")))
            .await
            .expect("enqueue");
    }

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let _relay = Killed(
        Command::new(BIN)
            .args(["run", "--metrics-addr", &addr, "--poll-interval-ms", "200"])
            .env("DATABASE_URL", db.url())
            .env("RABBITRY_AMQP_URL", services().amqp_url())
            .env_remove("AMQP_URL")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rabbitry-relay"),
    );

    let last = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let drained = eventually(Duration::from_secs(30), || {
        let last = last.clone();
        async move {
            let text = scrape(port).await.unwrap_or_default();
            let done = sample(&text, "rabbitry_relay_published_total") == Some(5.0)
                && sample(&text, "rabbitry_outbox_depth{status=\"pending\"}") == Some(0.0);
            *last.lock().expect("lock") = text;
            done
        }
    })
    .await;
    let last = last.lock().expect("lock").clone();
    assert!(drained, "last scrape:\n{last}");
    assert!(last.starts_with("HTTP/1.1 200 OK"), "{last}");
    assert_eq!(sample(&last, "rabbitry_outbox_up"), Some(1.0));
    assert_eq!(sample(&last, "rabbitry_relay_broker_connected"), Some(1.0));
    assert_eq!(sample(&last, "rabbitry_relay_dead_total"), Some(0.0));
    assert!(
        last.contains("# TYPE rabbitry_relay_published_total counter"),
        "{last}"
    );
    assert!(
        last.contains("# HELP rabbitry_outbox_depth Outbox rows by status."),
        "{last}"
    );
}
