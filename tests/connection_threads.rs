//! No lapin thread outlives a failed connect.
//!
//! Its own test binary: it counts the process's lapin threads, which any
//! other test's connections would add to.

mod common;

use std::time::Duration;

use rabbitry::{Broker, BrokerConfig};

/// The threads lapin runs its IO loops on (`lapin-io-loop`).
fn lapin_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .filter(|name| name.trim() == "lapin-io-loop")
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn no_lapin_thread_outlives_a_refused_connect() {
    if !std::path::Path::new("/proc/self/task").exists() {
        eprintln!("SKIPPED: needs /proc to count threads");
        return;
    }
    let port = common::closed_port();
    let config = BrokerConfig::builder()
        .endpoint(format!("amqp://guest:guest@127.0.0.1:{port}/%2f"))
        .endpoint(format!("amqp://guest:guest@127.0.0.1:{port}/other"))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("config");
    let result = tokio::time::timeout(Duration::from_secs(20), Broker::connect(config))
        .await
        .expect("connect must not hang");
    assert!(result.is_err(), "nothing listens there");
    // The IO threads notice their failed attempt at once; give them a moment
    // to exit, but far less than lapin's reconnect backoff.
    let mut left = lapin_threads();
    for _ in 0..20 {
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = lapin_threads();
    }
    assert_eq!(
        left, 0,
        "lapin threads still running after the failed connect"
    );
}
