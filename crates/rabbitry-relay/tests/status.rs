//! `rabbitry-relay status` says why rows are pending, and `pending list`
//! lists them like dead rows.

use std::process::Command;
use std::time::Duration;

use rabbitry_core::{Error, Message, Outbox};
use rabbitry_postgres::OutboxStore;
use rabbitry_testkit::TestDatabase;

const BIN: &str = env!("CARGO_BIN_EXE_rabbitry-relay");

fn relay(db: &TestDatabase, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .env("DATABASE_URL", db.url())
        .env("RUST_LOG", "error")
        .output()
        .expect("run rabbitry-relay");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[tokio::test]
async fn status_groups_pending_rows_by_their_last_failure_and_pending_list_shows_them() {
    let db = TestDatabase::create().await;
    let store = OutboxStore::connect(db.url()).await.expect("connect");
    store.migrate().await.expect("migrate");
    let lost = Error::ConnectionLost {
        operation: "basic.publish",
        reason: "closed".into(),
    };
    let timed_out = Error::TimedOut {
        message_id: "m".into(),
        timeout: Duration::from_secs(5),
    };
    for cause in [&lost, &lost, &timed_out] {
        store
            .defer(&Message::bytes("orders", "order.created", "x"), cause)
            .await
            .expect("defer");
    }
    store
        .enqueue(&Message::bytes("orders", "order.shipped", "y"))
        .await
        .expect("enqueue");

    let status: serde_json::Value =
        serde_json::from_str(&relay(&db, &["status", "--json"])).expect("json");
    assert_eq!(status["pending"], 4);
    let causes = status["pending_causes"].as_array().expect("causes");
    let rows_of = |kind: Option<&str>| {
        causes
            .iter()
            .find(|c| c["kind"].as_str() == kind)
            .map(|c| c["rows"].as_i64().unwrap_or(0))
    };
    assert_eq!(rows_of(Some("connection_lost")), Some(2), "{status}");
    assert_eq!(rows_of(Some("timed_out")), Some(1), "{status}");
    assert_eq!(rows_of(None), Some(1), "not tried yet: {status}");
    let text = relay(&db, &["status"]);
    assert!(text.contains("connection_lost"), "{text}");

    let listed = relay(
        &db,
        &[
            "pending",
            "list",
            "--json",
            "--routing-key",
            "order.created",
        ],
    );
    let rows: Vec<serde_json::Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(rows.len(), 3, "{listed}");
    assert!(
        rows.iter()
            .all(|r| r["failures"] == 1 && r["attempts"] == 0)
    );
    assert!(
        rows.iter().all(|r| r.get("payload").is_none()),
        "no payloads"
    );
}

#[tokio::test]
async fn run_refuses_an_idle_in_transaction_timeout_below_the_publish_timeout() {
    let db = TestDatabase::create().await;
    let out = Command::new(BIN)
        .args([
            "run",
            "--amqp-url",
            "amqp://guest:guest@127.0.0.1:1/%2f",
            "--publish-timeout-ms",
            "10000",
            "--pg-idle-in-transaction-timeout-ms",
            "5000",
        ])
        .env("DATABASE_URL", db.url())
        .output()
        .expect("run rabbitry-relay");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--pg-idle-in-transaction-timeout-ms"), "{err}");
}
