//! The relay's `/metrics`: Prometheus text from the `metrics` recorder the
//! relay installs, with its counters and the outbox's depth up to date at
//! each scrape. The relay binary against the real broker and Postgres.

mod support;

use std::process::{Child, Stdio};
use std::time::Duration;

use rabbitry_core::Message;
use rabbitry_testkit::{eventually, services};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    let e = support::env("relay-metrics").await;
    let (db, store, queue) = (&e.db, &e.store, e.queue.clone());
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
        support::relay_cmd(
            db.url(),
            &["run", "--metrics-addr", &addr, "--poll-interval-ms", "200"],
        )
        .env("RABBITRY_AMQP_URL", services().amqp_url())
        .env("RUST_LOG", "warn")
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
