//! The relay binary, run as a process against the real broker and Postgres.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use rabbitry_core::{Broker, BrokerConfig, Message, Queue, Topology};
use rabbitry_postgres::OutboxStore;
use rabbitry_testkit::{
    BrokerCleanup, FaultProxy, TestDatabase, collect, eventually, message_ids, services, unique,
};

const BIN: &str = env!("CARGO_BIN_EXE_rabbitry-relay");

struct Env {
    db: TestDatabase,
    store: OutboxStore,
    broker: Broker,
    queue: String,
    _cleanup: BrokerCleanup,
}

async fn env(prefix: &str) -> Env {
    rabbitry_testkit::init_tracing();
    let db = TestDatabase::create().await;
    let status = relay_cmd(db.url(), &["migrate"])
        .output()
        .expect("run migrate");
    assert!(
        status.status.success(),
        "migrate: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let store = OutboxStore::connect(db.url()).await.expect("store");
    let broker = Broker::connect(
        BrokerConfig::builder()
            .endpoint(services().amqp_url())
            .build()
            .expect("config"),
    )
    .await
    .expect("broker");
    let queue = unique(prefix);
    let mut cleanup = BrokerCleanup::new();
    cleanup.queue(&queue);
    broker
        .declare(&Topology::new().queue(Queue::new(&queue)))
        .await
        .expect("declare");
    Env {
        db,
        store,
        broker,
        queue,
        _cleanup: cleanup,
    }
}

fn relay_cmd(database_url: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("DATABASE_URL", database_url)
        .env_remove("AMQP_URL")
        .env_remove("RABBITRY_AMQP_URL")
        .env("RUST_LOG", "info,lapin=error")
        .stdin(Stdio::null());
    cmd
}

/// A running relay whose stderr is read as it is written: a pipe nobody
/// reads fills up (64 KiB) and blocks the relay's logging.
struct Running {
    child: Child,
    stderr: std::thread::JoinHandle<Vec<u8>>,
}

fn start(database_url: &str, amqp_url: &str, extra: &[&str]) -> Running {
    let mut args = vec![
        "run",
        "--metrics-addr",
        "127.0.0.1:0",
        "--poll-interval-ms",
        "200",
        "--publish-timeout-ms",
        "3000",
    ];
    args.extend_from_slice(extra);
    let mut child = relay_cmd(database_url, &args)
        .env("RABBITRY_AMQP_URL", amqp_url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rabbitry-relay");
    let mut pipe = child.stderr.take().expect("stderr");
    let stderr = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut pipe, &mut buf);
        buf
    });
    Running { child, stderr }
}

/// Sends SIGTERM and waits for the exit; returns its output.
fn terminate(relay: Running) -> Output {
    let Running { child, stderr } = relay;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let out = child.wait_with_output().expect("wait");
    Output {
        stderr: stderr.join().expect("stderr reader"),
        ..out
    }
}

async fn enqueue(store: &OutboxStore, queue: &str, n: usize) -> HashSet<String> {
    let mut ids = HashSet::new();
    for i in 0..n {
        let msg = Message::bytes("", queue, format!("m{i}"));
        ids.insert(msg.id().to_owned());
        store.enqueue(&msg).await.expect("enqueue");
    }
    ids
}

async fn pending(store: &OutboxStore) -> i64 {
    store.stats().await.expect("stats").pending
}

#[tokio::test]
async fn rows_enqueued_before_start_are_delivered_exactly_once() {
    let e = env("relay-once").await;
    let sent = enqueue(&e.store, &e.queue, 300).await;
    let relay = start(e.db.url(), services().amqp_url(), &[]);
    let got = collect(&e.queue, 300, Duration::from_secs(30)).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            pending(&e.store).await == 0
        })
        .await
    );
    let out = terminate(relay);
    assert!(
        out.status.success(),
        "exit: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let ids = message_ids(&got);
    assert_eq!(ids.len(), 300, "no duplicates, nothing lost");
    assert_eq!(ids.into_iter().collect::<HashSet<_>>(), sent);
    assert_eq!(pending(&e.store).await, 0, "table ends empty");
    drop(e.broker);
}

#[tokio::test]
async fn two_relays_at_once_deliver_every_row_once() {
    let e = env("relay-two").await;
    let sent = enqueue(&e.store, &e.queue, 2000).await;
    let a = start(e.db.url(), services().amqp_url(), &["--batch-size", "100"]);
    let b = start(e.db.url(), services().amqp_url(), &["--batch-size", "100"]);
    assert!(
        eventually(Duration::from_secs(60), || async {
            pending(&e.store).await == 0
        })
        .await,
        "outbox not drained"
    );
    let got = collect(&e.queue, 2000, Duration::from_secs(10)).await;
    assert!(terminate(a).status.success());
    assert!(terminate(b).status.success());
    let ids = message_ids(&got);
    let unique_ids: HashSet<_> = ids.iter().cloned().collect();
    assert_eq!(
        ids.len(),
        2000,
        "{} duplicates",
        ids.len() - unique_ids.len()
    );
    assert_eq!(unique_ids, sent);
}

#[tokio::test]
async fn sigterm_mid_batch_leaves_nothing_claimed_and_a_restart_delivers_the_rest() {
    let e = env("relay-term").await;
    let sent = enqueue(&e.store, &e.queue, 6000).await;
    let relay = start(
        e.db.url(),
        services().amqp_url(),
        &[
            "--batch-size",
            "200",
            "--channels",
            "1",
            "--concurrency",
            "1",
        ],
    );
    assert!(
        eventually(Duration::from_secs(30), || async {
            rabbitry_testkit::queue_depth(&e.queue).await.unwrap_or(0) > 0
        })
        .await
    );
    let out = terminate(relay);
    assert!(out.status.success(), "graceful exit: {:?}", out.status);
    let left = pending(&e.store).await;
    assert!(left > 0, "stopped mid-way (left {left})");

    // No row is still locked: every remaining row can be locked at once.
    let locked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT id FROM rabbitry_outbox FOR UPDATE SKIP LOCKED) t",
    )
    .fetch_one(e.store.pool())
    .await
    .expect("lock check");
    assert_eq!(locked, left, "rows still claimed after shutdown");

    let relay = start(e.db.url(), services().amqp_url(), &[]);
    assert!(
        eventually(Duration::from_secs(60), || async {
            pending(&e.store).await == 0
        })
        .await
    );
    let got = collect(&e.queue, 6000, Duration::from_secs(10)).await;
    assert!(terminate(relay).status.success());
    let ids = message_ids(&got);
    assert_eq!(
        ids.iter().cloned().collect::<HashSet<_>>(),
        sent,
        "nothing lost"
    );
    assert_eq!(ids.len(), 6000, "nothing published twice");
}

#[tokio::test]
async fn a_broker_outage_keeps_rows_pending_until_recovery() {
    let e = env("relay-outage").await;
    let proxy = FaultProxy::start(services().amqp_addr()).await;
    let proxied = services().amqp_url_via("127.0.0.1", proxy.port());
    proxy.set_down(true);
    let sent = enqueue(&e.store, &e.queue, 100).await;
    let relay = start(
        e.db.url(),
        &proxied,
        &["--backoff-base-ms", "100", "--backoff-max-ms", "1000"],
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        pending(&e.store).await,
        100,
        "nothing leaves while the broker is away"
    );
    assert_eq!(rabbitry_testkit::queue_depth(&e.queue).await, Some(0));

    proxy.set_down(false);
    assert!(
        eventually(Duration::from_secs(60), || async {
            pending(&e.store).await == 0
        })
        .await,
        "outbox not drained after recovery"
    );
    let got = collect(&e.queue, 100, Duration::from_secs(10)).await;
    let out = terminate(relay);
    assert!(out.status.success());
    assert_eq!(message_ids(&got).into_iter().collect::<HashSet<_>>(), sent);
    assert_eq!(got.len(), 100);
}

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
