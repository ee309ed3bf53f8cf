//! Every example runs against the local services, exits 0 within a bound
//! and cleans up after itself, so that the examples cannot rot.
//!
//! The binaries are the ones `cargo test` builds next to the tests (it
//! builds every example); when run alone (`cargo test --test examples`)
//! this builds them first.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const EXAMPLES: &[&str] = &[
    "producer",
    "consumer",
    "transactional_outbox",
    "error_queue",
    "order_timeout",
    "partitioned",
    "demo",
];

/// What each may take on a loaded 2-core machine.
const BOUND: Duration = Duration::from_secs(120);

fn examples_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/examples-<hash> -> target/<profile>/examples
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .join("examples")
}

fn binary(name: &str) -> PathBuf {
    let path = examples_dir().join(name);
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--example", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo build --example");
        assert!(status.success(), "building example {name}");
    }
    path
}

fn run(name: &str) {
    let mut child = Command::new(binary(name))
        .env("RUST_LOG", "off")
        // A short demo: the full one runs until ctrl-c or its own bound.
        .env("RABBITRY_DEMO_SECONDS", "5")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start example");
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let out = child.wait_with_output().expect("output");
            assert!(
                status.success(),
                "example {name} failed ({status}):\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!out.stdout.is_empty(), "example {name} printed what it did");
            return;
        }
        if started.elapsed() > BOUND {
            let _ = child.kill();
            panic!("example {name} did not finish within {BOUND:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn every_example_runs_and_exits_0() {
    for name in EXAMPLES {
        run(name);
    }
}
