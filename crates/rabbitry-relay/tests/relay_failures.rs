//! The relay binary, run as a process: rows that fail for good, ordered
//! mode, operator mistakes, and the error-queue commands.

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use rabbitry_core::{Message, Topology};
use rabbitry_testkit::{
    BrokerCleanup, TestDatabase, collect, eventually, message_ids, services, unique,
};

use support::{BIN, env, pending, relay_cmd, start, terminate};

#[tokio::test]
async fn a_row_that_always_fails_ends_dead_and_replay_brings_it_back() {
    let e = env("relay-dead").await;
    let exchange = unique("relay-missing-ex");
    let mut cleanup = BrokerCleanup::new();
    cleanup.exchange(&exchange);
    let msg = Message::bytes(&exchange, "rk", "doomed");
    e.store.enqueue(&msg).await.expect("enqueue");
    let relay = start(
        e.db.url(),
        services().amqp_url(),
        &[
            "--max-attempts",
            "3",
            "--backoff-base-ms",
            "20",
            "--backoff-max-ms",
            "100",
        ],
    );
    assert!(
        eventually(Duration::from_secs(30), || async {
            e.store.stats().await.map(|s| s.dead == 1).unwrap_or(false)
        })
        .await,
        "row never parked as dead"
    );

    let list = relay_cmd(e.db.url(), &["dead", "list", "--json"])
        .output()
        .expect("dead list");
    assert!(list.status.success());
    let line = String::from_utf8_lossy(&list.stdout);
    let row: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON line");
    assert_eq!(row["exchange"], exchange.as_str());
    assert_eq!(row["attempts"], 3);
    assert!(
        row["last_error"].as_str().unwrap_or("").contains("404"),
        "{row}"
    );

    // Without --yes and without a terminal, replay refuses.
    let refused = relay_cmd(e.db.url(), &["dead", "replay"])
        .output()
        .expect("replay");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--yes"));

    // Fix the cause, then replay.
    e.broker
        .declare(
            &Topology::new()
                .exchange(rabbitry_core::Exchange::direct(&exchange))
                .binding(rabbitry_core::Binding::new(&exchange, &e.queue, "rk")),
        )
        .await
        .expect("declare the missing exchange");
    // The relay's publisher remembers a missing exchange for a second
    // (publisher/exchanges.rs); with this test's 20-100 ms backoff, a replay
    // inside that second would use up its three attempts on the old answer.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let replay = relay_cmd(
        e.db.url(),
        &["dead", "replay", "--yes", "--exchange", &exchange],
    )
    .output()
    .expect("replay");
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let got = collect(&e.queue, 1, Duration::from_secs(30)).await;
    assert!(terminate(relay).status.success());
    assert_eq!(message_ids(&got), vec![msg.id().to_owned()]);
    let stats = e.store.stats().await.expect("stats");
    assert_eq!((stats.pending, stats.dead), (0, 0));
}

#[tokio::test]
async fn ordered_mode_keeps_insertion_order_per_key() {
    let e = env("relay-order").await;
    let keys = ["alice", "bob", "carol", "dave"];
    for i in 0..60 {
        for key in keys {
            let msg = Message::bytes("", &e.queue, format!("{key}:{i}")).partition_key(key);
            e.store.enqueue(&msg).await.expect("enqueue");
        }
    }
    let relay = start(
        e.db.url(),
        services().amqp_url(),
        &["--ordered", "--channels", "4"],
    );
    assert!(
        eventually(Duration::from_secs(60), || async {
            pending(&e.store).await == 0
        })
        .await
    );
    let got = collect(&e.queue, 240, Duration::from_secs(10)).await;
    assert!(terminate(relay).status.success());
    assert_eq!(got.len(), 240);
    let mut last: HashMap<String, i64> = HashMap::new();
    for d in &got {
        let text = String::from_utf8_lossy(&d.data).into_owned();
        let (key, seq) = text.split_once(':').expect("key:seq");
        let seq: i64 = seq.parse().expect("number");
        let prev = last.insert(key.to_owned(), seq).unwrap_or(-1);
        assert_eq!(seq, prev + 1, "key {key} out of order: {seq} after {prev}");
    }
}

#[test]
fn bad_input_gets_a_clear_message_and_a_non_zero_exit() {
    let out = Command::new(BIN)
        .args(["status"])
        .env_remove("DATABASE_URL")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DATABASE_URL is not set"), "{err}");
    assert!(!err.contains("panicked"));

    let out = Command::new(BIN)
        .args(["frobnicate"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unrecognized subcommand"));
}

#[tokio::test]
async fn an_unmigrated_database_names_the_fixing_command() {
    let db = TestDatabase::create().await;
    let out = relay_cmd(db.url(), &["run", "--metrics-addr", "127.0.0.1:0"])
        .env("RABBITRY_AMQP_URL", services().amqp_url())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rabbitry-relay migrate"), "{err}");
    let out = relay_cmd(db.url(), &["status"]).output().expect("status");
    assert!(String::from_utf8_lossy(&out.stderr).contains("rabbitry-relay migrate"));
}

#[tokio::test]
async fn the_errors_commands_list_and_replay_an_error_queue() {
    let e = env("relay-errors").await;
    let dlq = format!("{}.dlq", e.queue);
    let failed = Message::bytes("", &dlq, "order 5")
        .header(rabbitry_core::headers::ORIGINAL_EXCHANGE, "")
        .header(
            rabbitry_core::headers::ORIGINAL_ROUTING_KEY,
            e.queue.as_str(),
        )
        .header(rabbitry_core::headers::EXCEPTION_MESSAGE, "boom")
        .header(rabbitry_core::headers::ATTEMPTS, 3i64);
    rabbitry_core::Publisher::builder(e.broker.clone())
        .build()
        .expect("publisher")
        .send(failed.clone())
        .await
        .expect("publish to the error queue");

    let amqp = services().amqp_url();
    let list = relay_cmd(e.db.url(), &["errors", "list", "--queue", &dlq, "--json"])
        .env("RABBITRY_AMQP_URL", amqp)
        .output()
        .expect("errors list");
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let row: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&list.stdout).trim()).expect("json");
    assert_eq!(row["message_id"], failed.id());
    assert_eq!(row["exception"], "boom");
    assert_eq!(row["original_routing_key"], e.queue.as_str());
    assert_eq!(row["attempts"], 3);

    let replay = relay_cmd(e.db.url(), &["errors", "replay", "--queue", &dlq, "--yes"])
        .env("RABBITRY_AMQP_URL", amqp)
        .output()
        .expect("errors replay");
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let got = collect(&e.queue, 1, Duration::from_secs(10)).await;
    assert_eq!(message_ids(&got), vec![failed.id().to_owned()]);
    assert_eq!(rabbitry_testkit::queue_depth(&dlq).await, Some(0));
}
