//! What the relay binary's tests share: a migrated database, a broker
//! and a queue; the binary started, stopped and waited for.

#![allow(dead_code)] // each test binary uses part of it

use std::collections::HashSet;
use std::process::{Child, Command, Output, Stdio};

use rabbitry_core::{Broker, BrokerConfig, Message, Queue, Topology};
use rabbitry_postgres::OutboxStore;
use rabbitry_testkit::{BrokerCleanup, TestDatabase, services, unique};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_rabbitry-relay");

pub(crate) struct Env {
    pub(crate) db: TestDatabase,
    pub(crate) store: OutboxStore,
    pub(crate) broker: Broker,
    pub(crate) queue: String,
    _cleanup: BrokerCleanup,
}

pub(crate) async fn env(prefix: &str) -> Env {
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
    let (broker, queue, cleanup) = broker_and_queue(prefix).await;
    Env {
        db,
        store,
        broker,
        queue,
        _cleanup: cleanup,
    }
}

/// A broker, and a fresh queue on it that is deleted with the cleanup.
pub(crate) async fn broker_and_queue(prefix: &str) -> (Broker, String, BrokerCleanup) {
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
    (broker, queue, cleanup)
}

pub(crate) fn relay_cmd(database_url: &str, args: &[&str]) -> Command {
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
pub(crate) struct Running {
    pub(crate) child: Child,
    pub(crate) stderr: std::thread::JoinHandle<Vec<u8>>,
}

pub(crate) fn start(database_url: &str, amqp_url: &str, extra: &[&str]) -> Running {
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
pub(crate) fn terminate(relay: Running) -> Output {
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

pub(crate) async fn enqueue(store: &OutboxStore, queue: &str, n: usize) -> HashSet<String> {
    let mut ids = HashSet::new();
    for i in 0..n {
        let msg = Message::bytes("", queue, format!("m{i}"));
        ids.insert(msg.id().to_owned());
        store.enqueue(&msg).await.expect("enqueue");
    }
    ids
}

pub(crate) async fn pending(store: &OutboxStore) -> i64 {
    store.stats().await.expect("stats").pending
}
