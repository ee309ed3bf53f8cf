//! # rabbitry-testkit
//!
//! Test support shared by rabbitry's integration tests, benches and users:
//!
//! - [`services`]: where RabbitMQ, Redis and Postgres are: `AMQP_URL`,
//!   `REDIS_URL`, `DATABASE_URL`; else the local defaults; else
//!   testcontainers (feature `containers`, needs Docker). If none answers,
//!   the test fails and says how to provide them.
//! - [`unique`]: names no other test uses, and [`BrokerCleanup`], which
//!   deletes a test's queues and exchanges when dropped.
//! - [`TestDatabase`]: a fresh Postgres database per test, dropped after.
//! - [`FaultProxy`]: a TCP proxy that resets, refuses, blackholes or delays
//!   connections (to RabbitMQ, Redis or Postgres).
//! - [`RawClient`]: rabbitry-core's hand-built AMQP client, which
//!   publishes what lapin cannot (header names and ids that are not UTF-8,
//!   no properties at all) and reads queues without parsing them into
//!   strings.
//! - [`rabbitmqctl`]: broker control (close all connections, …).
//! - [`Cluster`]: the local 3-node cluster of `scripts/cluster.sh`
//!   (kill -9 and restart a node, find a queue's leader).
//! - [`eventually`], [`collect`], [`drain`]: wait for and read what
//!   arrived in a queue.
//! - [`TestCerts`], [`TlsNode`], [`TlsStub`]: a throwaway CA and server
//!   certificate, a TLS-only broker node of its own, a bare TLS listener.

mod broker;
mod cluster;
mod database;
mod proxy;
mod raw;
mod services;
mod tls;
mod tls_node;
mod wait;

pub use broker::{BrokerCleanup, rabbitmqctl};
pub use cluster::Cluster;
pub use database::TestDatabase;
pub use proxy::FaultProxy;
pub use raw::{
    RawClient, RawMessage, RawProperties, RawTable, RawValue, lapin_cannot_parse, raw_header,
};
pub use services::{Services, services};
pub use tls::{TestCerts, TlsStub};
pub use tls_node::{TlsNode, TlsNodeError, skip as tls_skip, tls_node_for_test};
pub use wait::{collect, drain, eventually, message_ids, queue_depth};

/// A name no other test run uses: `prefix-` and 10 random hex digits.
pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..10])
}

/// Installs a `tracing` subscriber for tests once (honours `RUST_LOG`).
pub fn init_tracing() {
    use std::sync::Once;
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}
